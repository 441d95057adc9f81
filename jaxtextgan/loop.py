"""The host-side training loop shared by every objective: resume, steps, logging, evaluation, checkpoints, SIGTERM.

The jitted step is `(state, batch, rng) -> (state, metrics)`; the loop only moves batches in, pulls metrics out every
`log_every` steps (so the device is not synchronised each step) and saves the state together with the data
iterator's position, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm import tqdm

from jaxtextgan.checkpoint import Checkpointer
from jaxtextgan.writers import MetricWriter


class PreemptionGuard:
  """Turns SIGTERM into a request to checkpoint at the next step boundary and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def should_stop(self) -> bool:
    """True on every process once any process received SIGTERM."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int
  preempted: bool
  last_metrics: dict


def run(*, state, step_fn: Callable, batches: Iterator[dict], put: Callable[[dict], dict], rng: jax.Array,
        total_steps: int, start: int | None = None, checkpointer: Checkpointer | None, writer: MetricWriter, meta_fn: Callable[[], dict],
        log_every: int = 50, checkpoint_every: int = 0, eval_every: int = 0,
        eval_fn: Callable[[Any, int], dict] | None = None, tokens_per_step: int = 0, desc: str = "train",
        show_progress: bool = True, flops_per_step: float = 0.0, peak_flops: float = 0.0) -> LoopResult:
  """Trains from step `start` (default `state.step`) to `total_steps`. Returns early (after a checkpoint) on
  SIGTERM. Every `log_every` steps it writes the mean metrics, steps/s, tokens/s and, given the FLOPs of one step
  and the devices' peak FLOP/s, the model FLOPs utilisation `mfu`."""
  start = int(jax.device_get(state.step)) if start is None else start
  last_metrics: dict = {}
  preempted = False
  bar = tqdm(total=total_steps, initial=start, desc=desc, dynamic_ncols=True, mininterval=1.0,
             disable=not show_progress or jax.process_index() != 0)
  t_last, step_last = time.perf_counter(), start
  pending = []
  with PreemptionGuard() as guard:
    step = start
    while step < total_steps:
      batch = next(batches)
      state, metrics = step_fn(state, put(batch), rng)
      step += 1
      pending.append(metrics)
      if step % log_every == 0 or step == total_steps:
        host = jax.device_get(pending)
        pending = []
        last_metrics = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
        elapsed = time.perf_counter() - t_last
        rate = (step - step_last) / max(elapsed, 1e-9)
        last_metrics["steps_per_sec"] = rate
        if tokens_per_step:
          last_metrics["tokens_per_sec"] = rate * tokens_per_step
        if flops_per_step and peak_flops > 0:  # model FLOPs utilisation (jaxtextgan.mfu)
          last_metrics["mfu"] = rate * flops_per_step / peak_flops
        writer.write(step, last_metrics, "train")
        t_last, step_last = time.perf_counter(), step
        bar.set_postfix({k: f"{last_metrics[k]:.4g}" for k in ("loss", "d_loss", "g_loss", "tokens_per_sec", "mfu")
                         if k in last_metrics}, refresh=False)
      bar.update(1)
      if eval_fn is not None and eval_every and step % eval_every == 0 and step < total_steps:
        writer.write(step, eval_fn(state, step), "valid")
      if checkpointer is not None and checkpoint_every and step % checkpoint_every == 0:
        checkpointer.save(step, state, meta_fn())
      if guard.should_stop():
        preempted = True
        break
  bar.close()
  if checkpointer is not None and (preempted or step == total_steps):
    checkpointer.save(step, state, meta_fn())
    checkpointer.wait()
  writer.flush()
  return LoopResult(state=state, step=step, preempted=preempted, last_metrics=last_metrics)
