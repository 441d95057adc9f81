"""Checkpoint round trip, keep-N, metadata, the corrupt-latest fallback that never deletes, and layout mismatch."""

import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from etils import epath

from jaxtextgan import checkpoint
from jaxtextgan import sharding as shd
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import lm

OPT = ml_collections.ConfigDict(dict(lr=1e-3, total_steps=10, warmup_steps=0, grad_clip_norm=1.0, weight_decay=0.0))


def make_state(seed, mesh_shape=(1, 1, 1), **model):
  cfg = gpt2.preset("tiny", vocab_size=32, **model)
  mesh = shd.make_mesh(mesh_shape, jax.devices()[:int(np.prod(mesh_shape))])
  return lm.init_state(cfg, OPT, jax.random.key(seed), mesh)[0]


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get((state.params, state.opt_state, state.step)))]


@pytest.mark.parametrize("as_path", [pathlib.Path, epath.Path], ids=["pathlib", "epath"])
def test_round_trip_restores_every_array_and_meta(tmp_path, as_path):
  """Also through an epath.Path (what a gs:// workdir is)."""
  tmp_path = as_path(tmp_path)
  state = make_state(0)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=2)
  ckpt.save(7, state, {"data": {"epoch": 2, "index_in_epoch": 5, "seed": 0}})
  ckpt.wait()
  restored, meta, step = ckpt.restore_latest(make_state(1))
  assert step == 7 and meta["data"]["index_in_epoch"] == 5
  for a, b in zip(leaves(state), leaves(restored)):
    np.testing.assert_array_equal(a, b)
  assert checkpoint.read_meta(tmp_path / "ckpt") == (meta, 7)


def test_restore_into_another_mesh_reshards(tmp_path):
  state = make_state(0, (1, 1, 1))
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(1, state)
  ckpt.wait()
  target = make_state(1, (2, 2, 2))
  restored, _, _ = ckpt.restore_latest(target)
  kernel = restored.params["blocks"]["mlp"]["fc"]["kernel"].get_value()
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  np.testing.assert_array_equal(np.asarray(kernel), np.asarray(state.params["blocks"]["mlp"]["fc"]["kernel"].get_value()))


def test_keeps_newest_n(tmp_path):
  state = make_state(0)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, state)
    ckpt.wait()
  assert ckpt.steps == [2, 3]


@pytest.mark.parametrize("as_path", [pathlib.Path, epath.Path], ids=["pathlib", "epath"])
def test_corrupt_latest_falls_back_and_is_kept(tmp_path, as_path):
  states = [make_state(0), make_state(1)]
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=3)
  ckpt.save(1, states[0], {"n": 1})
  ckpt.save(2, states[1], {"n": 2})
  ckpt.wait()
  data_files = [p for p in (tmp_path / "ckpt" / "2" / "state").rglob("*") if p.is_file() and "d" in p.parent.name]
  assert data_files
  for p in data_files:
    p.write_bytes(b"garbage")
  with pytest.warns(UserWarning, match=r"checkpoint .*2 could not be restored.*moved to"):
    restored, meta, step = checkpoint.Checkpointer(as_path(tmp_path) / "ckpt").restore_latest(make_state(2))
  assert step == 1 and meta == {"n": 1}
  for a, b in zip(leaves(states[0]), leaves(restored)):
    np.testing.assert_array_equal(a, b)
  kept = tmp_path / "corrupt_checkpoints" / "2"
  assert kept.is_dir() and any(kept.rglob("*"))


def test_read_meta_errors(tmp_path):
  with pytest.raises(InputError, match="does not exist"):
    checkpoint.read_meta(tmp_path / "none")
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="no checkpoint"):
    checkpoint.read_meta(pathlib.Path(tmp_path / "empty"))


def test_another_layout_is_a_clear_error_and_the_checkpoint_stays(tmp_path):
  """Resuming an unrolled-layer run from a scanned checkpoint must not mistake it for corruption."""
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(4, make_state(0))
  ckpt.wait()
  with pytest.raises(InputError, match=r"another model layout .*blocks/0/.*scan_layers") as err:
    ckpt.restore_latest(make_state(1, scan_layers=False))
  assert "\n" not in str(err.value)
  assert ckpt.steps == [4] and not (tmp_path / "corrupt_checkpoints").exists()
  restored, _, step = ckpt.restore_latest(make_state(1))
  assert step == 4


def test_check_meta_accepts_fields_the_checkpoint_lacks_and_refuses_changed_ones():
  """A config field added since a checkpoint was saved (e.g. model.loss_chunk) does not block resuming it; a
  changed field, at any level, is one InputError naming it."""
  saved = {"model": {"n_layer": 2, "remat": False}, "tokenizer": "word"}
  checkpoint.check_meta(saved, {"model": {"n_layer": 2, "remat": False, "loss_chunk": 128}, "tokenizer": "word",
                                "objective": "lm"}, "w")
  with pytest.raises(InputError, match=r"its model differs in n_layer\): use a new --workdir") as err:
    checkpoint.check_meta(saved, {"model": {"n_layer": 3, "remat": False, "loss_chunk": 0}}, "w")
  assert "\n" not in str(err.value)
  with pytest.raises(InputError, match=r"its tokenizer is 'word', this run's 'bpe'"):
    checkpoint.check_meta(saved, {"tokenizer": "bpe"}, "w")
