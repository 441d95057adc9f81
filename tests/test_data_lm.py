"""Tests for jaxtextgan.data.lm."""

import json
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxtextgan import tokenizers as tk
from jaxtextgan.data import lm
from jaxtextgan.errors import InputError

CORPUS = "the cat sat on the mat\nthe dog sat on the log\na bird flew over the house\n"


@pytest.fixture(scope="module")
def word_tok():
  return tk.word_tokenizer(CORPUS)


def numbered_blocks(n, seq_len=3):
  """Blocks whose first token is the block index, to check orders easily."""
  return lm.LMBlocks(np.arange(n * (seq_len + 1)) // (seq_len + 1), seq_len)


def take(it, k):
  return [next(it) for _ in range(k)]


# --- sources ------------------------------------------------------------------


def test_ptb_splits_standard_token_counts():
  splits = lm.ptb_splits()
  assert set(splits) == {"train", "valid", "test"}
  start = time.monotonic()
  tok = tk.word_tokenizer(splits["train"])
  blocks = lm.lm_blocks(splits, tok, seq_len=35)
  elapsed = time.monotonic() - start
  # Mikolov's PTB counts, one <eos> per sentence.
  assert {k: v.tokens.size for k, v in blocks.items()} == {"train": 929589, "valid": 73760, "test": 82430}
  assert len(blocks["train"]) == 929589 // 36
  assert blocks["train"].tokens[-1] == tok.eos_id
  assert elapsed < 15, f"PTB vocabulary + tokenization took {elapsed:.1f} s"


def test_text_file_splits(tmp_path):
  (tmp_path / "train.txt").write_text("\ufeffhello world\n", encoding="utf-8")
  (tmp_path / "valid.txt").write_text("héllo\n", encoding="utf-8")
  splits = lm.text_file_splits(train=tmp_path / "train.txt", valid=tmp_path / "valid.txt")
  assert splits == {"train": "hello world\n", "valid": "héllo\n"}


def test_text_file_errors(tmp_path):
  missing = tmp_path / "missing.txt"
  with pytest.raises(InputError, match=f"text file {missing} does not exist"):
    lm.text_file_splits(train=missing)
  latin = tmp_path / "latin.txt"
  latin.write_bytes(b"ok line\ncaf\xe9\n")
  with pytest.raises(InputError, match=f"{latin} is not UTF-8 \\(invalid byte at offset 11\\): convert it to UTF-8"):
    lm.text_file_splits(train=tmp_path / "latin.txt")
  blank = tmp_path / "blank.txt"
  blank.write_text(" \n\n\t", encoding="utf-8")
  (tmp_path / "ok.txt").write_text("words\n", encoding="utf-8")
  with pytest.raises(InputError, match=f"corpus {blank} is empty"):
    lm.text_file_splits(train=tmp_path / "ok.txt", test=blank)


class TinyLmText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A three-split text dataset written locally, as a user's prepared dataset would be."""

  VERSION = tfds.core.Version("1.0.0")
  DOCS = {"train": ["the cat sat", "on the mat\n", "a bird"], "validation": ["the dog"], "test": ["a house"]}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(docs) for split, docs in self.DOCS.items()}

  def _generate_examples(self, docs):
    for i, doc in enumerate(docs):
      yield i, {"text": doc}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  tfds.disable_progress_bar()
  builder = TinyLmText(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


def test_tfds_splits_prepared_array_record(tfds_dir, word_tok):
  # The builder class is not registered, so this reads the prepared files only.
  splits = lm.tfds_splits("tiny_lm_text", tfds_dir)
  assert set(splits) == {"train", "valid", "test"}
  assert sorted(splits["train"]) == sorted(TinyLmText.DOCS["train"])
  assert splits["valid"] == ["the dog"]
  ids = lm.tokenize(["the cat", "on the mat\n"], word_tok)
  # Each document ends with exactly one eos, even if it ended with a newline.
  assert ids.tolist() == word_tok.encode("the cat\non the mat\n")


def test_tfds_errors(tfds_dir, tmp_path):
  with pytest.raises(InputError, match=f"'tiny_lm_text' is not known and not prepared in {tmp_path}"):
    lm.tfds_splits("tiny_lm_text", tmp_path)
  # A dataset TFDS knows, but not prepared here: must not download.
  with pytest.raises(InputError, match=f"'lm1b' is not prepared in {tmp_path}.*nothing is downloaded"):
    lm.tfds_splits("lm1b", tmp_path)
  with pytest.raises(InputError, match="has no feature 'content'"):
    lm.tfds_splits("tiny_lm_text", tfds_dir, text_key="content")


# --- blocks -------------------------------------------------------------------


def test_lm_blocks_shapes_and_shift():
  blocks = lm.LMBlocks(np.arange(23), seq_len=4)
  assert blocks.blocks.shape == (4, 5)  # 23 // 5 = 4, tail of 3 dropped
  assert blocks.blocks.dtype == np.int32
  np.testing.assert_array_equal(blocks.inputs[1], [5, 6, 7, 8])
  np.testing.assert_array_equal(blocks.targets[1], [6, 7, 8, 9])
  assert len(blocks) == 4


def test_lm_blocks_from_text_word_level(word_tok):
  blocks = lm.LMBlocks.from_text(CORPUS, word_tok, seq_len=6)
  expected = word_tok.encode(CORPUS)
  assert len(expected) == 21  # 18 words + 3 eos
  assert blocks.blocks.shape == (3, 7)
  assert blocks.blocks.reshape(-1).tolist() == expected
  assert (blocks.tokens == word_tok.eos_id).sum() == 3


def test_lm_blocks_too_short(word_tok):
  with pytest.raises(InputError, match="corpus valid has 3 tokens, fewer than one block of seq_len\\+1=9"):
    lm.LMBlocks.from_text("the cat\n", word_tok, seq_len=8, name="valid")
  with pytest.raises(InputError, match="seq_len 0 is invalid"):
    lm.LMBlocks(np.arange(10), seq_len=0)


def test_tokenize_cache(tmp_path, word_tok, monkeypatch):
  first = lm.tokenize(CORPUS, word_tok, cache_dir=tmp_path)
  assert len(list(tmp_path.glob("tokens-*.npy"))) == 1

  def boom(*args, **kwargs):
    raise AssertionError("should have been read from the cache")

  monkeypatch.setattr(word_tok, "encode_corpus", boom)
  np.testing.assert_array_equal(lm.tokenize(CORPUS, word_tok, cache_dir=tmp_path), first)
  monkeypatch.undo()
  # Another tokenizer (another spec) gets its own file.
  other = tk.word_tokenizer(CORPUS + "new words\n")
  lm.tokenize(CORPUS, other, cache_dir=tmp_path)
  assert len(list(tmp_path.glob("tokens-*.npy"))) == 2


# --- batch iterator -----------------------------------------------------------


def test_resume_equals_uninterrupted():
  blocks = numbered_blocks(10)
  plain = lm.BatchIterator(blocks, batch_size=3, seed=7)
  reference = take(plain, 9)  # crosses epochs: 3 batches per epoch
  it = lm.BatchIterator(blocks, batch_size=3, seed=7)
  take(it, 4)
  state = json.loads(json.dumps(it.state()))
  assert state == {"epoch": 1, "index_in_epoch": 1, "seed": 7}
  resumed = lm.BatchIterator(blocks, batch_size=3, seed=0)
  resumed.restore(state)
  for want, got in zip(reference[4:], take(resumed, 5)):
    np.testing.assert_array_equal(want["inputs"], got["inputs"])
    np.testing.assert_array_equal(want["targets"], got["targets"])


def test_epochs_are_permutations_and_seeded():
  blocks = numbered_blocks(12)
  it = lm.BatchIterator(blocks, batch_size=4, seed=1)
  epoch0 = np.concatenate([b["inputs"][:, 0] for b in take(it, 3)])
  epoch1 = np.concatenate([b["inputs"][:, 0] for b in take(it, 3)])
  assert sorted(epoch0) == list(range(12)) and sorted(epoch1) == list(range(12))
  assert epoch0.tolist() != epoch1.tolist()
  same = lm.BatchIterator(blocks, batch_size=4, seed=1)
  assert np.concatenate([b["inputs"][:, 0] for b in take(same, 3)]).tolist() == epoch0.tolist()
  other = lm.BatchIterator(blocks, batch_size=4, seed=2)
  assert np.concatenate([b["inputs"][:, 0] for b in take(other, 3)]).tolist() != epoch0.tolist()
  # The order is a function of (seed, epoch) alone.
  expected = np.random.default_rng([1, 1]).permutation(12)
  assert epoch1.tolist() == expected.tolist()


def test_batch_shapes_targets_and_no_shuffle():
  blocks = lm.LMBlocks(np.arange(40), seq_len=4)  # 8 blocks
  it = lm.BatchIterator(blocks, batch_size=3, seed=0, shuffle=False)
  batch = next(it)
  assert batch["inputs"].shape == (3, 4) and batch["inputs"].dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][1], [5, 6, 7, 8])
  np.testing.assert_array_equal(batch["targets"][1], [6, 7, 8, 9])
  assert it.batches_per_epoch == 2  # 8 // 3, remainder dropped
  next(it)
  assert next(it)["inputs"][0, 0] == 0  # new epoch starts over
  ragged = lm.BatchIterator(blocks, batch_size=3, seed=0, shuffle=False, drop_remainder=False)
  assert [b["inputs"].shape[0] for b in take(ragged, 3)] == [3, 3, 2]


def test_process_shards_partition_global_batch():
  blocks = numbered_blocks(16)
  full = take(lm.BatchIterator(blocks, batch_size=8, seed=3), 3)
  shards = [take(lm.BatchIterator(blocks, batch_size=8, seed=3, process_index=p, process_count=4), 3)
            for p in range(4)]
  for step in range(3):
    assert all(s[step]["inputs"].shape == (2, 3) for s in shards)
    joined = np.concatenate([s[step]["inputs"] for s in shards])
    np.testing.assert_array_equal(joined, full[step]["inputs"])


def test_batch_iterator_errors():
  blocks = numbered_blocks(5)
  with pytest.raises(InputError, match="split has 5 blocks, fewer than batch_size 8"):
    lm.BatchIterator(blocks, batch_size=8, seed=0)
  with pytest.raises(InputError, match="batch_size 4 is not divisible by process_count 3"):
    lm.BatchIterator(blocks, batch_size=4, seed=0, process_count=3)
  with pytest.raises(InputError, match="seed -1 is invalid"):
    lm.BatchIterator(blocks, batch_size=2, seed=-1)
  with pytest.raises(InputError, match="drop_remainder=False with process_count > 1"):
    lm.BatchIterator(blocks, batch_size=2, seed=0, drop_remainder=False, process_count=2)
  it = lm.BatchIterator(blocks, batch_size=2, seed=0)
  with pytest.raises(InputError, match="state .* is malformed"):
    it.restore({"epoch": 0})
  with pytest.raises(InputError, match="does not fit 2 batches per epoch"):
    it.restore({"epoch": 0, "index_in_epoch": 7, "seed": 0})


# --- eval batches -------------------------------------------------------------


def test_eval_batches_cover_every_block_once():
  blocks = numbered_blocks(7)
  batches = list(lm.eval_batches(blocks, batch_size=3, pad_id=-1))
  assert len(batches) == 3
  assert all(b["inputs"].shape == (3, 3) and b["targets"].shape == (3, 3) for b in batches)
  assert [b["mask"].tolist() for b in batches] == [[True] * 3, [True] * 3, [True, False, False]]
  seen = np.concatenate([b["inputs"][b["mask"], 0] for b in batches])
  assert seen.tolist() == list(range(7))
  assert (batches[-1]["targets"][1:] == -1).all()


def test_eval_batches_sharded():
  blocks = numbered_blocks(5)
  full = list(lm.eval_batches(blocks, batch_size=4))
  parts = [list(lm.eval_batches(blocks, batch_size=4, process_index=p, process_count=2)) for p in range(2)]
  for step, batch in enumerate(full):
    for key in ("inputs", "targets", "mask"):
      np.testing.assert_array_equal(np.concatenate([parts[0][step][key], parts[1][step][key]]), batch[key])
  assert parts[1][1]["mask"].tolist() == [False, False]
