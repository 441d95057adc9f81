"""--dry_run --topology: each objective's tiny steps compiled by XLA:TPU (libtpu) for v5e:2x2 and v4:2x2x2."""

import importlib
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtextgan import tpu
from jaxtextgan import sharding as shd
from jaxtextgan import stage as stage_lib
from jaxtextgan.config import load_config
from jaxtextgan.errors import InputError
from jaxtextgan.tasks import lm as lm_task
from cli_helpers import REPO, cli, tiny_gan_config

TOPOLOGIES = [("v5e:2x2", (1, 4, 1), "v5e"), ("v4:2x2x2", (2, 2, 2), "v4")]


@pytest.fixture(scope="module", autouse=True)
def libtpu():
  """libtpu in <venv>/libtpu (CI installs it, see .ci/run); absent: skipped here, a failure under CI=true."""
  try:
    return tpu.library_path()
  except InputError as e:
    if os.environ.get("CI") == "true":
      pytest.fail(str(e))
    pytest.skip(str(e))


def lm_config(mesh_shape):
  """A 2-layer LM whose every shard is a whole number of TPU (8, 128) tiles, so XLA:TPU pads nothing big."""
  config = load_config(REPO / "configs" / "lm.py")
  config.model.update(dict(vocab_size=1024, n_layer=2, d_model=512, n_head=4, d_ff=1024, max_len=128))
  config.data.seq_len, config.data.batch_size = 128, 32
  config.mesh_shape = mesh_shape
  return config


def shard_bytes(tree, whole: bool = False) -> int:
  """Bytes of one device's shard of each array (all of it with `whole`), from the shapes and their shardings."""
  total = 0
  for a in jax.tree.leaves(tree):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      continue
    shape = a.shape if whole else a.sharding.shard_shape(a.shape)
    total += math.prod(shape) * a.dtype.itemsize
  return total


@pytest.mark.parametrize("topology,mesh_shape,chip", TOPOLOGIES)
def test_lm_step_arguments_are_its_cpu_shapes_sharded_by_the_rules(topology, mesh_shape, chip, capsys):
  config = lm_config(mesh_shape)
  report = tpu.dry_run(config, topology)["lm"]
  devices = tpu.topology_devices(topology)
  mesh = shd.make_mesh(mesh_shape, devices=devices)
  st = lm_task.dry_run_stages(config, mesh)[0]
  (_, args), = stage_lib.lower(st, mesh)
  state, batch = args[0], args[-2]
  assert report["params"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  assert report["chip"] == chip and report["devices"] == 8 // (2 if chip == "v5e" else 1)
  # Per chip, XLA:TPU holds the state and batch shards the rules give (fsdp 4 or 2 ways), and no more.
  expected = shard_bytes(state) + shard_bytes(batch)
  assert expected <= report["argument_size_in_bytes"] <= 1.02 * expected + 64 * 1024
  assert shard_bytes(state) < 0.6 * shard_bytes(state, whole=True)
  # The donated state comes back in place.
  assert report["alias_size_in_bytes"] >= shard_bytes(state)
  assert report["fits"] and 0 < report["mfu_upper_bound"] <= 1
  assert report["step_seconds_lower_bound"] >= report["model_flops_per_step"] / 8 / tpu.CHIPS[chip].peak_flops
  out = capsys.readouterr().out
  assert f"fits {chip} HBM   yes" in out and "roofline (estimate)" in out


def test_cpu_compiles_the_same_argument_shapes():
  # XLA:CPU compiles in a process of its own, without libtpu: once, in a test worker that had loaded libtpu and run
  # many other tests, this CPU compile crashed (SIGSEGV); the same test alone passes.
  code = ("import json, sys; sys.path.insert(0, 'tests'); from test_tpu import lm_config; "
          "from jaxtextgan import dryrun; "
          "print(json.dumps(dryrun.dry_run(lm_config((1, 4, 1)))['lm']['argument_size_in_bytes']))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  cpu = {"argument_size_in_bytes": json.loads(proc.stdout.strip().splitlines()[-1])}
  config = lm_config((1, 4, 1))
  mesh = shd.make_mesh((1, 4, 1), devices=tpu.topology_devices("v5e:2x2"))
  (_, args), = stage_lib.lower(lm_task.dry_run_stages(config, mesh)[0], mesh)
  assert cpu["argument_size_in_bytes"] == shard_bytes(args) + 8  # + the step's PRNG key (two uint32)


def dfine_config(mesh_shape):
  config = load_config(REPO / "configs" / "dfine_trigram.py")
  config.mesh_shape = mesh_shape
  config.data.update(dict(trigram_vocab=30, sentence_len=8, seq_len=8, batch_size=8))
  config.model.update(dict(n_layer=1, d_model=16, n_head=2, d_ff=32, max_len=8))
  config.finetune.runs = ("initial:disc",)
  return config


def ganbert_config(mesh_shape, tmp_path):
  import json
  from safetensors.numpy import save_file
  bert = dict(model_type="bert", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)
  (tmp_path / "config.json").write_text(json.dumps(bert), encoding="utf-8")
  save_file({"embeddings.word_embeddings.weight": np.zeros((1,), np.float32)}, str(tmp_path / "model.safetensors"))
  config = load_config(REPO / "configs" / "ganbert.py")
  config.mesh_shape = mesh_shape
  config.data.update(dict(source="files", label_names="a,b,c", batch_size=8, max_len=16))
  config.eval.batch_size = 8
  config.model.encoder_dir = str(tmp_path)
  config.train.update(dict(steps=5, fast_compile=True))
  return config


# One Stage of each other objective: the GAN step, GAN-BERT's d_step and g_step, dfine's fine-tuning (with frozen
# q0 and discriminator arguments).
STAGE_OF = {"gan": "gan", "ganbert": "ganbert", "dfine": "stage3_finetune"}


@pytest.mark.parametrize("topology,mesh_shape,chip", TOPOLOGIES)
def test_every_objective_compiles_for_tpu(topology, mesh_shape, chip, tmp_path):
  configs = {"gan": tiny_gan_config(mesh_shape), "ganbert": ganbert_config(mesh_shape, tmp_path),
             "dfine": dfine_config(mesh_shape)}
  mesh = shd.make_mesh(mesh_shape, devices=tpu.topology_devices(topology))
  for objective, config in configs.items():
    task = importlib.import_module(f"jaxtextgan.tasks.{objective}")
    st, = [s for s in task.dry_run_stages(config, mesh) if s.name == STAGE_OF[objective]]
    reports = tpu.compile_stage(st, mesh, tpu.CHIPS[chip])
    lowered = stage_lib.lower(st, mesh)
    assert len(reports) == len(lowered) == len(st.steps), objective
    for (name, report), (_, args) in zip(reports.items(), lowered):
      trained = args[0].params if hasattr(args[0], "params") else [p.params for p in vars(args[0]).values()
                                                                 if hasattr(p, "params")]
      assert report["params"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trained)), (objective, name)
      assert report["chip"] == chip and report["fits"] and report["flops_per_step"] > 0, (objective, name)
      # Arguments: at least the sharded shapes (XLA:TPU pads tiny arrays to whole tiles).
      assert report["argument_size_in_bytes"] >= shard_bytes(args), (objective, name)


def test_largest_batch_doubles_until_a_step_does_not_fit(monkeypatch):
  config = lm_config((1, -1, 1))
  seen = []

  def fake_compile(trial, mesh, chip):
    seen.append(trial.data.batch_size)
    return {"lm": {"fits": trial.data.batch_size <= 16 * mesh.size, "per_device_bytes": 1}}

  monkeypatch.setattr(tpu, "compile_stages", fake_compile)
  known = {4: {"lm": {"fits": True, "per_device_bytes": 1}}}  # the config's own batch, compiled already
  best, tried = tpu.largest_batch(config, tpu.topology_devices("v5e:2x2"), tpu.CHIPS["v5e"], known=known)
  assert best == 16 and {b: r["lm"]["fits"] for b, r in tried.items()} == {1: True, 2: True, 4: True, 8: True,
                                                                          16: True, 32: False}
  assert seen == [8, 16, 32, 64, 128]
  gan = tpu.with_batch(tiny_gan_config((1, 1, 1)), 64)
  assert gan.data.batch_size == 64 and gan.gan.batch_size == 64


def test_bad_topology_and_missing_libtpu_are_one_line_errors(monkeypatch, tmp_path):
  with pytest.raises(InputError, match=r"--topology=v9:2x2 is not a TPU slice libtpu can compile for .*e\.g\. "
                                       r"v5e:2x4") as err:
    tpu.topology_devices("v9:2x2")
  assert "\n" not in str(err.value)
  proc = cli(tmp_path, ["--dry_run", "--max_batch"], check=False)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --max_batch needs --topology")
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  monkeypatch.setattr(tpu.importlib.util, "find_spec", lambda name: None)
  monkeypatch.setattr(tpu, "LIBTPU_DIR", tpu.pathlib.Path("/nonexistent"))
  with pytest.raises(InputError, match=r'needs libtpu .*pip install --target /nonexistent "libtpu==0\.0\.42\.\*"'):
    tpu.library_path()
