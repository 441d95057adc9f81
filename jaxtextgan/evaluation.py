"""Evaluation loops, written once: exact sums of a jitted function over fixed-shape batches, and LM perplexity.

Every metric here is a sum over batches (padding rows and unscored positions carry mask 0), reduced on the host in
float64, so the result does not depend on the batch size or the number of processes.

Perplexity exp(-(1/N) Σ_t log q(x_t | context_t)) is computed by one of two methods (`eval.perplexity`):

  sliding  (text, the default) every token x_1..x_{N-1} of a split's contiguous stream is scored exactly once, by
           windows of W + 1 tokens (W = the data's seq_len, the context the model was trained with) that start every
           `stride` s tokens: the first window scores all its W targets, every later one only its last s, so each
           token has between W - s + 1 and W tokens of left context (fewer only inside the first window). Cost:
           about W / s times the block method's.
  blocks   the split's non-overlapping (W + 1)-token blocks, each scored on its W targets: a block's first token is
           never scored and the mean context is about W / 2. Exact for data made of independent sequences (the
           trigram oracle's sentences, one per block), where the stream has no context across blocks.

The metrics record the method: `window` W and `stride` s (0 for the block method).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
from jaxtextgan import sharding as shd
from jaxtextgan.data import lm as lm_data
from jaxtextgan.errors import InputError
from jaxtextgan.objectives import lm

METHODS = ("sliding", "blocks")


def reduce_sums(fn: Callable[..., dict], batches: Iterable[dict], mesh, *args) -> dict[str, float]:
  """{k: sum over batches of fn(*args, batch)[k]}; `fn` is jitted, batches are host arrays placed on `mesh`."""
  totals: dict[str, float] = {}
  for batch in batches:
    out = jax.device_get(fn(*args, shd.put_batch(batch, mesh)))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return totals


def block_batches(blocks, batch_size: int) -> Iterable[dict]:
  """Every block once, this process's rows of each global batch."""
  return lm_data.eval_batches(blocks, batch_size, process_index=jax.process_index(),
                              process_count=jax.process_count())


@functools.lru_cache(maxsize=32)
def _lm_sums(graphdef, select: Callable | None):
  """jitted (params, batch) -> {nll_sum, correct, count} of the GPT-2 `graphdef` (or of `select(graphdef, params)`,
  which returns (graphdef, params) of a GPT-2 inside another model, e.g. G's LM)."""
  def sums(params, batch):
    g, p = (graphdef, params) if select is None else select(graphdef, params)
    return dict(zip(("nll_sum", "correct", "count"), lm.lm_loss(p, g, batch, None)[1]))
  return jax.jit(sums)


def _lm_eval(graphdef, params, batches: Iterable[dict], mesh, select: Callable | None) -> dict[str, float]:
  totals = {"nll_sum": 0.0, "correct": 0.0, "count": 0.0}
  totals.update(reduce_sums(_lm_sums(graphdef, select), batches, mesh, params))
  return lm.summarize_eval(totals)


def lm_metrics(graphdef, params, blocks, batch_size: int, mesh, select: Callable | None = None) -> dict[str, float]:
  """Perplexity, NLL and next-token accuracy over every block (the block method; objectives.lm.summarize_eval)."""
  blocks = getattr(blocks, "blocks", blocks)
  return {**_lm_eval(graphdef, params, block_batches(blocks, batch_size), mesh, select),
          "window": int(np.shape(blocks)[1]) - 1, "stride": 0}


# --- sliding windows over a contiguous stream ------------------------------------------------------------------


def sliding_windows(tokens_N: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows (n, W+1) int32, mask (n, W) float32): windows over `tokens_N` that score every target x_1..x_{N-1} once.

  Window k holds x_{ks}..x_{ks+W} (right-padded with 0 past the stream's end); its inputs are row[:-1], its
  targets row[1:]. Window 0 scores all its targets; window k > 0 scores targets x_t with
  W + (k-1)s < t <= min(W + ks, N - 1), its last s positions (fewer in the last window). n = 1 + ceil((N-1-W)^+ / s).
  """
  tokens_N = np.asarray(tokens_N, np.int32).reshape(-1)
  w, s, n_tok = int(window), int(stride), tokens_N.size
  if w < 1 or not 1 <= s <= w:
    raise InputError(f"sliding window {w} with stride {s} is invalid: use 1 <= eval.stride <= data.seq_len={w}")
  if n_tok < 2:
    raise InputError(f"a stream of {n_tok} tokens has no target to score: use a longer split")
  n = 1 + -(-max(n_tok - 1 - w, 0) // s)
  starts_n = np.arange(n) * s
  pos_nW1 = starts_n[:, None] + np.arange(w + 1)[None, :]
  rows = np.where(pos_nW1 < n_tok, tokens_N[np.minimum(pos_nW1, n_tok - 1)], 0).astype(np.int32)
  target_nW = pos_nW1[:, 1:]
  first_new_n = np.where(starts_n == 0, 1, w + 1 + (np.arange(n) - 1) * s)  # first target a window scores
  mask = ((target_nW >= first_new_n[:, None]) & (target_nW < n_tok)).astype(np.float32)
  return rows, mask


def window_batches(tokens_N: np.ndarray, window: int, stride: int, batch_size: int) -> Iterator[dict]:
  """`sliding_windows` in fixed-shape global batches of `batch_size` rows (padding rows masked out), this
  process's rows of each (as `block_batches`): {inputs, targets (b, W) int32, mask (b, W) float32}."""
  rows, mask = sliding_windows(tokens_N, window, stride)
  p, count = jax.process_index(), jax.process_count()
  if batch_size < 1 or batch_size % count:
    raise InputError(f"eval batch_size {batch_size} is invalid: use a positive multiple of the {count} processes")
  local = batch_size // count
  for start in range(0, len(rows), batch_size):
    r, m = rows[start:start + batch_size], mask[start:start + batch_size]
    if len(r) < batch_size:
      r = np.concatenate([r, np.zeros((batch_size - len(r), r.shape[1]), np.int32)])
      m = np.concatenate([m, np.zeros((batch_size - len(m), m.shape[1]), np.float32)])
    r, m = r[p * local:(p + 1) * local], m[p * local:(p + 1) * local]
    yield {"inputs": np.ascontiguousarray(r[:, :-1]), "targets": np.ascontiguousarray(r[:, 1:]), "mask": m}


# --- the configured method: eval.perplexity, eval.stride -------------------------------------------------------


def options(eval_cfg) -> tuple[int, str, int]:
  """(batch_size, method, stride) of an `eval` config block (`perplexity` default 'sliding', `stride` default 0 =
  half the window, W // 2), or of a bare batch size (the defaults)."""
  if isinstance(eval_cfg, (int, np.integer)):
    return int(eval_cfg), "sliding", 0
  method = str(eval_cfg.get("perplexity", "sliding"))
  if method not in METHODS:
    raise InputError(f"eval.perplexity={method!r} is unknown: use one of {METHODS}")
  return int(eval_cfg["batch_size"]), method, int(eval_cfg.get("stride", 0) or 0)


def split_data(data, split: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(blocks (n, W+1), contiguous stream or None) of `split` in `data`: a `data.corpus.Corpus` (a stream for text
  sources, none for the trigram oracle's independent sentences), or {split: LMBlocks (has .tokens) or blocks}."""
  if hasattr(data, "streams"):  # a Corpus
    stream = data.streams.get(split) if data.streams is not None and data.trigram is None else None
    return data.blocks[split], stream
  value = data[split]
  return getattr(value, "blocks", value), getattr(value, "tokens", None)


def batches(data, split: str, eval_cfg) -> tuple[Iterable[dict], dict[str, int]]:
  """(this process's evaluation batches of `split`, {window, stride}) by the configured method: sliding windows
  over the stream when there is one, else the blocks (stride 0)."""
  batch_size, method, stride = options(eval_cfg)
  blocks, stream = split_data(data, split)
  window = int(np.shape(blocks)[1]) - 1
  if method == "blocks" or stream is None:
    return block_batches(blocks, batch_size), {"window": window, "stride": 0}
  stride = stride or max(1, window // 2)
  return window_batches(stream, window, stride, batch_size), {"window": window, "stride": stride}


def perplexity(graphdef, params, data, split: str, eval_cfg, mesh, select: Callable | None = None
               ) -> dict[str, Any]:
  """Perplexity, NLL and next-token accuracy of `split` by the method of `eval_cfg` (`batches`), with its
  `window` and `stride` (0: blocks)."""
  split_batches, info = batches(data, split, eval_cfg)
  return {**_lm_eval(graphdef, params, split_batches, mesh, select), **info}


def describe(metrics: dict) -> str:
  """The method of a metrics dict in words, for reports."""
  if "stride" not in metrics:
    return "blocks"
  if not metrics["stride"]:
    return f"non-overlapping blocks of {metrics['window']} targets"
  return f"sliding window {metrics['window']}, stride {metrics['stride']}"
