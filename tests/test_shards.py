"""Training input from shards through Grain: per-process rows of global batches, exact resume, manifest checks."""

import collections
import dataclasses
import json

import jax
import numpy as np
import pytest
from test_prepare import write_corpus
from test_stage import assert_params_close, stop_at

from jaxtextgan import errors, prepare, stage
from jaxtextgan import sharding as shd
from jaxtextgan.data import shards
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2
from jaxtextgan.tasks import lm as lm_task

CFG = gpt2.GPT2Config(vocab_size=32, max_len=16, n_layer=1, d_model=16, n_head=2, d_ff=32, dropout=0.0)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("shards")
  corpus = write_corpus(tmp / "corpus", files=2, lines=150)
  prepare.prepare(str(tmp / "out"), "word", 8, train=str(corpus), shard_mb=0.005, log=lambda *_: None)
  return tmp / "out"


def rows(batch):
  return sorted(map(tuple, np.concatenate([batch["inputs"], batch["targets"][:, -1:]], 1)))


def test_processes_read_disjoint_rows_that_make_the_global_batch(out):
  split = shards.open_split(out, "train", "word", 8)
  n = len(split)
  one = split.batch_iterator(8, seed=5)
  two = [split.batch_iterator(8, seed=5, process_index=i, process_count=2) for i in range(2)]
  seen = []
  for _ in range(2 * n // 8):  # two epochs
    a, b = (next(t) for t in two)
    assert a["inputs"].shape == (4, 8) and a["inputs"].dtype == np.int32
    g = next(one)
    np.testing.assert_array_equal(np.concatenate([a["inputs"], b["inputs"]]), g["inputs"])  # rows in place
    assert not set(rows(a)) & set(rows(b)) and sorted(rows(a) + rows(b)) == rows(g)
    seen.extend(rows(a) + rows(b))
  # Each epoch is a permutation of the blocks; the next epoch is shuffled differently.
  epoch = n // 8 * 8
  assert not collections.Counter(seen[:epoch]) - collections.Counter(map(tuple, split.load().blocks))
  assert seen[:epoch] != seen[n:n + epoch]


@pytest.mark.parametrize("workers", [0, 1])
def test_state_restores_the_next_batches(out, workers):
  split = shards.open_split(out)
  it = split.batch_iterator(4, seed=1, workers=workers)
  for _ in range(7):
    next(it)
  saved = json.loads(json.dumps(it.state()))
  want = [next(it)["inputs"] for _ in range(3)]
  it.close()
  for w in {0, workers}:  # the same worker count, or another: the batch index is enough
    again = split.batch_iterator(4, seed=1, workers=w)
    again.restore(saved)
    for x in want:
      np.testing.assert_array_equal(next(again)["inputs"], x)
    again.close()


def test_manifest_mismatch_and_missing_shard_are_one_line(out, tmp_path):
  with pytest.raises(InputError, match="prepared with tokenizer 'word'.*not 'gpt2'"):
    shards.open_split(out, "train", "gpt2", 8)
  with pytest.raises(InputError, match="blocks of 9 tokens.*not seq_len 16"):
    shards.open_split(out, "train", "word", 16)
  with pytest.raises(InputError, match="no valid split"):
    shards.open_split(out, "valid")
  with pytest.raises(InputError, match="has no manifest.json"):
    shards.open_split(tmp_path)
  copy = tmp_path / "copy"
  for p in out.rglob("*"):
    if p.is_file() and not p.name.endswith("00001.array_record"):
      (copy / p.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
      (copy / p.relative_to(out)).write_bytes(p.read_bytes())
  with pytest.raises(InputError, match=r"shard .*train-00001.array_record is missing: run the same"):
    shards.open_split(copy)


def test_lm_stage_from_shards_resumes_exactly(out, tmp_path, monkeypatch):
  """Stopped after step 2 (SIGTERM) and resumed, params equal an uninterrupted run's."""
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = {"lr": 1e-2, "total_steps": 4, "warmup_steps": 0, "schedule": "constant"}
  base = lm_task.lm_stage("shards-lm", None, CFG, opt, shards.open_split(out), batch_size=4, seed=3, rng_seed=4,
                          num_steps=4, meta={"tokenizer": "word"}, log_every=1, tensorboard=False,
                          show_progress=False)
  straight = stage.run_stage(dataclasses.replace(base, directory=tmp_path / "straight"), mesh)
  cut = dataclasses.replace(base, directory=tmp_path / "cut")
  stop_at(monkeypatch, 2)
  with pytest.raises(errors.Preempted):
    stage.run_stage(cut, mesh)
  monkeypatch.undo()
  resumed = stage.run_stage(cut, mesh)
  assert int(resumed.state.step) == 4
  assert_params_close(resumed.state, straight.state, atol=0)
