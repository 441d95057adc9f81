"""Config files (ml_collections) outside the command line: load one and apply dotted overrides, as in a notebook.

    config = load_config("configs/lm.py", {"train.steps": 20, "model.n_layer": 2})
"""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
from typing import Any, Mapping

import ml_collections

from jaxtextgan.errors import InputError


def load_config(spec: str | pathlib.Path, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """`spec` is `path.py` or `path.py:arg` (passed to get_config); overrides are {'a.b': value}."""
  path_str, *arg = str(spec).split(":", 1)
  path = pathlib.Path(path_str)
  if not path.is_file():
    raise InputError(f"config file {path} does not exist: pass e.g. configs/gan.py")
  module_spec = importlib.util.spec_from_file_location(f"_jaxtextgan_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(*arg)
  for dotted, value in (overrides or {}).items():
    parent, key = resolve(config, dotted)
    parent[key] = value
  return config


def gpt2_model_config(**overrides) -> ml_collections.ConfigDict:
  """Every GPT2Config field (its default, or `overrides`), so each can be set as --config.model.<field>=value."""
  import dataclasses
  from jaxtextgan.models.gpt2 import GPT2Config
  fields = {f.name: f.default for f in dataclasses.fields(GPT2Config)}
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def optimizer_config(lr, warmup=0, schedule="cosine", weight_decay=0.0, clip=0.25, name="adamw",
                     end_lr_fraction=0.1) -> ml_collections.ConfigDict:
  """AdamW (b1 0.9, b2 0.98; or name='sgd') with warmup, then cosine decay to `end_lr_fraction` or a constant rate,
  and global-norm clipping at `clip`."""
  return ml_collections.ConfigDict(dict(name=name, lr=lr, warmup_steps=warmup, end_lr_fraction=end_lr_fraction,
                                        schedule=schedule, b1=0.9, b2=0.98, eps=1e-8, weight_decay=weight_decay,
                                        grad_clip_norm=clip))


def sub_run_config(parent: ml_collections.ConfigDict, objective: str, shared=(), referenced=()) -> ml_collections.ConfigDict:
  """The config of a sub-run (a base LM, a GAN, ...) built inside a config file from `parent`'s own fields:
  `seed` and `mesh_shape` by reference, the `shared` blocks as the same ConfigDicts, and each field of the
  `referenced` blocks by reference. An override of any of them on the command line reaches the sub-run too."""
  c = ml_collections.ConfigDict(dict(objective=objective))
  c.seed, c.mesh_shape = parent.get_ref("seed"), parent.get_ref("mesh_shape")
  for block in shared:
    c[block] = parent[block]
  for block in referenced:
    c[block] = ml_collections.ConfigDict({k: parent[block].get_ref(k) for k in parent[block]})
  return c


def refer_to(target: ml_collections.ConfigDict, source: ml_collections.ConfigDict, skip=()) -> None:
  """Points each field of `target` (existing references to it follow) at the same field of `source`."""
  for key in target:
    if key not in skip:
      target[key] = source.get_ref(key)


def sibling_config(config_file: str, name: str) -> ml_collections.ConfigDict:
  """get_config() of configs/`name`.py beside `config_file` (a config's __file__), wherever it is loaded from."""
  return load_config(pathlib.Path(config_file).with_name(f"{name}.py"))


def resolve(config: ml_collections.ConfigDict, dotted: str):
  """(parent node, last key) of an existing dotted key, else an InputError naming the closest existing key."""
  node, walked = config, []
  keys = dotted.split(".")
  for i, key in enumerate(keys):
    options = list(node.keys()) if hasattr(node, "keys") else []
    if key not in options:
      close = difflib.get_close_matches(key, options, n=1)
      hint = f"did you mean {'.'.join(walked + close)!r}?" if close else f"valid keys here: {', '.join(options)}"
      raise InputError(f"unknown config key {dotted!r}: {hint}")
    if i == len(keys) - 1:
      return node, key
    node, walked = node[key], walked + [key]
