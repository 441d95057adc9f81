"""Measured MFU of the LM train step on one accelerator, against the compiler's roofline estimate.

  python -m benchmarks.gpu_lm_mfu --size=gpt2_24l --seq=1024 --variants=8,32,32r --steps=10

Each variant is a per-device batch, with `r` for remat. For each it compiles `lm.train_step` (bf16 compute, fp32
parameters and AdamW, scanned layers, GPT-2's 50,257-token vocabulary), times `--steps` steps after two warm-up
steps, and prints:
- model FLOPs per step: 6 N + 12 L d T per token (Kaplan et al.; N counts every parameter: `gpt2.train_flops_per_token`);
- measured MFU = model FLOPs / step time / peak, against the datasheet peak and the measured bf16 matmul peak;
- the roofline estimate: step time >= max(XLA FLOPs / peak, XLA bytes accessed / HBM bandwidth), so
  MFU <= model FLOPs / (that time * peak). It is an estimate: XLA's byte count ignores caches and fusion limits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxtextgan import sharding as shd
from jaxtextgan import training
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import lm

# Datasheet dense peaks (FLOP/s) and HBM bandwidth (bytes/s); keys are substrings of `device_kind`.
ACCELERATORS = {
  "H200": {"bf16": 989e12, "fp32": 67e12, "hbm": 4.8e12},
  "H100": {"bf16": 989e12, "fp32": 67e12, "hbm": 3.35e12},
  "A100": {"bf16": 312e12, "fp32": 19.5e12, "hbm": 2.0e12},
}


def device_peak(kind: str) -> dict:
  for name, peak in ACCELERATORS.items():
    if name in kind:
      return peak
  return {}


def matmul_peak(n: int = 8192, reps: int = 10) -> float:
  """Measured bf16 matmul FLOP/s on the default device (fp32 accumulation, bf16 output)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a, b)
  out.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - t0)


def run_variant(size: str, seq: int, batch: int, remat: bool, steps: int, dtype: str, peak: dict,
                measured_peak: float) -> dict:
  cfg = gpt2.preset(size, vocab_size=50257, max_len=max(seq, 1024), dtype=dtype, remat=remat, dropout=0.1)
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = {"lr": 1e-4, "total_steps": 1000, "warmup_steps": 10, "grad_clip_norm": 1.0, "weight_decay": 0.01}
  state, shardings = lm.init_state(cfg, opt, jax.random.key(0), mesh)
  batch_sh = {k: shd.batch_sharding(mesh) for k in ("inputs", "targets")}
  step = training.jit_step(lm.train_step, mesh, shardings, batch_sh,
                           compiler_options=training.lm_compiler_options())
  ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
  b = shd.put_batch({"inputs": ids[:, :-1], "targets": ids[:, 1:]}, mesh)
  key = jax.random.key(1)
  t0 = time.perf_counter()
  compiled = step.lower(state, b, key).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  for _ in range(2):
    state, metrics = step(state, b, key)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, b, key)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t0) / steps
  n = gpt2.count_params(state.params)
  model_flops = batch * seq * gpt2.train_flops_per_token(n, cfg.n_layer, cfg.d_model, seq)
  xla_flops = float(cost.get("flops", float("nan")))
  xla_bytes = float(cost.get("bytes accessed", float("nan")))
  pk = peak.get("bf16" if dtype == "bfloat16" else "fp32", float("nan"))
  bound_s = max(xla_flops / pk, xla_bytes / peak.get("hbm", float("nan")))
  return {
    "size": size, "seq": seq, "batch": batch, "remat": remat, "dtype": dtype, "params": n,
    "compile_s": compile_s, "step_s": step_s, "tokens_per_s": batch * seq / step_s,
    "model_flops_per_step": model_flops, "xla_flops_per_step": xla_flops, "xla_bytes_per_step": xla_bytes,
    "mfu_datasheet": model_flops / step_s / pk, "mfu_measured_peak": model_flops / step_s / measured_peak,
    "roofline_step_s": bound_s, "roofline_mfu_bound": model_flops / bound_s / pk,
    "temp_gib": getattr(mem, "temp_size_in_bytes", 0) / 2**30 if mem else float("nan"),
    "argument_gib": getattr(mem, "argument_size_in_bytes", 0) / 2**30 if mem else float("nan"),
    "loss": float(metrics["loss"]),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="gpt2_24l")
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--variants", default="8,32,32r", help="per-device batches; suffix r = remat")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--out", default=os.environ.get("OUT", ""))
  args = p.parse_args(argv)
  dev = jax.devices()[0]
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {dev.device_kind}", flush=True)
  peak = device_peak(dev.device_kind)
  measured = matmul_peak() if jax.default_backend() == "gpu" else matmul_peak(1024, 3)
  print(f"datasheet peak {peak}; measured bf16 matmul peak {measured / 1e12:.1f} TFLOP/s", flush=True)
  rows = []
  for v in args.variants.split(","):
    remat = v.endswith("r")
    try:
      row = run_variant(args.size, args.seq, int(v.rstrip("r")), remat, args.steps, args.dtype, peak, measured)
    except Exception as err:  # noqa: BLE001 - one variant out of memory must not lose the others
      row = {"size": args.size, "batch": int(v.rstrip("r")), "remat": remat, "error": str(err).splitlines()[0]}
    print(json.dumps(row), flush=True)
    rows.append(row)
  if args.out:
    with open(os.path.join(args.out, "gpu_lm_mfu.json"), "w") as f:
      json.dump({"device": dev.device_kind, "jax": jax.__version__, "measured_peak": measured, "peak": peak,
                 "rows": rows}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
