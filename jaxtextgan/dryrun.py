"""Fit before you pay: lower and compile the train step(s) of a config for its mesh and batch without training.

Reports parameter count, XLA's FLOPs per step and the per-device memory of each compiled step, so a user knows
before renting a TPU whether, for example, the 24-layer preset fits. Every objective's steps are the ones its task
jits (same helpers, shardings and compiler options), lowered on `jax.eval_shape` states: nothing is allocated,
and no data is read beyond what fixes the vocabulary (or, for GAN-BERT, the number of classes) when the config
leaves it open.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import jax
import numpy as np

from jaxtextgan import sharding as shd
from jaxtextgan.errors import InputError


def _params_count(abstract_params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


def abstract_key() -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((), jax.random.key(0).dtype)


def lower_and_report(jitted, abstract_args: tuple, mesh, *, params, frozen_params=None, batch=None,
                     tokens_per_step: int = 0, model_flops_per_step: float = 0.0) -> dict[str, Any]:
  """Lowers and compiles an already-jitted step on abstract arguments; reports the trained `params` (and the
  `frozen_params` it reads), XLA's FLOPs and the per-device memory of the compiled program."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*abstract_args).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  report = {
    "devices": int(mesh.size),
    "mesh": dict(mesh.shape),
    "params": _params_count(params),
    "flops_per_step": float(cost.get("flops", float("nan"))) if cost else float("nan"),
    "bytes_accessed": float(cost.get("bytes accessed", 0.0)) if cost else 0.0,
    "compile_seconds": compile_s,
    "prng_impl": str(jax.config.jax_default_prng_impl),
  }
  if frozen_params is not None:
    report["frozen_params"] = _params_count(frozen_params)
  if batch is not None:
    report["batch"] = {k: tuple(int(d) for d in v.shape) for k, v in batch.items()}
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
           f"parameters         {report['params']:,}"]
  if "frozen_params" in report:
    lines.append(f"frozen parameters  {report['frozen_params']:,} (read, not trained)")
  if "batch" in report:
    lines.append("batch              " + ", ".join(f"{k} {v}" for k, v in report["batch"].items()))
  lines.append(f"XLA FLOPs          {report['flops_per_step']:.4g} per device program (a scanned layer counts once)")
  if "model_flops_per_step" in report:
    lines.append(f"model FLOPs/step   {report['model_flops_per_step']:.4g} (all devices; 6N + 12*L*d*T per token)")
  if "tokens_per_step" in report:
    lines.append(f"tokens per step    {report['tokens_per_step']:,}")
  if "per_device_bytes" in report:
    size = {k: report[f"{k}_size_in_bytes"] / gib for k in ("argument", "output", "alias", "temp")}
    lines += [f"per-device memory  {report['per_device_bytes'] / gib:.3f} GiB (arguments {size['argument']:.3f}, "
              f"outputs {size['output']:.3f}, aliased {size['alias']:.3f}, temporaries {size['temp']:.3f})"]
  if "prng_impl" in report:
    lines.append(f"random keys        {report['prng_impl']} (--prng_impl)")
  lines.append(f"compile time       {report['compile_seconds']:.1f} s")
  return "\n".join(lines)


# --- per objective -------------------------------------------------------------------------------------------------

DRY_RUN_OBJECTIVES = ("lm", "gan", "ganbert", "dfine")


def dry_run(config) -> Any:
  """`--dry_run`: compiles every Stage that `config.objective`'s run would train, from the task's own plan
  (`tasks.<objective>.dry_run_stages(config, mesh)`), and prints one report per step program. For a TPU slice,
  `tpu.dry_run` compiles the same Stages with XLA:TPU."""
  task = importlib.import_module(f"jaxtextgan.tasks.{check_objective(config)}")
  mesh = shd.make_mesh(tuple(config.mesh_shape))
  reports = {}
  for st in task.dry_run_stages(config, mesh):
    reports.update(stage_reports(st, mesh))
  _print_reports(config.objective, reports)
  return reports


def check_objective(config) -> str:
  objective = config.get("objective")
  if objective not in DRY_RUN_OBJECTIVES:
    raise InputError(f"--dry_run is not available for objective {objective!r}: use one of "
                     f"{', '.join(DRY_RUN_OBJECTIVES)}")
  return objective


def stage_reports(st, mesh) -> dict[str, dict]:
  """{'<stage> <step>': report} for each step program of a Stage, compiled on abstract arguments."""
  from jaxtextgan import stage as stage_lib
  out = {}
  lowered = stage_lib.lower(st, mesh)
  for i, (jitted, args) in enumerate(lowered):
    name = st.name if len(lowered) == 1 else f"{st.name} {getattr(st.steps[i], '__name__', i)}"
    state = args[0]
    params = getattr(state, "params", None)
    if params is None:  # several players in one state (GAN, GAN-BERT): every trained parameter tree
      params = tuple(p.params for p in vars(state).values() if hasattr(p, "params"))
    frozen = args[1] if st.frozen_shardings is not None else None
    out[name] = lower_and_report(jitted, args, mesh, params=params, frozen_params=frozen or None, batch=args[-2],
                                 tokens_per_step=st.tokens_per_step, model_flops_per_step=st.model_flops_per_step)
  return out


def summary_line(name: str, report: dict[str, Any]) -> str:
  mem = f", {report['per_device_bytes'] / 1024 ** 3:.3f} GiB per device" if "per_device_bytes" in report else ""
  return f"{name}: {report['params']:,} params, {report['flops_per_step']:.4g} XLA FLOPs/step{mem}"


def _print_reports(objective: str, reports: dict[str, dict]) -> None:
  for name, report in reports.items():
    print(f"[{objective} {name}]\n{format_report(report)}\n", flush=True)
  print("\n".join(summary_line(f"{objective} {name}", r) for name, r in reports.items()), flush=True)


