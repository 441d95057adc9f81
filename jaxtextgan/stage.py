"""One runner for every training phase: a `Stage` says what to train, `run_stage` does the rest once for everyone.

A Stage is data: a pure initialiser, the pure steps of one iteration, a factory of resumable batches, intervals,
an evaluation and the metadata a checkpoint must agree with. `run_stage`:

  1. skips a stage whose `done.json` records its steps (the state comes back from its last checkpoint);
  2. derives the state's shardings from `jax.eval_shape(init)` and the logical-axis rules, then resumes state and
     data position from the newest readable checkpoint, refusing one of another model or run (`check_meta`), or
     builds the initial state directly in its sharded layout;
  3. jits each step once (`training.jit_step`), runs `loop.run` (metrics, evaluation, checkpoints, SIGTERM);
  4. raises `errors.Preempted` on SIGTERM after the checkpoint, which `main` turns into one exit message;
  5. evaluates, writes `done.json` and returns the final state.

Experiments order Stages; nothing else in the package builds a Checkpointer for training or calls `loop.run`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator, Sequence

import jax
from etils import epath

from jaxtextgan import checkpoint, loop, mfu, training, writers
from jaxtextgan import sharding as shd
from jaxtextgan.errors import Preempted

DONE = "done.json"


@dataclasses.dataclass
class Stage:
  """What one training phase is. Every callable is pure except `batches`, `evaluate` and `start`.

  init: `rng -> state`, the fresh state (traced by `jax.eval_shape` for the shardings, then jitted).
  steps: the pure steps of one iteration, in order, each `(state, batch, rng) -> (state, metrics)` (or
    `(state, frozen, batch, rng)` when `frozen` is given); their metrics are merged.
  batches: `() -> iterator` of host batches with `state()` / `restore(s)` for an exact resume.
  batch_spec: {key: jax.ShapeDtypeStruct} of one global batch; every array is sharded on its leading axis over
    ('data', 'fsdp'). `dryrun` compiles the steps on these shapes.
  num_steps: iterations to train to, counted by `progress(state)` (default `state.step`).
  start: `state -> state` applied once to the fresh state (e.g. pre-trained parameters); never on resume.
  evaluate: `state -> {split: metrics}` after the last step, written to metrics.jsonl and done.json.
  probe / probe_every: `(state, step) -> metrics`, written as split 'valid' during training.
  meta: JSON recorded in every checkpoint; a checkpoint whose meta disagrees on any of these keys is refused.
  directory: checkpoints/, metrics.jsonl and done.json (a local path or an epath.Path, gs:// included); None
    trains without checkpoints (one-shot runs).
  """
  name: str
  init: Callable[[jax.Array], Any]
  steps: Sequence[Callable]
  batches: Callable[[], Iterator[dict]]
  batch_spec: dict[str, jax.ShapeDtypeStruct]
  num_steps: int
  seed: int
  rng_seed: int
  directory: os.PathLike | None
  meta: dict = dataclasses.field(default_factory=dict)
  start: Callable[[Any], Any] | None = None
  frozen: dict | None = None
  frozen_shardings: dict | None = None
  evaluate: Callable[[Any], dict] | None = None
  probe: Callable[[Any, int], dict] | None = None
  probe_every: int = 0
  probe_at_ends: bool = False
  progress: Callable[[Any], Any] = lambda state: state.step
  log_every: int = 50
  checkpoint_every: int = 0
  keep: int = 3
  tokens_per_step: int = 0
  model_flops_per_step: float = 0.0  # 0: counted from the steps' jaxprs (mfu.step_flops); GPT-2: 6N + 12 L d T
  compute_dtype: str = "float32"  # the matmuls' operand dtype, for the peak that MFU divides by
  compiler_options: dict | None = None
  writer: writers.MetricWriter | None = None
  tensorboard: bool = True
  show_progress: bool = True
  desc: str | None = None


@dataclasses.dataclass
class StageResult:
  state: Any
  done: dict  # {"step", "eval", "wall_seconds", "train"}
  shardings: Any


def shardings_of(init: Callable, mesh) -> tuple[Any, Any]:
  """(abstract state with shardings attached, shardings) of `init`, from `jax.eval_shape` and the rules."""
  return training.abstract_state(init, jax.random.key(0), mesh)


def read_done(directory: str | os.PathLike | None) -> dict | None:
  path = None if directory is None else epath.Path(directory) / DONE
  return json.loads(path.read_text()) if path is not None and path.is_file() else None


def is_done(stage: Stage) -> bool:
  done = read_done(stage.directory)
  return done is not None and done["step"] >= stage.num_steps


def run_stage(stage: Stage, mesh) -> StageResult:
  """Trains (or resumes, or skips) `stage` on `mesh`; raises `Preempted` on SIGTERM after saving."""
  abstract, shardings = shardings_of(stage.init, mesh)
  directory = None if stage.directory is None else epath.Path(stage.directory)
  ckpt = None
  if directory is not None:
    if jax.process_index() == 0:
      directory.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint.Checkpointer(directory / "checkpoints", keep=stage.keep)
  done = read_done(directory)
  if ckpt is not None and done is not None and done["step"] >= stage.num_steps:
    restored = ckpt.restore_latest(abstract)
    ckpt.close()
    if restored is not None and restored[2] == done["step"]:
      checkpoint.check_meta(restored[1], stage.meta, directory)
      print(f"[{stage.name}] finished at step {done['step']}: skipped", flush=True)
      return StageResult(restored[0], done, shardings)
    ckpt = checkpoint.Checkpointer(directory / "checkpoints", keep=stage.keep)

  t0 = time.perf_counter()
  batches = stage.batches()
  restored = ckpt.restore_latest(abstract) if ckpt is not None else None
  if restored is not None:
    state, saved_meta, step = restored
    checkpoint.check_meta(saved_meta, stage.meta, directory)
    if "data" in saved_meta:  # checkpoints of earlier versions of some objectives record no data position
      batches.restore(saved_meta["data"])
    print(f"[{stage.name}] resumed from {directory / 'checkpoints' / str(step)} at step {step}", flush=True)
  else:
    state = jax.jit(stage.init, out_shardings=shardings)(jax.random.key(stage.seed))
    if stage.start is not None:
      state = stage.start(state)

  step_fn = _iteration(jitted_steps(stage, mesh, shardings), stage.frozen)
  flops = stage.model_flops_per_step or sum(mfu.step_flops(fn, *args) for fn, args in _abstract_steps(stage, mesh))
  writer = stage.writer or (writers.MetricWriter(directory, tensorboard=stage.tensorboard) if directory is not None
                            else _NoWriter())
  start = int(jax.device_get(stage.progress(state)))
  if stage.probe is not None and stage.probe_at_ends and start == 0:
    writer.write(0, stage.probe(state, 0), "valid")
  result = loop.run(state=state, step_fn=step_fn, batches=batches, put=lambda b: shd.put_batch(b, mesh),
                    rng=jax.random.key(stage.rng_seed), start=start, total_steps=stage.num_steps,
                    checkpointer=ckpt, writer=writer,
                    meta_fn=lambda: {"data": batches.state(), **stage.meta}, log_every=stage.log_every,
                    checkpoint_every=stage.checkpoint_every, eval_every=stage.probe_every if stage.probe else 0,
                    eval_fn=stage.probe, tokens_per_step=stage.tokens_per_step, desc=stage.desc or stage.name,
                    show_progress=stage.show_progress, flops_per_step=flops,
                    peak_flops=mfu.peak_flops(stage.compute_dtype, list(mesh.devices.flat)))
  if ckpt is not None:
    ckpt.close()
  if result.preempted:
    writer.flush()
    raise Preempted(stage.name, result.step, directory / "checkpoints" if directory else "nowhere")
  state = result.state
  final = stage.evaluate(state) if stage.evaluate is not None else {}
  if stage.probe is not None and stage.probe_at_ends:
    writer.write(result.step, stage.probe(state, result.step), "valid")
  for split, values in final.items():
    writer.write(result.step, values, split)
  if stage.writer is None:
    writer.close()
  done = {"step": result.step, "eval": final, "wall_seconds": time.perf_counter() - t0, "train": result.last_metrics}
  if directory is not None:
    write_json(directory / DONE, done)
  return StageResult(state, done, shardings)


def jitted_steps(stage: Stage, mesh, shardings) -> list[Callable]:
  """Each of the stage's steps, jitted once with explicit shardings (`training.jit_step`)."""
  batch_sh = batch_shardings(stage, mesh)
  return [training.jit_step(fn, mesh, shardings, batch_sh, frozen_shardings=stage.frozen_shardings,
                            compiler_options=stage.compiler_options) for fn in stage.steps]


def batch_shardings(stage: Stage, mesh) -> dict:
  return {k: shd.batch_sharding(mesh, len(v.shape)) for k, v in stage.batch_spec.items()}


def lower(stage: Stage, mesh) -> list[tuple[Any, tuple]]:
  """[(jitted step, abstract arguments)] of `stage` on `mesh`: exactly what `run_stage` would compile, without
  data or arrays (`dryrun` compiles and measures them)."""
  _, shardings = shardings_of(stage.init, mesh)
  return [(jitted, args) for jitted, (_, args) in zip(jitted_steps(stage, mesh, shardings),
                                                      _abstract_steps(stage, mesh))]


def _abstract_steps(stage: Stage, mesh) -> list[tuple[Callable, tuple]]:
  """[(pure step, abstract arguments with shardings)] of `stage`."""
  abstract, _ = shardings_of(stage.init, mesh)
  batch_sh = batch_shardings(stage, mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[k]) for k, v in stage.batch_spec.items()}
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=shd.replicated(mesh))
  frozen = () if stage.frozen_shardings is None else (jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), stage.frozen, stage.frozen_shardings),)
  return [(fn, (abstract, *frozen, batch, key)) for fn in stage.steps]


def int_batch(**shapes) -> dict[str, jax.ShapeDtypeStruct]:
  """A batch spec of int32 arrays: int_batch(inputs=(B, T), targets=(B, T))."""
  return {k: jax.ShapeDtypeStruct(tuple(v), jax.numpy.int32) for k, v in shapes.items()}


def _iteration(jitted: list[Callable], frozen: dict | None) -> Callable:
  """One iteration: the jitted steps in order on the same batch and key, their metrics merged."""
  if len(jitted) == 1 and frozen is None:
    return jitted[0]

  def iteration(state, batch, rng):
    merged = {}
    for fn in jitted:
      state, metrics = fn(state, batch, rng) if frozen is None else fn(state, frozen, batch, rng)
      merged.update(metrics)
    return state, merged

  return iteration


class _NoWriter:
  """Metrics of a stage that has neither a directory nor a writer go nowhere."""

  def write(self, *args, **kwargs) -> None:
    pass

  flush = close = write


def write_json(path: str | os.PathLike, obj) -> None:
  """JSON on process 0 (every process computes the same values); local or gs:// through epath."""
  if jax.process_index() == 0:
    epath.Path(path).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
