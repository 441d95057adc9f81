"""Command line: `python -m jaxtextgan.main --config=configs/lm.py --workdir=DIR [--config.a.b=value ...]`.

`config.objective` picks the task; each task lives in `jaxtextgan.tasks` and is importable from a notebook.
"""

from __future__ import annotations

import importlib
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxtextgan.errors import InputError

TASKS = {
  "lm": "jaxtextgan.tasks.lm",
  "gan": "jaxtextgan.tasks.gan",
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


def _init_distributed() -> None:
  """Joins a multi-process run: explicit flags, or auto-detection on Cloud TPU / SLURM."""
  import jax
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if config is None:
    raise InputError("no --config given: pass e.g. --config=configs/gan.py")
  objective = config.get("objective")
  if objective not in TASKS:
    raise InputError(f"config.objective={objective!r} is unknown: use one of {', '.join(TASKS)}")
  _init_distributed()
  workdir = _WORKDIR.value or f"workdirs/{objective}"
  importlib.import_module(TASKS[objective]).run(config, workdir)


def run() -> None:
  """Entry point: user errors become one `error:` line and exit status 2."""
  try:
    app.run(main)
  except InputError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
