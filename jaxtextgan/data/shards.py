"""Token blocks from the ArrayRecord shards of `python -m jaxtextgan.prepare`, read through Grain.

`open_split` checks the manifest against the run (tokenizer, block length, every shard present) and returns a
`ShardSplit`; its `batch_iterator` is the Stage's batches: an endless Grain pipeline over the split's records,

  records -> global shuffle by seed, reshuffled each epoch -> repeat -> this process's rows -> local batches,

where global batch k is records k*B .. (k+1)*B-1 of the shuffled stream and process i of P reads only its rows
i*B/P .. (i+1)*B/P-1 of it (as `BatchIterator` does), in `workers` prefetch processes (0: in this process).
`state()` is Grain's iterator state (JSON) plus the batches taken, so a checkpoint resumes exactly, with any worker
count.
Files are reached through `etils.epath` (`gs://` works for the manifest; the records through ArrayRecord).
"""

from __future__ import annotations

import atexit
import json
import os
from typing import Mapping

import numpy as np
from etils import epath

from jaxtextgan.data import lm as lm_data
from jaxtextgan.errors import InputError

MANIFEST = "manifest.json"
SAMPLE_TOKENS = 1 << 22  # the GAN's real sentences come from this many tokens of train blocks at most (16 MiB)


def read_manifest(directory: str | os.PathLike) -> dict:
  """The manifest of a prepared shards directory, with one-line errors."""
  path = epath.Path(directory) / MANIFEST
  if not path.exists():
    raise InputError(f"shards directory {directory} has no {MANIFEST}: prepare it first "
                     "(python -m jaxtextgan.prepare --out=...)")
  manifest = json.loads(path.read_text())
  if not manifest.get("complete"):
    raise InputError(f"shards in {directory} are not finished: run the same python -m jaxtextgan.prepare "
                     "command again to finish them")
  return manifest


def check_manifest(manifest: dict, directory, tokenizer_spec: str | None = None, seq_len: int | None = None) -> None:
  """The manifest's tokenizer and block length must be the run's (`tokenizer_spec` may be the recipe or the spec)."""
  t = manifest["tokenizer"]
  if tokenizer_spec is not None and tokenizer_spec not in (t["recipe"], t["spec"]):
    raise InputError(f"shards in {directory} were prepared with tokenizer {t['recipe']!r} ({t['spec']}), not "
                     f"{tokenizer_spec!r}: set tokenizer.spec={t['recipe']!r} or prepare the shards again")
  if seq_len is not None and manifest["block_len"] != seq_len + 1:
    raise InputError(f"shards in {directory} hold blocks of {manifest['block_len']} tokens (seq_len "
                     f"{manifest['seq_len']}), not seq_len {seq_len} + 1: set data.seq_len={manifest['seq_len']} "
                     "or prepare the shards again")


class ShardSplit:
  """One split of a shards directory: its shard files, block length and count; `workers` prefetch processes."""

  def __init__(self, directory, split: str, manifest: dict, workers: int = 0):
    self.directory, self.name, self.workers = directory, split, int(workers)
    info = manifest.get("splits", {}).get(split)
    if info is None:
      raise InputError(f"shards in {directory} have no {split} split (they have "
                       f"{sorted(manifest.get('splits', {}))}): prepare it with --{split}")
    self.block_len = int(manifest["block_len"])
    self.seq_len = self.block_len - 1
    shards = [s for s in info["shards"] if s["blocks"] > 0]
    self.paths = [epath.Path(directory) / s["path"] for s in shards]
    for path in self.paths:
      if not path.exists():
        raise InputError(f"shard {path} is missing: run the same python -m jaxtextgan.prepare command again "
                         "to rewrite it")
    self.num_blocks = sum(s["blocks"] for s in shards)
    if self.num_blocks == 0:
      raise InputError(f"{split} split in {directory} has no blocks of {self.block_len} tokens: prepare it "
                       "with a shorter --seq_len or a longer corpus")

  def __len__(self) -> int:
    return self.num_blocks

  def source(self):
    """Grain's random-access source over the records (bytes)."""
    import grain  # pylint: disable=import-outside-toplevel
    return grain.sources.ArrayRecordDataSource([os.fspath(p) for p in self.paths])

  def read(self, rows) -> np.ndarray:
    """Blocks `rows` (indices, in that order) by random access: int32 (len(rows), block_len)."""
    data = b"".join(self.source().__getitems__([int(i) for i in rows]))
    return np.frombuffer(data, "<i4").astype(np.int32).reshape(-1, self.block_len)

  def load(self) -> lm_data.LMBlocks:
    """Every block in memory, in order (for the small valid/test splits)."""
    return lm_data.LMBlocks(self.read(range(len(self))).reshape(-1), self.seq_len, name=self.name)

  def token_counts(self, vocab_size: int, chunk: int = 4096) -> np.ndarray:
    """Occurrences of each id among the targets of every block (all tokens but each block's first), read
    `chunk` blocks at a time: one pass over the split, memory flat."""
    counts = np.zeros(vocab_size, np.int64)
    for a in range(0, len(self), chunk):
      targets = self.read(range(a, min(a + chunk, len(self))))[:, 1:].ravel()
      counts += np.bincount(targets[targets < vocab_size], minlength=vocab_size)
    return counts

  def sentence_starts(self, bos_id: int, length: int, max_tokens: int = SAMPLE_TOKENS) -> np.ndarray:
    """int32 rows [bos, x_1..x_length] of text that starts a sentence inside a block (a start that a block cuts
    is skipped), from a sample of at most `max_tokens` tokens of whole blocks (all of a smaller split): a GAN's
    real sentences, held in memory. The sample is drawn with a fixed seed, so every process and every resume hold
    the same rows."""
    n = min(len(self), max(1, max_tokens // self.block_len))
    blocks = self.read(np.sort(np.random.default_rng(0).choice(len(self), n, replace=False)))
    b, at = np.nonzero(blocks[:, :self.block_len - length] == bos_id)
    if b.size == 0:
      raise InputError(f"the {self.name} shards in {self.directory} have no sentence of {length} tokens after an "
                       "end-of-sentence token inside a block: use a smaller generator.length or a longer seq_len")
    return blocks[b[:, None], at[:, None] + np.arange(length + 1)[None, :]]

  def batch_iterator(self, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                     workers: int | None = None) -> "GrainBatches":
    return GrainBatches(self, batch_size, seed, process_index, process_count,
                        self.workers if workers is None else workers)


def open_split(directory, split: str = "train", tokenizer_spec: str | None = None, seq_len: int | None = None,
               workers: int = 0) -> ShardSplit:
  """The checked `split` of a prepared shards directory."""
  manifest = read_manifest(directory)
  check_manifest(manifest, directory, tokenizer_spec, seq_len)
  return ShardSplit(directory, split, manifest, workers)


def _to_block(record: bytes) -> np.ndarray:
  return np.frombuffer(record, "<i4")


def _split_batch(rows: np.ndarray) -> dict[str, np.ndarray]:
  rows = rows.astype(np.int32, copy=False)
  return dict(inputs=np.ascontiguousarray(rows[:, :-1]), targets=np.ascontiguousarray(rows[:, 1:]))


class GrainBatches:
  """Endless, resumable local batches of one process (see the module docstring); a Stage's `batches()`."""

  def __init__(self, split: ShardSplit, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
               workers: int = 0, read_threads: int = 4):
    self.local = lm_data._check_shard(batch_size, process_index, process_count)  # pylint: disable=protected-access
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
      raise InputError(f"seed {seed} is invalid: use an integer in [0, 2**32)")
    if len(split) < batch_size:
      raise InputError(f"{split.name} split has {len(split)} blocks, fewer than batch_size {batch_size}: "
                       "use a smaller batch_size or seq_len, or a longer corpus")
    self.split, self.batch_size, self.seed = split, int(batch_size), int(seed)
    self.process_index, self.process_count = process_index, process_count
    self.workers, self.read_threads = int(workers), read_threads
    self.taken = 0
    self._it = None
    self._pending = None  # a restored state, applied when the pipeline starts

  def _dataset(self):
    """The local batches as a Grain MapDataset: batch k is global batch k's rows of this process."""
    import grain  # pylint: disable=import-outside-toplevel
    ds = grain.MapDataset.source(self.split.source()).shuffle(seed=self.seed).repeat(None).map(_to_block)
    ds = ds.batch(self.local, drop_remainder=True, batch_fn=np.stack)  # global batch k: local batches kP .. kP+P-1
    return ds[self.process_index::self.process_count].map(_split_batch)

  def _start(self, skip: int = 0):
    import grain  # pylint: disable=import-outside-toplevel
    ds = self._dataset()
    if skip:
      ds = ds[skip:]
    threads = self.read_threads
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
    if self.workers > 0:
      _absl_flags_parsed()
      it = iter(it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=2)))
      atexit.register(it.close)  # stop the workers before the interpreter tears down
      return it
    return iter(it)

  def state(self) -> dict:
    """JSON: Grain's iterator state, the worker count it belongs to, and the batches taken."""
    if self._it is None:
      return self._pending or dict(taken=self.taken, seed=self.seed, workers=self.workers, grain=None, skip=0)
    return dict(taken=self.taken, seed=self.seed, workers=self.workers, grain=self._it.get_state(), skip=self._skip)

  def restore(self, state: Mapping) -> None:
    """Continues from `state()` of an iterator over the same split, batch size and processes."""
    try:
      taken, seed = int(state["taken"]), int(state["seed"])
    except (KeyError, TypeError, ValueError) as e:
      raise InputError(f"shard iterator state {state!r} is malformed: pass the dict from GrainBatches.state()") from e
    if seed != self.seed:
      raise InputError(f"shard iterator state has seed {seed}, not {self.seed}: resume with the same seed")
    self.close()
    self.taken, self._pending = taken, dict(state)

  def __iter__(self) -> "GrainBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      p = self._pending
      if p is not None and p.get("grain") is not None and p.get("workers") == self.workers:
        self._skip = int(p.get("skip", 0))
        self._it = self._start(self._skip)
        self._it.set_state(p["grain"])
      else:  # a fresh start, or a state from another worker count: the batch index is enough
        self._skip = self.taken
        self._it = self._start(self._skip)
      self._pending = None
    batch = next(self._it)
    self.taken += 1
    return batch

  def close(self) -> None:
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


def _absl_flags_parsed() -> None:
  """Grain's worker processes read absl flags; outside an absl app (tests, notebooks) mark them parsed."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
