"""Model FLOPs utilisation: a step's FLOPs from its jaxpr, the device's peak from a table (measured on CPU).

MFU = FLOPs of one step / step time / peak FLOP/s of the devices. The FLOPs are the matmuls the model asks for
(2 · MACs of every `dot_general` in the step's jaxpr, a scanned layer counted `length` times), not what XLA
executes: rematerialised forward passes do not count, as in PaLM's definition. Elementwise work is left out too;
for Transformers it is a few percent.

Peaks are dense matmul FLOP/s per chip from the vendors' datasheets; a CPU has no datasheet figure here, so its peak
is measured once per process with a large matmul (`measured_cpu_peak`).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

# device_kind substring -> dense peak FLOP/s per chip by compute dtype, HBM bytes per chip and HBM bandwidth (B/s).
# TPU: cloud.google.com/tpu/docs (v4, v5e, v5p, v6e system architecture pages); GPU: NVIDIA's datasheets, SXM
# parts, dense (no 2:4 sparsity); fp32 on a GPU is the plain (non-TF32) rate. TPUs run fp32 matmuls as several
# bf16 passes, so their fp32 entry is the bf16 rate / 3 (XLA's default 'bf16_3x' precision for fp32 dots).
ACCELERATORS: dict[str, dict[str, float]] = {
  "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 3, "hbm_bytes": 32 * 2**30, "hbm_bandwidth": 1.2e12},
  "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 3, "hbm_bytes": 16 * 2**30, "hbm_bandwidth": 819e9},
  "TPU v5p": {"bfloat16": 459e12, "float32": 459e12 / 3, "hbm_bytes": 95 * 2**30, "hbm_bandwidth": 2.765e12},
  "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12 / 3, "hbm_bytes": 32 * 2**30, "hbm_bandwidth": 1.64e12},
  "A100": {"bfloat16": 312e12, "float32": 19.5e12, "hbm_bytes": 80 * 2**30, "hbm_bandwidth": 2.039e12},
  "H100": {"bfloat16": 989e12, "float32": 67e12, "hbm_bytes": 80 * 2**30, "hbm_bandwidth": 3.35e12},
  "H200": {"bfloat16": 989e12, "float32": 67e12, "hbm_bytes": 141e9, "hbm_bandwidth": 4.8e12},
}
# Names jax reports for the same chips.
_ALIASES = {"TPU v5e": "TPU v5 lite", "TPU v6e": "TPU v6 lite", "TPU v5": "TPU v5p"}


def chip(device_kind: str) -> dict[str, float] | None:
  """The table row of a device kind (e.g. 'TPU v5 lite', 'NVIDIA H100 80GB HBM3'), or None when unknown."""
  kind = _ALIASES.get(device_kind, device_kind)
  for name, row in ACCELERATORS.items():
    if name in kind:
      return row
  return None


@functools.lru_cache(maxsize=4)
def measured_cpu_peak(dtype: str = "float32", n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of an n³ matmul on the default CPU device, best of `repeats` (the whole process's cores)."""
  x = jnp.ones((n, n), jnp.dtype(dtype))
  matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  matmul(x, x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(x, x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best


def peak_flops(dtype: str = "float32", devices=None) -> float:
  """Peak FLOP/s of `devices` together (default: all of jax's); a CPU's is measured; NaN when unknown."""
  devices = jax.devices() if devices is None else devices
  if devices[0].platform == "cpu":
    return measured_cpu_peak("bfloat16" if dtype == "bfloat16" else "float32")  # fake devices share the cores
  row = chip(devices[0].device_kind)
  return float("nan") if row is None else row["bfloat16" if dtype == "bfloat16" else "float32"] * len(devices)


def jaxpr_matmul_flops(closed_jaxpr) -> float:
  """2 · MACs of every dot_general in a (closed) jaxpr; a scan body counts `length` times, a cond its dearest
  branch, a while body once (its trip count is not static)."""
  from jax.extend import core

  def walk(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      if name == "dot_general":
        lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
        (_, rc), (_, rb) = eqn.params["dimension_numbers"]
        free = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
        total += 2.0 * float(np.prod(lhs)) * float(np.prod(free))
        continue
      if name == "cond":
        total += max(walk(b.jaxpr) for b in eqn.params["branches"])
        continue
      mult = float(eqn.params["length"]) if name == "scan" else 1.0
      for v in eqn.params.values():
        for sub in (v if isinstance(v, (tuple, list)) else (v,)):
          if isinstance(sub, core.ClosedJaxpr):
            total += mult * walk(sub.jaxpr)
          elif isinstance(sub, core.Jaxpr):
            total += mult * walk(sub)
    return total

  return walk(closed_jaxpr.jaxpr)


def step_flops(fn, *abstract_args) -> float:
  """Matmul FLOPs of one call of `fn` on abstract (or real) arguments, traced once, nothing run."""
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*abstract_args))
