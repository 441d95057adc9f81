"""--dry_run compiles the step without training and reports parameters, FLOPs and per-device memory."""

import jax
import pytest

from jaxtextgan.config import load_config
from jaxtextgan.tasks import lm as lm_task
from cli_helpers import REPO


def lm_config(**model):
  config = load_config(REPO / "configs" / "lm.py")
  config.model.update(dict(vocab_size=512, n_layer=2, d_model=32, n_head=2, d_ff=64, max_len=32, **model))
  config.data.seq_len, config.data.batch_size = 16, 8
  return config


def test_dry_run_reports_exact_params_and_analytic_flops(capsys):
  config = lm_config()
  config.mesh_shape = (1, 2, 4)
  report = lm_task.dry_run(config)
  # wte 512*32 + wpe 32*32 + 2 layers * (4*(32*32+32) + 2*2*32 + 32*64+64 + 64*32+32) + final norm 2*32
  per_layer = 4 * (32 * 32 + 32) + 4 * 32 + (32 * 64 + 64) + (64 * 32 + 32)
  assert report["params"] == 512 * 32 + 32 * 32 + 2 * per_layer + 2 * 32
  assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 4}
  assert report["model_flops_per_step"] == pytest.approx(128 * (6 * report["params"] + 12 * 2 * 32 * 16))
  assert report["per_device_bytes"] > 0 and report["flops_per_step"] > 0
  out = capsys.readouterr().out
  assert "parameters" in out and "per-device memory" in out


def test_fsdp_lowers_per_device_argument_memory():
  config = lm_config()
  config.mesh_shape = (1, 1, 1)
  single = lm_task.dry_run(config)
  config.mesh_shape = (1, 8, 1)
  sharded = lm_task.dry_run(config)
  assert sharded["argument_size_in_bytes"] < 0.5 * single["argument_size_in_bytes"]
  assert len(jax.devices()) == 8
