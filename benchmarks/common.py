"""What the benchmarks share: the model-shape flags, the machine's description, the optimizer and the matmul.

Imports nothing heavy at module level: `bench`'s driver process never imports JAX.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

SIZES = ("tiny", "gpt2_small", "gpt2_24l")
# The optimizer flags' defaults, in every framework.
OPT_DEFAULTS = dict(lr=1e-4, weight_decay=0.01, grad_clip=1.0)


def add_shape_args(p: argparse.ArgumentParser):
  """Adds --size, --batch, --seq, --vocab and --json, the flags every benchmark takes."""
  p.add_argument("--size", default="gpt2_small", choices=SIZES, help="GPT-2 preset (models/gpt2.py PRESETS)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--vocab", type=int, default=0, help="vocabulary size; 0 = the preset's (GPT-2's 50257)")
  p.add_argument("--json", default="", help="write the report here")


def cores() -> int:
  """The cores this process may use."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def version(dist: str) -> str:
  """The installed version of a distribution, '?' when it is missing."""
  try:
    from importlib.metadata import version as _version
    return _version(dist)
  except Exception:  # noqa: BLE001 - a missing distribution only blanks the label
    return "?"


def machine() -> dict:
  """Cores, load average, Python and XLA_FLAGS at the start of a run."""
  return {"cores": cores(), "loadavg_start": list(os.getloadavg()), "python": sys.version.split()[0],
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def machine_line(m: dict) -> str:
  """The last line of a report's table: cores and the load average at start and end."""
  return (f"cores {m['cores']}, load average {m['loadavg_start'][0]:.2f} at start, "
          f"{m.get('loadavg_end', [float('nan')])[0]:.2f} at end")


def save_json(path: str, report: dict):
  """Writes the report to `path`, if one is given."""
  if path:
    with open(path, "w") as f:
      json.dump(report, f, indent=1)


def opt_cfg(args) -> dict:
  """Our optimizer config: AdamW after global-norm clipping, constant learning rate."""
  # The schedule does not change the work, and every peer gets the same AdamW.
  return dict(lr=args.lr, total_steps=1_000_000, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-8,
              weight_decay=args.weight_decay, grad_clip_norm=args.grad_clip)


def torch_adamw(params: list, args):
  """`torch.optim.AdamW` as `opt_cfg` configures ours: weight decay on matrices only, constant lr."""
  import torch
  return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
                            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                           lr=args.lr, betas=(0.9, 0.999), eps=1e-8)


def single_device_mesh():
  """A (1, 1, 1) mesh on the first device."""
  import jax
  from jaxtextgan import sharding
  return sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def jit_matmul():
  """Jitted a @ b accumulating in fp32 (bf16 operands give an fp32 result, as `layers.contract` computes)."""
  import jax
  import jax.numpy as jnp
  return jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
