"""Fit before you pay: lower and compile a train step for a config, mesh and batch without training.

Reports parameter count, XLA's FLOPs per step and the per-device memory of the compiled step, so a user knows
before renting a TPU whether, for example, the 24-layer preset fits.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np


def _params_count(abstract_params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


def lm_flops_per_token(n_params: int, n_layer: int, d_model: int, seq_len: int) -> float:
  """Training FLOPs per token of a decoder LM: 6N for the weights plus 12*L*d*T for attention (Kaplan et al.)."""
  return 6.0 * n_params + 12.0 * n_layer * d_model * seq_len


def compile_report(step_fn: Callable, abstract_state, state_shardings, abstract_batch: dict, batch_shardings,
                   mesh, *, params=None, tokens_per_step: int = 0, model_flops_per_step: float = 0.0,
                   donate: bool = True) -> dict[str, Any]:
  """Compiles `step_fn(state, batch, rng)` on abstract inputs and returns a report of sizes, FLOPs and memory."""
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings, rep),
                   out_shardings=(state_shardings, rep), donate_argnums=(0,) if donate else ())
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  t0 = time.perf_counter()
  lowered = jitted.lower(abstract_state, abstract_batch, rng)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  report = {
    "devices": int(mesh.size),
    "mesh": dict(mesh.shape),
    "params": _params_count(params if params is not None else abstract_state),
    "flops_per_step": float(cost.get("flops", float("nan"))) if cost else float("nan"),
    "compile_seconds": compile_s,
  }
  if tokens_per_step:
    report["tokens_per_step"] = tokens_per_step
  if model_flops_per_step:
    report["model_flops_per_step"] = float(model_flops_per_step)
  if mem is not None:
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    for f in fields:
      report[f] = int(getattr(mem, f, 0))
    # Donated outputs alias their inputs, so they are counted once.
    report["per_device_bytes"] = (report["argument_size_in_bytes"] + report["output_size_in_bytes"]
                                  - report["alias_size_in_bytes"] + report["temp_size_in_bytes"])
  return report


def format_report(report: dict[str, Any]) -> str:
  gib = 1024 ** 3
  lines = [f"devices            {report['devices']}  mesh {report['mesh']}",
           f"parameters         {report['params']:,}",
           f"XLA FLOPs          {report['flops_per_step']:.4g} per device program (a scanned layer counts once)"]
  if "model_flops_per_step" in report:
    lines.append(f"model FLOPs/step   {report['model_flops_per_step']:.4g} (all devices; 6N + 12*L*d*T per token)")
  if "tokens_per_step" in report:
    lines.append(f"tokens per step    {report['tokens_per_step']:,}")
  if "per_device_bytes" in report:
    lines += [f"per-device memory  {report['per_device_bytes'] / gib:.3f} GiB "
              f"(arguments {report['argument_size_in_bytes'] / gib:.3f}, outputs {report['output_size_in_bytes'] / gib:.3f}, "
              f"aliased {report['alias_size_in_bytes'] / gib:.3f}, temporaries {report['temp_size_in_bytes'] / gib:.3f})"]
  lines.append(f"compile time       {report['compile_seconds']:.1f} s")
  return "\n".join(lines)
