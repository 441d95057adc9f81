"""Word-frequency statistics over token ids and Table 1's per-group perplexities (seed 003, §4.1 and Appendix A).

"Frequent" words are the k most frequent word ids of the training split; Table 1 reports perplexity on all, frequent
and rare positions and the mean ± std of log q − log p over test tokens.
"""

from __future__ import annotations

import numpy as np

from jaxtextgan.errors import InputError


def word_counts(tokens, vocab_size: int) -> np.ndarray:
  """Occurrences of each word id in [0, vocab_size) in `tokens` (any shape; other ids such as S are ignored)."""
  x = np.asarray(tokens).ravel()
  if x.dtype.kind not in "iu":
    raise InputError(f"tokens: expected integer word ids, got dtype {x.dtype}")
  x = x[(x >= 0) & (x < vocab_size)]
  return np.bincount(x.astype(np.int64), minlength=vocab_size)


def word_ranking(tokens, vocab_size: int) -> np.ndarray:
  """Every word id, by descending frequency in `tokens` (ties by id)."""
  counts = word_counts(tokens, vocab_size)
  return np.lexsort((np.arange(vocab_size), -counts))


def frequent_ids(tokens, k: int, vocab_size: int) -> np.ndarray:
  """The k most frequent word ids in `tokens` (§4.1's "frequent words": k = 50 over the train split)."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= vocab_size:
    raise InputError(f"k: expected an integer in [0, {vocab_size}], got {k!r}")
  return word_ranking(tokens, vocab_size)[:k]


def rank_group_shares(tokens, groups, vocab_size: int) -> np.ndarray:
  """Token shares of consecutive frequency-rank groups plus the remainder, e.g. top 50, next 100, the rest.

  Appendix A reports 70.5%, 14.7% and 14.8% for groups (50, 100) on the training corpus.
  """
  counts = np.sort(word_counts(tokens, vocab_size))[::-1]
  edges = np.cumsum([0, *groups])
  if edges[-1] > vocab_size:
    raise InputError(f"groups: {tuple(groups)} hold more than vocab_size={vocab_size} words; shrink them")
  shares = [counts[a:b].sum() for a, b in zip(edges[:-1], edges[1:])] + [counts[edges[-1]:].sum()]
  return np.asarray(shares, np.float64) / max(counts.sum(), 1)


def split_perplexity(log_probs, targets, frequent) -> dict[str, float]:
  """Table 1's columns from per-token log-probs of `targets`: perplexity on all, frequent and rare positions.

  ppl_A = exp(-mean_{t: w_t ∈ A} log q(w_t | c_t)); ratio = rare ppl / frequent ppl.
  """
  lp = np.asarray(log_probs, np.float64)
  y = np.asarray(targets)
  if lp.shape != y.shape:
    raise InputError(f"log_probs: shape {lp.shape} differs from targets' {y.shape}; pass one value per token")
  is_frequent = np.isin(y, np.asarray(frequent))

  def ppl(mask):
    return float(np.exp(-lp[mask].mean())) if mask.any() else float("nan")

  out = {"ppl": ppl(np.ones(lp.shape, bool)), "frequent_ppl": ppl(is_frequent), "rare_ppl": ppl(~is_frequent)}
  out["ratio"] = out["rare_ppl"] / out["frequent_ppl"]
  return out


def log_ratio_stats(log_q, log_p) -> tuple[float, float]:
  """Mean and standard deviation over tokens of log q - log p (Table 1's last column)."""
  lq = np.asarray(log_q, np.float64)
  lp = np.asarray(log_p, np.float64)
  if lq.shape != lp.shape:
    raise InputError(f"log_q: shape {lq.shape} differs from log_p's {lp.shape}; pass one value per token")
  diff = lq - lp
  return float(diff.mean()), float(diff.std())
