"""Command line: `python -m jaxtextgan.main --config=configs/lm.py --workdir=DIR [--config.a.b=value ...]`.

`config.objective` picks the task; each task lives in `jaxtextgan.tasks` and is importable from a notebook.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxtextgan.config import load_config, resolve
from jaxtextgan.errors import InputError, Preempted, exit_status

TASKS = {
  "lm": "jaxtextgan.tasks.lm",
  "gan": "jaxtextgan.tasks.gan",
  "gan_frontier": "jaxtextgan.tasks.gan_frontier",
  "augment": "jaxtextgan.tasks.augment",
  "table1": "jaxtextgan.tasks.table1",
  "ganbert": "jaxtextgan.tasks.ganbert",
  "dfine": "jaxtextgan.tasks.dfine",
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: workdirs/<objective>).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join a multi-process job found by JAX's auto-detection "
                                "(Cloud TPU pod slices, SLURM, Kubernetes).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Lower and compile the train step; print parameters, FLOPs and "
                             "per-device memory; do not train.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "With --dry_run: compile for this TPU slice with XLA:TPU (libtpu) "
                                "and report per-chip HBM, fit and a roofline estimate, e.g. v5e:4x4 or v4:2x2x4.")
_MAX_BATCH = flags.DEFINE_bool("max_batch", False, "With --dry_run --topology: search the largest per-chip batch "
                               "(a power of two) that fits the chip's HBM.")

_PRNG_IMPL = flags.DEFINE_enum("prng_impl", None, ["threefry2x32", "rbg", "unsafe_rbg"],
                               "Generator of every random key (init, dropout, noise); default JAX's threefry2x32. "
                               "TPUs make rbg/unsafe_rbg bits in hardware: on v5e, threefry's dropout bits need "
                               "about 7 GiB more per chip at 8 sequences of 1,024 (results/tpu.md). Another "
                               "generator draws other random numbers: resume a run with the one it started with.")


def _init_distributed() -> None:
  """Joins a multi-process run: explicit coordinator flags, or `--multihost` for JAX's auto-detection.

  Auto-detection is opt-in: guessing from the environment would make a one-process run inside a multi-task SLURM
  allocation wait for peers that never start.
  """
  import jax
  if _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise InputError("--coordinator_address needs --num_processes and --process_id as well")
    # CPU-only multi-process runs (tests, laptops) need a collectives backend; accelerators ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  elif _MULTIHOST.value:
    jax.distributed.initialize()


def main(argv) -> None:
  # Orbax and JAX log every checkpoint step at INFO; the progress bar and metrics.jsonl already say what matters.
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if config is None:
    raise InputError("no --config given: pass e.g. --config=configs/gan.py")
  objective = config.get("objective")
  if objective not in TASKS:
    raise InputError(f"config.objective={objective!r} is unknown: use one of {', '.join(TASKS)}")
  if _PRNG_IMPL.value:
    import jax
    jax.config.update("jax_default_prng_impl", _PRNG_IMPL.value)
  _init_distributed()
  if (_TOPOLOGY.value or _MAX_BATCH.value) and not _DRY_RUN.value:
    raise InputError("--topology and --max_batch only apply to --dry_run: add --dry_run")
  if _MAX_BATCH.value and not _TOPOLOGY.value:
    raise InputError("--max_batch needs --topology: the TPU slice whose HBM the batch must fit, e.g. v5e:2x4")
  if _DRY_RUN.value and _TOPOLOGY.value:
    from jaxtextgan import tpu
    tpu.dry_run(config, _TOPOLOGY.value, max_batch=_MAX_BATCH.value)
    return
  if _DRY_RUN.value:
    from jaxtextgan import dryrun
    dryrun.dry_run(config)
    return
  task = importlib.import_module(TASKS[objective])
  workdir = _WORKDIR.value or f"workdirs/{objective}"
  try:
    task.run(config, workdir)
  except Preempted as stop:  # the stage saved its checkpoint: exit cleanly, the same command resumes
    print(stop, flush=True)


def check_overrides(argv) -> None:
  """Rejects a missing config file or a mistyped `--config.a.b=value` with one line naming it."""
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_arg is None:
    return
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  path = pathlib.Path(config_arg.split(":", 1)[0])
  if not path.is_file():
    raise InputError(f"config file {path} does not exist: pass e.g. --config=configs/gan.py")
  if overrides:
    config = load_config(config_arg)
    for dotted in overrides:
      try:
        resolve(config, dotted)
      except InputError as err:
        raise InputError(f"{err} (in --config.{dotted})") from None


def run() -> None:
  """Entry point: user errors become one `error:` line and exit status 2."""
  status = exit_status(check_overrides, sys.argv[1:])
  sys.exit(status or exit_status(app.run, main))

if __name__ == "__main__":
  run()
