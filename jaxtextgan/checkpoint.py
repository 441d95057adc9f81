"""Orbax checkpoints of a training-state pytree plus JSON metadata (data position, config, tokenizer).

A checkpoint that fails to restore is never deleted: it is moved to `<dir>/../corrupt_checkpoints/<step>` with a
warning, and the previous one is used. A readable checkpoint of another model layout is left in place, with an error.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxtextgan.errors import InputError
from jaxtextgan.writers import workdir_path


def _arrays(state) -> dict[str, Any]:
  """The checkpointed part of a TrainState-like object (its pytree fields, without static graphdef/tx)."""
  if hasattr(state, "__dataclass_fields__"):
    return {k: getattr(state, k) for k, f in state.__dataclass_fields__.items()
            if f.metadata.get("pytree_node", True)}
  return state


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the newest `keep` checkpoints."""

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
    self.directory = workdir_path(directory)  # local or gs://, as orbax takes it
    self.keep = keep
    self._async = async_save
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                           enable_async_checkpointing=self._async)
    # Explicit handlers: with item names alone, reading an item's metadata logs two absl warnings per resume.
    return ocp.CheckpointManager(self.directory, options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                "meta": ocp.JsonCheckpointHandler()})

  @property
  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict | None = None, *, force: bool = True) -> bool:
    """Writes `state` (all processes must call) and JSON `meta` at `step`."""
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(_arrays(state)),
                              meta=ocp.args.JsonSave(meta or {}))
    return self._manager.save(step, args=args, force=force)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def restore(self, step: int, target_state):
    """(state, meta) at `step`; `target_state` supplies structure, shapes and shardings (e.g. the initial state).

    Raises InputError, before reading any array, when the checkpoint holds other arrays than the target (another
    model layout, such as `model.scan_layers` flipped): that checkpoint is intact, only this run cannot use it.
    """
    target = jax.tree.map(_abstract, _arrays(target_state))
    self._check_layout(step, target)
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                   meta=ocp.args.JsonRestore()))
    arrays, meta = restored["state"], restored["meta"]
    if hasattr(target_state, "replace"):
      return target_state.replace(**arrays), meta
    return arrays, meta

  def restore_latest(self, target_state):
    """(state, meta, step) from the newest checkpoint that restores, or None when there is none.

    A checkpoint that fails is moved aside (kept for inspection) with a warning, then the previous one is tried.
    """
    for step in reversed(self.steps):
      try:
        state, meta = self.restore(step, target_state)
        return state, meta, step
      except InputError:
        raise  # a readable checkpoint of another layout: never set aside
      except Exception as err:  # any failure to read means this checkpoint is unusable
        kept = self._set_aside(step)
        warnings.warn(f"checkpoint {self.directory / str(step)} could not be restored "
                      f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); it was moved to "
                      f"{kept} and the previous checkpoint is used", stacklevel=2)
    return None

  def _check_layout(self, step: int, target) -> None:
    try:
      saved = self._manager.item_metadata(step)["state"]
    except Exception:  # noqa: BLE001 - unreadable metadata: the restore itself reports (and sets aside) it
      return
    saved_paths, target_paths = _leaf_paths(saved), _leaf_paths(target)
    if not saved_paths or saved_paths == target_paths:
      return
    missing, extra = sorted(target_paths - saved_paths), sorted(saved_paths - target_paths)
    example = f"it lacks {missing[0]}" if missing else f"it has {extra[0]}, which this run does not"
    raise InputError(f"checkpoint {self.directory / str(step)} was saved with another model layout ({example}; "
                     f"{len(missing)} arrays missing, {len(extra)} unknown): resume with the model settings it was "
                     f"saved with (e.g. model.scan_layers), or use a new workdir; the checkpoint is left as it is")

  def _set_aside(self, step: int) -> epath.Path:
    src = self.directory / str(step)
    dest_dir = self.directory.parent / "corrupt_checkpoints"
    dest = dest_dir / str(step)
    n = 1
    while dest.exists():
      dest = dest_dir / f"{step}.{n}"
      n += 1
    if jax.process_index() == 0:
      dest_dir.mkdir(parents=True, exist_ok=True)
      src.rename(dest)
    self._manager.close()
    self._manager = self._open()
    return dest


def _leaf_paths(tree) -> set[str]:
  """'/'-joined key paths of a pytree's leaves (dict keys, attribute names and indices alike, ints as text)."""
  def name(key):
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
  return {"/".join(name(k) for k in path) for path, leaf in leaves if leaf is not None}


def _abstract(x):
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return x


def check_meta(saved: dict, expected: dict, where) -> None:
  """A checkpoint resumes a run only if its meta agrees on every key that run records (model, method, labels...).

  A key the checkpoint lacks, at the top level or inside a dict such as `model`, is accepted (checkpoints of earlier
  versions); a difference is one InputError that names the differing fields and leaves the checkpoint in place.
  """
  saved, expected = json.loads(json.dumps(saved)), json.loads(json.dumps(expected))
  for key, value in expected.items():
    if key not in saved or key == "data" or saved[key] == value:
      continue
    if isinstance(value, dict) and isinstance(saved[key], dict):
      # A field the checkpoint lacks (added to the config since) is accepted here too.
      fields = sorted(k for k in saved[key] if value.get(k) != saved[key][k])
      if not fields:
        continue
      detail = f"its {key} differs in {', '.join(fields)}"
    else:
      detail = f"its {key} is {saved[key]!r}, this run's {value!r}"
    raise InputError(f"workdir {where} holds a checkpoint of another run ({detail}): use a new --workdir or the "
                     "config it was trained with")


def read_meta(directory: str | os.PathLike, step: int | None = None) -> tuple[dict, int]:
  """JSON metadata of a checkpoint directory (local or gs://) without restoring arrays: (meta, step)."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    raise InputError(f"checkpoint directory {directory} does not exist: point to a workdir's 'checkpoints' folder")
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  if not steps:
    raise InputError(f"no checkpoint in {directory}: train that stage first")
  step = steps[-1] if step is None else step
  path = directory / str(step) / "meta" / "metadata"
  if not path.exists():
    raise InputError(f"checkpoint {directory / str(step)} has no metadata: it is not a jaxtextgan checkpoint")
  return json.loads(path.read_text()), step
