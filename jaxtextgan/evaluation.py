"""Evaluation loops, written once: exact sums of a jitted function over fixed-shape batches, and LM perplexity.

Every metric here is a sum over batches (padding rows carry mask 0), reduced on the host in float64, so the result
does not depend on the batch size or the number of processes.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import jax
from jaxtextgan import sharding as shd
from jaxtextgan.data import lm as lm_data
from jaxtextgan.objectives import lm


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


def lm_metrics(graphdef, params, blocks, batch_size: int, mesh, select: Callable | None = None) -> dict[str, float]:
  """Perplexity, NLL and next-token accuracy over every block (objectives.lm.summarize_eval)."""
  totals = {"nll_sum": 0.0, "correct": 0.0, "count": 0.0}
  totals.update(reduce_sums(_lm_sums(graphdef, select), block_batches(blocks, batch_size), mesh, params))
  return lm.summarize_eval(totals)

