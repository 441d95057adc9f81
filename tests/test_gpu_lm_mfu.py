"""`benchmarks.gpu_lm_mfu` on CPU: one tiny variant writes a JSON row; a failing variant records its error."""

import json
import math

import jax
import pytest
from flax import nnx

from benchmarks import gpu_lm_mfu
from jaxtextgan.models import gpt2

SEQ = 16


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("mfu")
  assert gpu_lm_mfu.main(["--size=tiny", f"--seq={SEQ}", "--variants=2", "--steps=1", "--out", str(out)]) == 0
  return json.loads((out / "gpu_lm_mfu.json").read_text())


def test_row_has_time_flops_and_loss(report):
  (row,) = report["rows"]
  assert "error" not in row, row
  assert row["batch"] == 2 and row["seq"] == SEQ and row["remat"] is False
  assert row["step_s"] > 0 and row["compile_s"] > 0 and row["tokens_per_s"] > 0
  cfg = gpt2.preset("tiny", vocab_size=50257, max_len=1024)
  n = gpt2.count_params(nnx_params(cfg))
  assert row["params"] == n
  assert row["model_flops_per_step"] == 2 * SEQ * (6 * n + 12 * cfg.n_layer * cfg.d_model * SEQ)
  assert math.isfinite(row["loss"]) and row["loss"] > 0
  assert report["measured_peak"] > 0


def nnx_params(cfg):
  return jax.eval_shape(lambda: nnx.split(gpt2.GPT2(cfg, rngs=nnx.Rngs(0)), nnx.Param)[1])


def test_failing_variant_records_error(tmp_path, monkeypatch):
  """One variant raising (e.g. out of memory) leaves an `error` row; the others still run."""
  def run_variant(size, seq, batch, remat, *rest):
    if remat:
      raise RuntimeError("RESOURCE_EXHAUSTED: out of memory\nlong trace")
    return {"size": size, "seq": seq, "batch": batch, "remat": remat, "step_s": 1.0}

  monkeypatch.setattr(gpu_lm_mfu, "run_variant", run_variant)
  monkeypatch.setattr(gpu_lm_mfu, "matmul_peak", lambda *a: 1e9)
  assert gpu_lm_mfu.main(["--size=tiny", "--seq=8", "--variants=2,4r", "--out", str(tmp_path)]) == 0
  rows = json.loads((tmp_path / "gpu_lm_mfu.json").read_text())["rows"]
  assert rows[0]["step_s"] == 1.0 and "error" not in rows[0]
  assert rows[1] == {"size": "tiny", "batch": 4, "remat": True, "error": "RESOURCE_EXHAUSTED: out of memory"}
