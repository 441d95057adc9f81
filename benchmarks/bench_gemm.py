"""The GEMMs of one GPT-2 train step, timed shape by shape in XLA:CPU and in PyTorch, alternating.

python -m benchmarks.bench_gemm --size=gpt2_small --batch=8 --seq=128 [--dtype=bfloat16] [--json=PATH]

A GPT-2 train step is matmul-bound, so neither ours nor HF PyTorch's step can be faster than its GEMMs run by its
matmul library. These are the 2-D GEMMs of one step, with M = batch * seq rows:

  forward          y  = x W        (M, K) . (K, N)
  input gradient   dx = dy W^T     (M, N) . (K, N)^T
  weight gradient  dW = x^T dy     (M, K)^T . (M, N)

for the q/k/v projection (N = 3D, one matmul as in both models), the attention output (D -> D), the MLP (D -> 4D,
4D -> D) and the tied output layer (logits = h E^T with E of shape (V, D); dh = g E; dE = g^T h). Attention's
batched (T x T) matmuls are left out: 2% of the FLOPs at T = 128.

PyTorch is `torch.mm` on transposed views, as its autograd calls it (MKL / oneDNN). XLA is a jitted matmul whose
operands are already row-major (M, K) and (K, N), transposed before the timing: inside a step, XLA's layout
assignment chooses each operand's layout and pays for any copy separately, so this times the matmul alone, the form
YNNPACK takes directly. (A bf16 dot contracted on the leading dim of an entry parameter becomes an fp32 matmul on
XLA:CPU, a form the step does not contain.) Set XLA_FLAGS to try XLA's other matmul back-ends.

Both run in this process with the same thread count, one library at a time, in bursts that alternate (XLA, PyTorch,
PyTorch, XLA, ...). A burst is `--burst` back-to-back calls of which the first is not timed, so each library is
timed with its threads awake, as in a step's run of matmuls, and after the other library's threads stopped spinning.
Weighted by how often each GEMM occurs per step (once per layer, or once for the output layer), the medians give the
step's matmul time in each library: a floor under its step time.

The optimizer update is timed too (unless `--no_optimizer`), since it is the other cost every step pays in full:
global-norm clipping then AdamW over all of GPT-2's parameters, ours (`training.make_optimizer`, jitted, state
donated) against `clip_grad_norm_` then `torch.optim.AdamW` with the bench's PyTorch peer's settings, the same
alternating bursts. GEMMs + optimizer is the floor printed last: what a step would take if nothing else cost time.

bf16 (`--dtype=bfloat16`) takes bf16 operands in both: XLA accumulates in fp32 (`preferred_element_type`, as
`layers.contract` does), PyTorch returns bf16 (as under autocast).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from benchmarks.common import (OPT_DEFAULTS, add_shape_args, cores, jit_matmul, machine, machine_line, opt_cfg,
                               save_json, single_device_mesh, torch_adamw, version)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.bench_gemm", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  add_shape_args(p)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--reps", type=int, default=4, help="bursts of each GEMM in each library, alternating")
  p.add_argument("--burst", type=int, default=3, help="calls per burst; all but the first are timed (median)")
  p.add_argument("--no_torch", action="store_true", help="time XLA only")
  p.add_argument("--no_optimizer", action="store_true", help="skip timing the clip + AdamW update")
  args = p.parse_args(argv)
  if args.reps < 1 or args.batch < 1 or args.seq < 1 or args.burst < 2 or args.vocab < 0:
    p.error("--reps, --batch and --seq must be positive, --burst at least 2 and --vocab not negative")
  return args


def step_gemms(n_layer: int, d_model: int, d_ff: int, vocab: int, rows: int) -> list[dict]:
  """The 2-D GEMMs of one GPT-2 train step: name, operand shapes, contracted dims, count per step, FLOPs each."""
  gemms = []

  def layer(name, k, n, count):
    # Forward x (M, K) . W (K, N); dx = dy (M, N) . W^T; dW = x^T (M, K)^T . dy (M, N).
    gemms.append(dict(name=f"{name} forward", lhs=(rows, k), rhs=(k, n), dims=(1, 0), count=count))
    gemms.append(dict(name=f"{name} input grad", lhs=(rows, n), rhs=(k, n), dims=(1, 1), count=count))
    gemms.append(dict(name=f"{name} weight grad", lhs=(rows, k), rhs=(rows, n), dims=(0, 0), count=count))

  layer("qkv", d_model, 3 * d_model, n_layer)
  layer("attn out", d_model, d_model, n_layer)
  layer("mlp up", d_model, d_ff, n_layer)
  layer("mlp down", d_ff, d_model, n_layer)
  # Tied output layer with E (V, D): logits = h E^T, dh = g E, dE = g^T h.
  gemms.append(dict(name="head forward", lhs=(rows, d_model), rhs=(vocab, d_model), dims=(1, 1), count=1))
  gemms.append(dict(name="head input grad", lhs=(rows, vocab), rhs=(vocab, d_model), dims=(1, 0), count=1))
  gemms.append(dict(name="head weight grad", lhs=(rows, vocab), rhs=(rows, d_model), dims=(0, 0), count=1))
  for g in gemms:
    k = g["lhs"][g["dims"][0]]
    m, n = g["lhs"][1 - g["dims"][0]], g["rhs"][1 - g["dims"][1]]
    g.update(m=m, k=k, n=n, flops=2.0 * m * k * n)
  return gemms


def _xla_call(lhs, rhs, dims):
  """lhs . rhs over `dims`, timed as the row-major (M, K) . (K, N) product (operands transposed beforehand)."""
  import jax
  # Eagerly transposed arrays are new buffers in the default (row-major) layout.
  a = jax.block_until_ready(lhs if dims[0] == 1 else lhs.T)
  b = jax.block_until_ready(rhs if dims[1] == 0 else rhs.T)
  fn = jit_matmul()
  return lambda: fn(a, b).block_until_ready()


def _torch_call(lhs, rhs, dims):
  import torch
  a = lhs if dims[0] == 1 else lhs.t()
  b = rhs if dims[1] == 0 else rhs.t()
  return lambda: torch.mm(a, b)


def _timed(call) -> float:
  t0 = time.perf_counter()
  call()
  return time.perf_counter() - t0


def _bursts(calls: dict, args, out: dict) -> dict[str, float]:
  """Times `calls` in alternating bursts (see the module docstring) into `out`; returns {library: median seconds}."""
  seconds = {lib: [] for lib in calls}
  order = list(calls)
  for rep in range(args.reps):
    for lib in (order if rep % 2 == 0 else order[::-1]):
      calls[lib]()
      seconds[lib].extend(_timed(calls[lib]) for _ in range(args.burst - 1))
  for lib, s in seconds.items():
    out[f"{lib}_seconds"] = s
    out[f"{lib}_seconds_median"] = statistics.median(s)
  return {lib: out[f"{lib}_seconds_median"] for lib in seconds}


def _optimizer_calls(cfg, torch) -> tuple[dict, int]:
  """One clip + AdamW update over GPT-2's parameters in each library, with constant gradients: ({lib: call}, N)."""
  import jax
  import jax.numpy as jnp
  from jaxtextgan.objectives import lm

  opt_args = argparse.Namespace(**OPT_DEFAULTS)
  state, _ = lm.init_state(cfg, opt_cfg(opt_args), jax.random.key(0), single_device_mesh())
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), state.params)
  update = jax.jit(lambda state, grads: state.apply_gradients(grads), donate_argnums=0)
  box = [update(state, grads)]

  def xla():
    box[0] = jax.block_until_ready(update(box[0], grads))

  calls = {"xla": xla}
  leaves = jax.tree.leaves(state.params)
  if torch is not None:
    params = [torch.zeros(x.shape, requires_grad=True) for x in leaves]
    for t in params:
      t.grad = torch.full(t.shape, 1e-3)
    opt = torch_adamw(params, opt_args)

    def torch_update():
      torch.nn.utils.clip_grad_norm_(params, opt_args.grad_clip)
      opt.step()

    calls["torch"] = torch_update
  return calls, sum(x.size for x in leaves)


def run(args) -> dict:
  import jax.numpy as jnp
  import numpy as np
  from jaxtextgan.models import gpt2

  cfg = gpt2.preset(args.size, **({"vocab_size": args.vocab} if args.vocab else {}))
  vocab = cfg.vocab_size
  gemms = step_gemms(cfg.n_layer, cfg.d_model, cfg.d_ff, vocab, args.batch * args.seq)
  torch = None
  if not args.no_torch:
    try:
      import torch
      torch.set_num_threads(cores())
    except ImportError:
      print("bench_gemm: torch is not installed; timing XLA only (pip install torch to compare)", file=sys.stderr)
  bf16 = args.dtype == "bfloat16"
  rng = np.random.default_rng(0)
  report = {"config": vars(args), "machine": machine(),
            "versions": {m: version(m) for m in ("jax", "jaxlib", "torch")}, "gemms": []}
  for g in gemms:
    lhs32, rhs32 = (rng.standard_normal(s, dtype=np.float32) for s in (g["lhs"], g["rhs"]))
    jdt = jnp.bfloat16 if bf16 else jnp.float32
    calls = {"xla": _xla_call(jnp.asarray(lhs32, jdt), jnp.asarray(rhs32, jdt), g["dims"])}
    if torch is not None:
      tdt = torch.bfloat16 if bf16 else torch.float32
      calls["torch"] = _torch_call(torch.from_numpy(lhs32).to(tdt), torch.from_numpy(rhs32).to(tdt), g["dims"])
    out = {lib: call() for lib, call in calls.items()}  # compile / warm up
    if torch is not None:
      # Both timed calls compute the same product (a check on the layouts above), to their precision.
      x, t = np.asarray(out["xla"], np.float32), out["torch"].float().numpy()
      g["max_rel_diff"] = float(np.abs(x - t).max() / np.abs(x).max())
    for lib, median in _bursts(calls, args, g).items():
      g[f"{lib}_gflops_per_second"] = g["flops"] / median / 1e9
    report["gemms"].append(g)
  libs = ["xla"] + (["torch"] if torch is not None else [])
  report["step"] = {"flops": sum(g["count"] * g["flops"] for g in gemms)}
  for lib in libs:
    report["step"][f"{lib}_seconds"] = sum(g["count"] * g[f"{lib}_seconds_median"] for g in gemms)
  if torch is not None:
    report["step"]["xla_over_torch_time"] = report["step"]["xla_seconds"] / report["step"]["torch_seconds"]
  if not args.no_optimizer:
    calls, n = _optimizer_calls(cfg, torch)
    opt = report["optimizer"] = {"params": n}
    for lib, median in _bursts(calls, args, opt).items():
      report["step"][f"{lib}_floor_seconds"] = report["step"][f"{lib}_seconds"] + median
  report["machine"]["loadavg_end"] = list(os.getloadavg())
  return report


def format_table(report: dict) -> str:
  has_torch = "torch_seconds" in report["step"]
  head = (f"{'GEMM':20s} {'M x K x N':>20s} {'per step':>8s} {'XLA GFLOP/s':>12s}"
          + (f" {'PyTorch GFLOP/s':>16s} {'XLA/PyTorch time':>17s}" if has_torch else ""))
  lines = [head, "-" * len(head)]
  for g in report["gemms"]:
    line = (f"{g['name']:20s} {g['m']:>6d} x {g['k']:>5d} x {g['n']:>5d} {g['count']:>8d} "
            f"{g['xla_gflops_per_second']:12.1f}")
    if has_torch:
      line += (f" {g['torch_gflops_per_second']:16.1f} "
               f"{g['xla_seconds_median'] / g['torch_seconds_median']:17.2f}")
    lines.append(line)
  step = report["step"]
  total = f"one step's GEMMs ({step['flops']:.3g} FLOPs): XLA {step['xla_seconds']:.3f} s"
  if has_torch:
    total += f", PyTorch {step['torch_seconds']:.3f} s; XLA / PyTorch time x{step['xla_over_torch_time']:.2f}"
  lines.append(total)
  if "optimizer" in report:
    opt = report["optimizer"]
    line = f"clip + AdamW over {opt['params']:,} parameters: XLA {opt['xla_seconds_median']:.3f} s"
    if has_torch:
      line += f", PyTorch {opt['torch_seconds_median']:.3f} s"
    lines.append(line)
    line = f"floor (GEMMs + optimizer): XLA {step['xla_floor_seconds']:.3f} s"
    if has_torch:
      line += f", PyTorch {step['torch_floor_seconds']:.3f} s"
    lines.append(line)
  m = report["machine"]
  lines.append(f"{report['config']['dtype']}, {machine_line(m)}"
               + (f", XLA_FLAGS={m['xla_flags']}" if m["xla_flags"] else ""))
  return "\n".join(lines)


def main(argv=None) -> int:
  args = parse_args(argv)
  report = run(args)
  print(format_table(report))
  save_json(args.json, report)
  return 0


if __name__ == "__main__":
  sys.exit(main())
