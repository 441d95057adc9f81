"""Tokenizers behind one small interface, backed by Hugging Face `tokenizers`.

Kinds:
  * ``word``: whitespace word level with ``<unk>`` and a newline-as-``<eos>``
    token, as in the standard PTB language-model setup.
  * ``bytelevel-bpe``: GPT-2 style byte-level BPE, from local GPT-2 files or
    trained on a user's corpus.
  * ``hf``: any other `tokenizers` pipeline (a ``tokenizer.json`` or a hub name).

Every tokenizer has a ``spec``: a short string derived from its vocabulary and
merges, to save in a checkpoint and compare on restore to catch mismatches.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import re
import socket
import threading
import urllib.parse
from typing import Iterable, Sequence

import numpy as np
import tokenizers as hf_tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from jaxtextgan.errors import InputError

WORD = "word"
BYTE_BPE = "bytelevel-bpe"
HF = "hf"

UNK = "<unk>"
WORD_EOS = "<eos>"
GPT2_EOS = "<|endoftext|>"
META_FILE = "jaxtextgan_tokenizer.json"
HF_FILE = "tokenizer.json"
_META_FORMAT = 1
# Tokens recognised as end-of-sequence / padding in tokenizers we did not build.
_EOS_CANDIDATES = (GPT2_EOS, "</s>", WORD_EOS, "<|end_of_text|>", "[SEP]")
_PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>")
# Places where the GPT-2 pre-tokenizer regex always has a boundary that does
# not depend on the text after it: after "\n" followed by " X", or between
# "X\n" and "Y" (X, Y non-space). Cutting there leaves the ids unchanged, so
# long texts can be encoded in parallel pieces. ("a \nY" is NOT such a place:
# alone, " \n" would be one pre-token instead of " " and "\n".)
_BYTE_BPE_CUT = re.compile(r"(?<=\n)(?= \S)|(?<=\S\n)(?=\S)")
_PIECE_CHARS = 8000
_HUB_TIMEOUT_S = 3.0


class Tokenizer:
  """A tokenizer with a uniform interface over a `tokenizers.Tokenizer`.

  Attributes:
    hf: the underlying `tokenizers.Tokenizer`.
    kind: ``word``, ``bytelevel-bpe`` or ``hf``.
    name: human-readable origin (corpus, directory or hub name).
    spec: ``kind:vocab_size:hash`` identifying the vocabulary exactly.
    eos_id: end-of-sequence id, or None if the vocabulary has none.
    pad_id: id used to fill padded positions; they are always masked, so it
      falls back to ``eos_id`` (or 0) when there is no dedicated pad token.
  """

  def __init__(self, hf: hf_tokenizers.Tokenizer, kind: str, name: str,
               eos_token: str | None = None, pad_token: str | None = None):
    if kind not in (WORD, BYTE_BPE, HF):
      raise ValueError(f"unknown tokenizer kind {kind!r}")
    self.hf = hf
    self.kind = kind
    self.name = name
    self.eos_token = eos_token
    self.pad_token = pad_token
    self.eos_id = self._id_or_none(eos_token)
    pad_id = self._id_or_none(pad_token)
    self.pad_id = pad_id if pad_id is not None else (self.eos_id if self.eos_id is not None else 0)
    self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
    self.spec = f"{kind}:{self.vocab_size}:{_fingerprint(hf, kind)}"
    if kind == WORD:
      # Python dict lookups beat the Rust pipeline here (no offsets to build):
      # PTB train (~930k words) encodes in ~0.1 s instead of ~2 s.
      vocab = hf.get_vocab(with_added_tokens=True)
      self._stoi = vocab
      self._itos = [""] * len(vocab)
      for word, i in vocab.items():
        self._itos[i] = word
      self._unk_id = vocab[UNK]

  def _id_or_none(self, token: str | None) -> int | None:
    return None if token is None else self.hf.token_to_id(token)

  def __repr__(self) -> str:
    return f"Tokenizer(spec={self.spec!r}, name={self.name!r})"

  def token_to_id(self, token: str) -> int | None:
    return self.hf.token_to_id(token)

  def id_to_token(self, i: int) -> str | None:
    return self.hf.id_to_token(i)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without any added special tokens."""
    if self.kind == WORD:
      get, unk = self._stoi.get, self._unk_id
      return [get(w, unk) for w in text.replace("\n", f" {self.eos_token} ").split()]
    return self.hf.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    if self.kind == WORD:
      return [self.encode(t) for t in texts]
    return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

  def encode_corpus(self, text: str, piece_chars: int = _PIECE_CHARS) -> np.ndarray:
    """Same ids as `encode`, as int32, cut into pieces for speed on big texts."""
    if self.kind == BYTE_BPE and len(text) > 2 * piece_chars:
      pieces = self.encode_batch(_cut_pieces(text, piece_chars))
      return np.concatenate([np.asarray(p, dtype=np.int32) for p in pieces])
    return np.asarray(self.encode(text), dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; for word level, words are space-joined and eos is a newline."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise InputError(f"token id {bad[0]} is outside the vocabulary of tokenizer {self.spec} "
                       f"(size {self.vocab_size}): decode ids made by this tokenizer")
    if self.kind == WORD:
      lines, line = [], []
      for i in ids:
        if i == self.eos_id:
          lines.append(" ".join(line) + "\n")
          line = []
        else:
          line.append(self._itos[i])
      return "".join(lines) + " ".join(line)
    return self.hf.decode(ids, skip_special_tokens=False)

  def save(self, directory: str | os.PathLike) -> pathlib.Path:
    """Writes ``tokenizer.json`` and ``jaxtextgan_tokenizer.json`` to `directory`."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    self.hf.save(str(directory / HF_FILE))
    meta = dict(format=_META_FORMAT, kind=self.kind, name=self.name, spec=self.spec,
                eos_token=self.eos_token, pad_token=self.pad_token)
    (directory / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return directory


def _cut_pieces(text: str, min_chars: int) -> list[str]:
  """`text` cut at safe boundaries into pieces of at least `min_chars` (but the last)."""
  bounds = [0]
  for m in _BYTE_BPE_CUT.finditer(text):
    if m.start() - bounds[-1] >= min_chars:
      bounds.append(m.start())
  bounds.append(len(text))
  return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
  """Restores a tokenizer written by `Tokenizer.save`, checking its spec."""
  directory = pathlib.Path(directory)
  meta_path, hf_path = directory / META_FILE, directory / HF_FILE
  for path in (meta_path, hf_path):
    if not path.is_file():
      raise InputError(f"tokenizer file {path} is missing: pass a directory written by Tokenizer.save")
  try:
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    hf = hf_tokenizers.Tokenizer.from_file(str(hf_path))
    tok = Tokenizer(hf, meta["kind"], meta["name"], eos_token=meta.get("eos_token"),
                    pad_token=meta.get("pad_token"))
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise InputError(f"tokenizer in {directory} is unreadable ({first}): re-save it with Tokenizer.save") from e
  if tok.spec != meta.get("spec"):
    raise InputError(f"tokenizer in {directory} has spec {tok.spec}, not the recorded {meta.get('spec')}: "
                     "its files were changed; re-save it with Tokenizer.save")
  return tok


def _fingerprint(hf: hf_tokenizers.Tokenizer, kind: str) -> str:
  """Hash of what decides the ids: vocab, merges, added tokens (and, for hf, the pipeline).

  Built from parsed content rather than raw JSON so a `tokenizers` upgrade that
  only reformats the file does not look like a different tokenizer.
  """
  cfg = json.loads(hf.to_str())
  model = cfg.get("model") or {}
  vocab = model.get("vocab")
  if isinstance(vocab, dict):
    vocab = sorted(vocab.items(), key=lambda kv: (kv[1], kv[0]))
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
  added = sorted((t["id"], t["content"], bool(t.get("special"))) for t in cfg.get("added_tokens") or [])
  content = dict(kind=kind, model_type=model.get("type"), vocab=vocab, merges=merges, added=added)
  if kind == HF:
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
      content[key] = cfg.get(key)
    content["model"] = {k: v for k, v in model.items() if k not in ("vocab", "merges")}
  blob = json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")
  return hashlib.sha256(blob).hexdigest()[:16]


# --- word level ---------------------------------------------------------------


def word_tokenizer(corpus: str, max_size: int | None = None, name: str = "corpus") -> Tokenizer:
  """Word-level vocabulary of `corpus` (whitespace split; newline = ``<eos>``).

  Words are sorted by frequency, ties by the word itself, so the ids are a
  function of the corpus only. ``<unk>`` and ``<eos>`` are always included.
  `max_size` keeps the most frequent words (the two specials count towards it).
  """
  if not corpus.strip():
    raise InputError(f"corpus {name} is empty: the word vocabulary is built from training text")
  counts = collections.Counter(corpus.replace("\n", f" {WORD_EOS} ").split())
  for special in (UNK, WORD_EOS):
    counts.setdefault(special, 0)
  order = sorted(counts, key=lambda w: (-counts[w], w))
  if max_size is not None:
    if max_size < 3:
      raise InputError(f"word vocabulary size {max_size} is too small: use at least 3 (<unk>, <eos> and a word)")
    rest = [w for w in order if w not in (UNK, WORD_EOS)][:max_size - 2]
    keep = set(rest) | {UNK, WORD_EOS}
    order = [w for w in order if w in keep]
  hf = hf_tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(order)}, unk_token=UNK))
  # Mirrors `Tokenizer.encode`, so tokenizer.json alone gives the same ids.
  hf.normalizer = normalizers.Replace("\n", f" {WORD_EOS} ")
  hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return Tokenizer(hf, WORD, f"word:{name}", eos_token=WORD_EOS)


# --- byte-level BPE -----------------------------------------------------------


def _byte_level_pipeline(hf: hf_tokenizers.Tokenizer) -> None:
  """The GPT-2 pre-tokenizer, decoder and post-processor."""
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  hf.post_processor = processors.ByteLevel(trim_offsets=False)


def _with_eos(hf: hf_tokenizers.Tokenizer, kind: str, name: str) -> Tokenizer:
  eos = next((t for t in _EOS_CANDIDATES if hf.token_to_id(t) is not None), None)
  pad = next((t for t in _PAD_CANDIDATES if hf.token_to_id(t) is not None), None)
  return Tokenizer(hf, kind, name, eos_token=eos, pad_token=pad)


def bpe_from_files(directory: str | os.PathLike) -> Tokenizer:
  """GPT-2 byte-level BPE from ``vocab.json``+``merges.txt`` or ``encoder.json``+``vocab.bpe``."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise InputError(f"tokenizer directory {directory} does not exist: pass a directory with "
                     "vocab.json+merges.txt or encoder.json+vocab.bpe")
  for vocab_name, merges_name in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
    vocab_path, merges_path = directory / vocab_name, directory / merges_name
    if vocab_path.is_file() and merges_path.is_file():
      break
  else:
    raise InputError(f"tokenizer directory {directory} has neither vocab.json+merges.txt nor "
                     "encoder.json+vocab.bpe: put the GPT-2 BPE files there")
  try:
    model = models.BPE.from_file(str(vocab_path), str(merges_path))
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise InputError(f"BPE files {vocab_path} / {merges_path} are unreadable ({first}): "
                     "use the GPT-2 vocab and merges files unmodified") from e
  hf = hf_tokenizers.Tokenizer(model)
  _byte_level_pipeline(hf)
  if hf.token_to_id(GPT2_EOS) is not None:
    # As in GPT-2: a literal <|endoftext|> in text is the separator token.
    hf.add_special_tokens([GPT2_EOS])
  return _with_eos(hf, BYTE_BPE, f"bpe:{directory}")


def train_bpe(vocab_size: int, texts: Iterable[str] = (), files: Sequence[str | os.PathLike] = (),
              min_frequency: int = 2, name: str = "corpus") -> Tokenizer:
  """Trains a GPT-2 style byte-level BPE with ``<|endoftext|>`` as eos.

  Args:
    vocab_size: target size including the 256 byte tokens and the eos token;
      a small corpus may stop short of it.
    texts: training strings.
    files: UTF-8 training files.
    min_frequency: a pair must occur this often to be merged.
    name: label recorded in `Tokenizer.name`.
  """
  if not isinstance(vocab_size, int) or vocab_size < 257:
    raise InputError(f"BPE vocab_size {vocab_size} is too small: byte-level BPE needs at least 257 "
                     "(256 bytes + <|endoftext|>)")
  texts = [texts] if isinstance(texts, str) else list(texts)
  for path in files:
    texts.append(read_utf8(path))
  if not any(t.strip() for t in texts):
    raise InputError(f"corpus {name} is empty: pass training text or files to train a BPE tokenizer")
  hf = hf_tokenizers.Tokenizer(models.BPE())
  _byte_level_pipeline(hf)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                special_tokens=[GPT2_EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  hf.train_from_iterator(texts, trainer=trainer)
  return _with_eos(hf, BYTE_BPE, f"train-bpe:{name}")


def read_utf8(path: str | os.PathLike) -> str:
  """Text of a file read strictly as UTF-8, with one-line errors naming the file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(f"text file {path} does not exist: check the path")
  data = path.read_bytes()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"text file {path} is not UTF-8 (invalid byte at offset {e.start}): convert it to UTF-8, "
                     f"e.g. iconv -f latin1 -t utf-8") from None
  return text.removeprefix("\ufeff")


# --- hub / tokenizer.json -----------------------------------------------------


def _hub_reachable(timeout: float = _HUB_TIMEOUT_S) -> bool:
  """Whether the hub's host answers within `timeout`; DNS can hang, so it runs in a thread."""
  from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
  if constants.HF_HUB_OFFLINE:
    return False
  url = urllib.parse.urlparse(constants.ENDPOINT)
  host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
  result = []

  def probe():
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      result.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout + 0.5)
  return bool(result)


def from_hub(name: str, cache_dir: str | os.PathLike | None = None) -> Tokenizer:
  """A hub tokenizer: from the local HF cache if present, else fetched when online."""
  from huggingface_hub import try_to_load_from_cache  # pylint: disable=import-outside-toplevel
  hint = (f"could not fetch tokenizer {name!r} from the Hugging Face hub{{why}}: pass a local directory "
          "with vocab.json+merges.txt, encoder.json+vocab.bpe or tokenizer.json instead")
  try:
    cached = try_to_load_from_cache(name, HF_FILE, cache_dir=cache_dir)
  except Exception:  # pylint: disable=broad-except  (invalid repo ids raise here)
    cached = None
  if isinstance(cached, str):
    return _with_eos(hf_tokenizers.Tokenizer.from_file(cached), HF, name)
  # `from_pretrained` retries for ~20 s without a network; fail fast instead.
  if not _hub_reachable():
    raise InputError(hint.format(why=" (offline)"))
  try:
    hf = hf_tokenizers.Tokenizer.from_pretrained(name)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise InputError(hint.format(why=f" ({first})")) from e
  return _with_eos(hf, HF, name)


def tokenizer_from_dir(directory: str | os.PathLike) -> Tokenizer:
  """A tokenizer from a directory: saved by us, a ``tokenizer.json``, or GPT-2 BPE files."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise InputError(f"tokenizer directory {directory} does not exist: check the path")
  if (directory / META_FILE).is_file():
    return load_tokenizer(directory)
  if (directory / HF_FILE).is_file():
    try:
      hf = hf_tokenizers.Tokenizer.from_file(str(directory / HF_FILE))
    except Exception as e:  # pylint: disable=broad-except
      first = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise InputError(f"tokenizer file {directory / HF_FILE} is unreadable ({first}): "
                       "use a tokenizer.json saved by the tokenizers library") from e
    return _with_eos(hf, HF, str(directory))
  return bpe_from_files(directory)


def _looks_like_path(spec: str) -> bool:
  """Paths, not hub ids: hub ids are ``name`` or ``org/name``."""
  return spec.startswith(("/", "./", "../", "~", ".")) or spec.count("/") > 1 or "\\" in spec


def build_tokenizer(spec: str, corpus_text: str | Sequence[str] | None = None,
                    vocab_size: int | None = None) -> Tokenizer:
  """Builds a tokenizer from a spec string.

  Specs:
    ``word``: word level on `corpus_text` (`vocab_size` caps the vocabulary).
    ``train-bpe``: byte-level BPE trained on `corpus_text` with `vocab_size`.
    ``bpe:<dir>`` or an existing directory: local tokenizer files.
    anything else that is not a path: a Hugging Face hub name, e.g. ``gpt2``.
  """
  if spec in (WORD, "train-bpe"):
    if corpus_text is None:
      raise InputError(f"tokenizer {spec!r} needs a training corpus: pass corpus_text")
    if spec == WORD:
      text = corpus_text if isinstance(corpus_text, str) else "\n".join(corpus_text)
      return word_tokenizer(text, max_size=vocab_size)
    if vocab_size is None:
      raise InputError("tokenizer 'train-bpe' needs vocab_size: pass e.g. vocab_size=8192")
    return train_bpe(vocab_size, texts=corpus_text)
  if spec.startswith("bpe:"):
    return tokenizer_from_dir(os.path.expanduser(spec[len("bpe:"):]))
  path = pathlib.Path(os.path.expanduser(spec))
  if path.is_dir():
    return tokenizer_from_dir(path)
  if path.exists():
    raise InputError(f"tokenizer path {spec} is not a directory: pass the directory holding the tokenizer files")
  if _looks_like_path(spec):
    raise InputError(f"tokenizer directory {spec} does not exist: pass a directory with tokenizer files, "
                     "'word', 'train-bpe' or a hub name")
  return from_hub(spec)
