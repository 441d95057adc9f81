"""`python -m jaxtextgan.prepare`: exact token blocks in ArrayRecord shards, resume, manifest, one-line errors."""

import json

import numpy as np
import pytest

from test_data_lm import TinyLmText, tfds_dir  # noqa: F401  (the prepared TFDS fixture)

from jaxtextgan import prepare
from jaxtextgan import tokenizers as tok
from jaxtextgan.data import lm as lm_data
from jaxtextgan.data import shards
from jaxtextgan.errors import InputError

WORDS = "the cat sat on a mat and the dog ran in the park".split()


def write_corpus(directory, files=2, lines=400, seed=0):
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for i in range(files):
    text = "\n".join(" ".join(rng.choice(WORDS, 9)) for _ in range(lines)) + "\n"
    (directory / f"part{i}.txt").write_text(text, encoding="utf-8")
  return directory


def records(out, split="train"):
  return shards.open_split(out, split).load().blocks


def test_shards_hold_the_in_memory_blocks_and_manifest_counts(tmp_path):
  corpus = write_corpus(tmp_path / "corpus")
  (tmp_path / "valid.txt").write_text("the cat sat\n" * 50, encoding="utf-8")
  m = prepare.prepare(str(tmp_path / "out"), "word", 8, train=str(corpus), valid=str(tmp_path / "valid.txt"),
                      log=lambda *_: None)
  tokenizer = tok.load_tokenizer(tmp_path / "out" / "tokenizer")
  assert m["complete"] and m["block_len"] == 9 and m["tokenizer"]["spec"] == tokenizer.spec
  assert m["tokenizer"]["files"] == sorted([tok.HF_FILE, tok.META_FILE])
  # One shard per file here: its blocks are the file's tokens cut as in memory (ragged tail dropped).
  expected = [lm_data.LMBlocks.from_text(p.read_text(), tokenizer, 8).blocks for p in sorted(corpus.iterdir())]
  np.testing.assert_array_equal(records(tmp_path / "out"), np.concatenate(expected))
  train = m["splits"]["train"]
  assert train["blocks"] == sum(len(e) for e in expected) == sum(s["blocks"] for s in train["shards"])
  assert train["tokens"] == 2 * 400 * 10 and m["splits"]["valid"]["tokens"] == 200


def test_byte_ranges_of_one_file_lose_no_line_and_resume_redoes_only_missing_shards(tmp_path):
  corpus = write_corpus(tmp_path / "corpus", files=1, lines=2000)
  out = tmp_path / "out"
  m = prepare.prepare(str(out), "word", 8, train=str(corpus), shard_mb=0.01, workers=2, log=lambda *_: None)
  shard_list = m["splits"]["train"]["shards"]
  assert len(shard_list) > 5 and m["splits"]["train"]["tokens"] == 2000 * 10
  # An interrupted run: one shard never finished, the manifest not yet complete.
  lost = out / shard_list[2]["path"]
  lost.unlink()
  (out / (shard_list[2]["path"] + ".done")).unlink()
  kept = out / shard_list[0]["path"]
  mtime = kept.stat().st_mtime_ns
  (out / "manifest.json").write_text(json.dumps({**m, "complete": False, "splits": None}))
  with pytest.raises(InputError, match="not finished"):
    shards.open_split(out)
  lines = []
  again = prepare.prepare(str(out), "word", 8, train=str(corpus), shard_mb=0.01, log=lines.append)
  assert again == m and lost.exists() and kept.stat().st_mtime_ns == mtime
  assert any(f"{len(shard_list) - 1} of {len(shard_list)} shards already prepared" in l for l in lines)


def test_bad_input_is_one_line(tmp_path, capsys):
  good = write_corpus(tmp_path / "corpus", files=1)
  (tmp_path / "empty.txt").write_text("")
  (tmp_path / "blank.txt").write_text("  \n\n")
  (tmp_path / "latin1.txt").write_bytes("the cat\ncaf\xe9\n".encode("latin1"))
  out = str(tmp_path / "out")
  cases = [(str(tmp_path / "nope.txt"), "nope.txt does not exist"), (str(tmp_path / "empty.txt"), "empty.txt is empty"),
           (f"{good / 'part0.txt'},{tmp_path / 'blank.txt'}", "blank.txt is empty"),
           (str(tmp_path / "latin1.txt"), r"latin1.txt is not UTF-8 \(invalid byte at offset 11\)")]
  for i, (path, message) in enumerate(cases):
    with pytest.raises(InputError, match=message):
      prepare.prepare(str(tmp_path / f"bad{i}"), "word", 8, train=path, log=lambda *_: None)
  prepare.prepare(out, "word", 8, train=str(good), log=lambda *_: None)
  with pytest.raises(InputError, match="prepared with tokenizer 'word', not 'gpt2'"):
    prepare.prepare(out, "gpt2", 8, train=str(good))
  with pytest.raises(InputError, match="block length 9 .*not 17"):
    prepare.prepare(out, "word", 16, train=str(good))
  assert prepare.main([f"--out={out}", "--tokenizer=word", "--seq_len=16", f"--train={good}"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and "block length" in err
  assert shards.open_split(out).num_blocks > 0  # nothing already prepared was lost


def test_bucket_code_path_writes_the_same_shards(tmp_path, monkeypatch):
  """The gs:// branches (local temporary files copied through epath), run on local paths."""
  corpus = write_corpus(tmp_path / "corpus", files=1)
  local = prepare.prepare(str(tmp_path / "local"), "word", 8, train=str(corpus), log=lambda *_: None)
  monkeypatch.setattr(prepare, "_is_local", lambda path: False)
  monkeypatch.setattr(prepare, "_TOKENIZERS", {})
  remote = prepare.prepare(str(tmp_path / "remote"), "word", 8, train=str(corpus), log=lambda *_: None)
  assert remote["splits"] == local["splits"] and remote["tokenizer"] == local["tokenizer"]
  np.testing.assert_array_equal(records(tmp_path / "remote"), records(tmp_path / "local"))


def test_tfds_documents_end_with_eos(tfds_dir, tmp_path):  # noqa: F811  (the fixture)
  out = tmp_path / "out"
  m = prepare.prepare(str(out), "word", 2, tfds_name="tiny_lm_text", tfds_data_dir=str(tfds_dir), docs_per_shard=2,
                      log=lambda *_: None)
  tokenizer = tok.load_tokenizer(out / "tokenizer")
  assert set(m["splits"]) == {"train", "valid", "test"} and len(m["splits"]["train"]["shards"]) == 2
  docs = TinyLmText.DOCS["train"]
  assert m["splits"]["train"]["tokens"] == lm_data.tokenize(docs, tokenizer).size
  assert m["splits"]["valid"]["tokens"] == 3 and m["splits"]["valid"]["blocks"] == 1
