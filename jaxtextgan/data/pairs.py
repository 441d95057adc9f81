"""Batches of labeled pairs for contrastive fine-tuning (`objectives.contrastive`): half same-class, half not.

SetFit draws balanced positive and negative pairs ("oversampling"); here batch s holds floor(B/2) positive pairs
(two different rows of one class, the anchor drawn uniformly among rows whose class has at least two) and the rest
negative (an anchor drawn uniformly, its partner uniformly among rows of other classes). Batch s is a pure function
of (seed, s), so resuming needs only s. With no class of two rows every pair is negative; with one class, positive.
"""

from __future__ import annotations

import numpy as np

from jaxtextgan.data.classification import Batches, Encoded
from jaxtextgan.errors import InputError


def pair_indices(labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """((B, 2) row indices, (B,) 1 where both rows share a label) over the rows with labels >= 0."""
  labeled = np.flatnonzero(labels >= 0)
  y = labels[labeled]
  counts = np.bincount(y)
  paired = labeled[counts[y] >= 2]  # rows with a classmate
  many_classes = len(np.unique(y)) > 1
  n_pos = (batch_size // 2 if many_classes else batch_size) if len(paired) else 0
  pairs = np.zeros((batch_size, 2), np.int64)
  for b in range(n_pos):
    a = rng.choice(paired)
    mates = labeled[(labels[labeled] == labels[a]) & (labeled != a)]
    pairs[b] = a, rng.choice(mates)
  for b in range(n_pos, batch_size):
    a = rng.choice(labeled)
    pairs[b] = a, rng.choice(labeled[labels[labeled] != labels[a]])
  return pairs, (labels[pairs[:, 0]] == labels[pairs[:, 1]]).astype(np.int32)


def pair_batch_at(data: Encoded, step: int, batch_size: int, seed: int, pad_multiple: int) -> dict[str, np.ndarray]:
  """Batch `step`: {'input_ids', 'attention_mask'} (B, 2, T) and 'same' (B,), cut as `Encoded.rows` cuts."""
  pairs, same = pair_indices(data.labels, batch_size, np.random.default_rng([seed, 2, step]))
  rows = data.rows(pairs.reshape(-1), pad_multiple)
  width = rows["input_ids"].shape[1]
  return {"input_ids": rows["input_ids"].reshape(batch_size, 2, width),
          "attention_mask": rows["attention_mask"].reshape(batch_size, 2, width), "same": same}


def pair_batches(data: Encoded, batch_size: int, seed: int, pad_multiple: int) -> Batches:
  """Resumable batches of `pair_batch_at(step)` from step 0 (`Batches` with `state()` / `restore(s)`)."""
  if batch_size < 1:
    raise InputError(f"contrastive batch size {batch_size} is invalid: use a positive number of pairs")
  if int((data.labels >= 0).sum()) < 2:
    raise InputError("contrastive fine-tuning needs at least two labeled rows: label more rows or drop the "
                     "contrastive methods")
  return Batches(data, batch_size, seed, pad_multiple, at=pair_batch_at)
