"""Training input from shards through Grain: per-process rows of global batches, exact resume, manifest checks, and
the GAN's and dfine's LM stages on shards."""

import collections
import dataclasses
import json

import cli_helpers
import jax
import numpy as np
import pytest
from test_prepare import write_corpus
from test_stage import assert_params_close, stop_at

from jaxtextgan import errors, prepare, stage, writers
from jaxtextgan import sharding as shd
from jaxtextgan.config import load_config
from jaxtextgan.data import shards
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2
from jaxtextgan.tasks import common
from jaxtextgan.tasks import dfine as dfine_task
from jaxtextgan.tasks import gan as gan_task
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


def test_token_counts_and_sentence_starts_read_the_train_blocks(out):
  """Counts streamed `chunk` blocks at a time equal counting every target in memory; sentence starts are the
  windows of a block that begin at an end-of-sentence token, from at most `max_tokens` tokens of blocks."""
  split, tokenizer = shards.open_split(out), shards.read_manifest(out)["tokenizer"]
  blocks, vocab, eos = split.load().blocks, tokenizer["vocab_size"], tokenizer["eos_id"]
  np.testing.assert_array_equal(split.token_counts(vocab, chunk=7), np.bincount(blocks[:, 1:].ravel(),
                                                                               minlength=vocab))
  want = sorted(tuple(b[i:i + 4]) for b in blocks for i in range(6) if b[i] == eos)
  assert want and sorted(map(tuple, split.sentence_starts(eos, 3))) == want
  sample = split.sentence_starts(eos, 3, max_tokens=5 * 9)  # five blocks, at most one start each
  assert 0 < len(sample) <= 5 and set(map(tuple, sample)) <= set(want)
  with pytest.raises(InputError, match="no sentence of 9 tokens after an end-of-sentence token inside a block"):
    split.sentence_starts(eos, 9)  # longer than a block


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


# --- GAN pre-training and dfine stage 1 from shards --------------------------------------------------------------


@pytest.fixture(scope="module")
def text_shards(tmp_path_factory):
  """tests/cli_helpers.py's tiny corpus (train, valid, test) prepared into word-level blocks of 8 + 1 tokens."""
  tmp = tmp_path_factory.mktemp("text_shards")
  prepare.prepare(str(tmp / "out"), "word", 8, log=lambda *_: None, **cli_helpers.corpus(tmp))
  return tmp / "out"


def shards_config(name, shards_dir):
  """configs/<name>.py on `shards_dir` with a 1-layer GPT-2 (seq_len 8, batch 8), on one device."""
  c = load_config(cli_helpers.REPO / "configs" / f"{name}.py")
  c.mesh_shape = (1, 1, 1)
  c.data.update(dict(source="shards", seq_len=8, batch_size=8))
  c.data.shards_dir = str(shards_dir)  # a new key where the config file has none
  c.tokenizer.spec = "word"
  c.model.update(dict(n_layer=1, d_model=16, n_head=2, d_ff=32, max_len=8))
  return c


def train_losses(directory):
  return [r["loss"] for r in writers.read_metrics(directory / "metrics.jsonl") if r["split"] == "train"]


def first_batch_is_the_shard_readers(st, shards_dir, seed):
  got, want = next(st.batches()), next(shards.open_split(shards_dir).batch_iterator(8, seed))
  return all(np.array_equal(got[k], want[k]) for k in ("inputs", "targets"))


def test_gan_pretrains_g_from_shards(text_shards, tmp_path):
  """G's MLE pre-training reads the train shards (its first batch is the shard reader's, and its loss falls); the
  GAN's real sentences are sentence starts inside train blocks; BLEU's references are the valid shards' sentences."""
  c = shards_config("gan", text_shards)
  c.generator.update(dict(length=5, latent_dim=8))
  c.discriminator.update(dict(kind="cnn", widths=(2, 3), filters=8))
  c.pretrain.update(dict(steps=40, log_every=5, checkpoint_every=0))
  c.pretrain.optimizer.update(dict(lr=1e-2, warmup_steps=0))
  c.gan.update(dict(steps=2, batch_size=8, d_warmup_steps=0, log_every=1, checkpoint_every=0, fast_compile=True))
  c.eval.batch_size = 8
  c.sample.num = 4
  c.frontier.temperatures = ()
  results = gan_task.run(c, tmp_path / "gan")
  loss = train_losses(tmp_path / "gan" / "pretrain")
  assert len(loss) == 8 and loss[-1] < loss[0] - 1.0, loss
  assert results["pretrain_valid"]["tokens"] > 0 and results["after"]["bleu2"] >= 0.0

  data = gan_task.load_data(tmp_path / "gan", c)
  assert isinstance(data.blocks["train"], shards.ShardSplit)
  assert data.tokenizer_spec == shards.read_manifest(text_shards)["tokenizer"]["spec"]
  run = common.Run(writers.workdir_path(tmp_path / "gan"), shd.make_mesh((1, 1, 1), jax.devices()[:1]), None, c)
  st = gan_task.pretrain_stage(run, c, data, common.model_config(c.model, data.vocab_size))
  assert first_batch_is_the_shard_readers(st, text_shards, c.seed)
  assert [s.name for s in gan_task.dry_run_stages(c, run.mesh)] == ["pretrain", "gan"]  # the shards' vocabulary
  train = {tuple(b[i:i + 6]) for b in shards.open_split(text_shards).load().blocks for i in range(4)}
  real = data.sentence_starts("train", 5)
  assert len(real) and (real[:, 0] == data.bos_id).all() and all(tuple(r) in train for r in real)
  valid = shards.open_split(text_shards, "valid").load().tokens  # one reference per sentence it ends
  assert len(data.sentences_of("valid")) == int((valid == data.bos_id).sum()) < len(real)


def test_dfine_trains_every_stage_from_shards(text_shards, tmp_path):
  """Stage 1 (q0) reads the train shards (first batch = the shard reader's; its loss falls), and so do stages 2
  and 3; the discriminator's unigram bias counts the train targets by streaming the shards (bias_init_blocks
  random blocks of them feed q0's sum; 0, every block, is refused)."""
  c = shards_config("dfine", text_shards)
  c.progress = False
  c.lm.update(dict(steps=40, log_every=5, checkpoint_every=0))
  c.lm.optimizer.update(dict(lr=1e-2, warmup_steps=0))
  c.discriminator.update(dict(steps=2, log_every=1, checkpoint_every=0, bias_init_blocks=16))
  c.finetune.update(dict(steps=2, log_every=1, checkpoint_every=0, runs=("initial:disc",)))
  c.eval.batch_size = 16
  c.report.update(dict(markdown="", figure=""))
  out = dfine_task.run(c, tmp_path / "dfine")
  loss = train_losses(tmp_path / "dfine" / dfine_task.STAGE_LM)
  assert len(loss) == 8 and loss[-1] < loss[0] - 1.0, loss
  assert set(out["stages"]) == {"stage1_lm", "stage2_disc", "stage3_finetune"}

  run = common.start(c, tmp_path / "dfine")
  data = dfine_task.load_data(run)
  p = dfine_task.plan(c, run.mesh, data.vocab_size, data, run.workdir)
  assert first_batch_is_the_shard_readers(dfine_task.lm_stage(p), text_shards, c.seed)
  disc = dfine_task.disc_stage(p, "initial", 0, p.abstract["lm"])  # stage 2 reads the shards too
  assert first_batch_is_the_shard_readers(disc, text_shards, c.seed + 100)
  assert dfine_task.vocab_size(c) == data.vocab_size == shards.read_manifest(text_shards)["tokenizer"]["vocab_size"]
  with pytest.raises(InputError, match="bias_init_blocks=0 sums q0 over every train block.*keeps on disk"):
    dfine_task.unigram_estimate(p, None, 0)
