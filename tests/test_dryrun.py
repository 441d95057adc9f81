"""--dry_run compiles the step without training and reports parameters, FLOPs and per-device memory."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxtextgan import dryrun
from jaxtextgan import sharding as shd
from jaxtextgan.config import load_config
from jaxtextgan.errors import InputError
from jaxtextgan.objectives import dfine, ganbert
from jaxtextgan.tasks import dfine as dfine_task
from jaxtextgan.tasks import gan as gan_task
from jaxtextgan.tasks import ganbert as ganbert_task
from cli_helpers import REPO, cli, tiny_gan_config


def lm_config(**model):
  config = load_config(REPO / "configs" / "lm.py")
  config.model.update(dict(vocab_size=512, n_layer=2, d_model=32, n_head=2, d_ff=64, max_len=32, **model))
  config.data.seq_len, config.data.batch_size = 16, 8
  return config


def test_dry_run_reports_exact_params_and_analytic_flops(capsys):
  config = lm_config()
  config.mesh_shape = (1, 2, 4)
  report = dryrun.dry_run(config)["lm"]
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
  single = dryrun.dry_run(config)["lm"]
  config.mesh_shape = (1, 8, 1)
  sharded = dryrun.dry_run(config)["lm"]
  assert sharded["argument_size_in_bytes"] < 0.5 * single["argument_size_in_bytes"]
  assert len(jax.devices()) == 8


def _count(*trees) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trees))


def _sane(report, mesh):
  assert report["devices"] == 8 and report["mesh"] == dict(zip(shd.MESH_AXES, mesh))
  assert report["flops_per_step"] > 0 and report["per_device_bytes"] > 0
  assert report["argument_size_in_bytes"] > 0 and report["temp_size_in_bytes"] > 0


def test_gan_dry_run_compiles_pretraining_and_gan_steps(capsys):
  config = tiny_gan_config((2, 2, 2))
  reports = dryrun.dry_run(config)
  assert list(reports) == ["pretrain", "d_warmup", "gan"]
  # The real initial state of the run with this config: G (its GPT-2 is the pre-trained LM) and D.
  data = gan_task.trigram_data(config)
  init = gan_task.setup(config, data, gan_task.lm_config(config, data)).init
  state = jax.eval_shape(init, jax.random.key(0))
  assert reports["gan"]["params"] == _count(state.g.params, state.d.params)
  assert reports["d_warmup"]["params"] == reports["gan"]["params"]
  assert reports["pretrain"]["params"] == _count(state.g.params["lm"])
  assert reports["gan"]["batch"] == {"real": (8, 2, 6)} and reports["d_warmup"]["batch"] == {"real": (8, 1, 6)}
  # The GAN step runs n_critic D steps and a G step; the warm-up one D step.
  assert reports["gan"]["flops_per_step"] > 1.5 * reports["d_warmup"]["flops_per_step"]
  for report in reports.values():
    _sane(report, (2, 2, 2))
  out = capsys.readouterr().out
  assert "[gan gan]" in out and "gan pretrain: " in out


def _tiny_bert_dir(tmp_path):
  """A BERT directory with config.json and a safetensors file whose header names no pooler (no real weights)."""
  cfg = dict(model_type="bert", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)
  (tmp_path / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
  save_file({"embeddings.word_embeddings.weight": np.zeros((1,), np.float32)}, str(tmp_path / "model.safetensors"))
  return tmp_path


def test_ganbert_dry_run_compiles_both_methods_from_the_encoder_config(tmp_path):
  config = load_config(REPO / "configs" / "ganbert.py")
  config.mesh_shape = (1, 2, 4)
  config.mode = "experiment"
  # The three Stage kinds (the other methods reuse them): contrastive-lr's contrastive Stage comes first.
  config.experiment.methods = ("ganbert", "baseline", "contrastive-lr")
  config.data.update(dict(source="files", label_names="a,b,c", batch_size=8, max_len=16))
  config.eval.batch_size = 8
  config.model.encoder_dir = str(_tiny_bert_dir(tmp_path))
  config.train.update(dict(steps=5, fast_compile=True))
  reports = dryrun.dry_run(config)
  # The experiment's Stages (one per method), GAN-BERT's steps reported one by one.
  names = [st.name for st in ganbert_task.dry_run_stages(config, shd.make_mesh((1, 2, 4)))]
  assert names == ["contrastive", "ganbert", "baseline"]
  assert list(reports) == ["contrastive", "ganbert d_step", "ganbert g_step", "baseline"]
  assert reports["contrastive"]["batch"] == {"input_ids": (16, 2, 16), "attention_mask": (16, 2, 16), "same": (16,)}
  bert_cfg = ganbert_task.encoder_config(config.model, 16)
  assert not bert_cfg.pooler and bert_cfg.hidden_size == 32  # from config.json and the safetensors header
  cfg = ganbert_task.model_config(config.model, 3, "ganbert")
  opt = ganbert_task.optimizer_config(config.optimizer, 5)
  state = jax.eval_shape(ganbert.make_state_fn(bert_cfg, cfg, opt, opt), jax.random.key(0))
  assert reports["ganbert d_step"]["params"] == _count(state.d.params, state.g.params)
  assert reports["ganbert g_step"]["params"] == reports["ganbert d_step"]["params"]
  # The baseline: no G, and k outputs instead of k+1.
  hidden = cfg.d_hidden or 32
  assert reports["baseline"]["params"] == _count(state.d.params) - (hidden + 1)
  # The contrastive Stage trains the encoder alone: D's head is the rest of the baseline's parameters.
  assert reports["contrastive"]["params"] == _count(state.d.params["encoder"])
  assert reports["ganbert d_step"]["batch"] == {"input_ids": (8, 16), "attention_mask": (8, 16), "labels": (8,)}
  for report in reports.values():
    _sane(report, (1, 2, 4))
  assert reports["ganbert d_step"]["flops_per_step"] > 10 * reports["ganbert g_step"]["flops_per_step"]


def test_dfine_dry_run_compiles_every_stage_program():
  config = load_config(REPO / "configs" / "dfine_trigram.py")
  config.mesh_shape = (2, 2, 2)
  config.data.update(dict(trigram_vocab=30, sentence_len=8, seq_len=8, batch_size=8))
  config.model.update(dict(n_layer=1, d_model=16, n_head=2, d_ff=32, max_len=8))
  config.finetune.runs = ("initial:disc", "perturbed:disc")
  reports = dryrun.dry_run(config)
  assert list(reports) == ["stage1_lm", "stage2_disc", "stage2_disc_perturbed", "stage3_finetune",
                           "stage3_finetune_perturbed"]
  lm_cfg, _, _ = dfine_task.model_configs(config, 31)
  state = jax.eval_shape(dfine.make_state_fn(lm_cfg, dfine_task.opt_cfg(config.lm)), jax.random.key(0))
  n = _count(state.params)
  assert [r["params"] for r in reports.values()] == [n] * 5
  # Frozen arguments: none for q0's training, q0 for a discriminator, q0 and the discriminator for fine-tuning.
  assert [r.get("frozen_params", 0) for r in reports.values()] == [0, n, n, 2 * n, 2 * n]
  for report in reports.values():
    _sane(report, (2, 2, 2))
    assert report["tokens_per_step"] == 64


def test_dry_run_of_another_objective_is_a_one_line_error(tmp_path):
  config = load_config(REPO / "configs" / "augment.py")
  with pytest.raises(InputError, match=r"--dry_run is not available for objective 'augment': use one of lm, gan, "
                                       r"ganbert, dfine") as err:
    dryrun.dry_run(config)
  assert "\n" not in str(err.value)
  proc = cli(tmp_path / "run", ["--dry_run"], config="configs/augment.py", check=False)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --dry_run is not available")


def test_prng_impl_flag_sets_the_generator_of_every_key(tmp_path):
  """`--prng_impl=unsafe_rbg` (TPU's hardware bits) reaches the compiled step: the report names it; by default it is
  JAX's threefry2x32."""
  assert dryrun.dry_run(lm_config())["lm"]["prng_impl"] == "threefry2x32"
  small = ["--config.model.n_layer=1", "--config.model.d_model=32", "--config.model.n_head=2",
           "--config.model.d_ff=64", "--config.model.vocab_size=512", "--config.data.seq_len=16"]
  proc = cli(tmp_path / "run", ["--dry_run", "--prng_impl=unsafe_rbg", *small])
  assert "random keys        unsafe_rbg (--prng_impl)" in proc.stdout
