"""The benchmark runs end to end at a tiny size and reports sane fields; not a timed test (no speed assertions)."""

import importlib.util
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtextgan import bench
from cli_helpers import REPO


def _installed(*modules):
  return all(importlib.util.find_spec(m) is not None for m in modules)


def test_jaxpr_matmul_flops_multiplies_scan_bodies():
  a, w = jnp.ones((4, 8)), jnp.ones((3, 8, 8))
  scanned = jax.make_jaxpr(lambda a, w: jax.lax.scan(lambda x, wi: (x @ wi, None), a, w)[0])(a, w)
  assert bench.jaxpr_matmul_flops(scanned) == 3 * 2 * 4 * 8 * 8
  batched = jax.make_jaxpr(lambda x, y: jnp.einsum("bij,bjk->bik", x, y))(np.ones((2, 3, 5)), np.ones((2, 5, 7)))
  assert bench.jaxpr_matmul_flops(batched) == 2 * 2 * 3 * 5 * 7


def test_tiny_benchmark_reports_every_worker(tmp_path):
  out = tmp_path / "bench.json"
  peers = [p for p, mods in (("torch", ("torch", "transformers")), ("flax", ("flax", "transformers")))
           if _installed(*mods)]
  cmd = [sys.executable, "-m", "jaxtextgan.bench", "--size=tiny", "--vocab=128", "--batch=2", "--seq=8",
         "--steps=2", "--warmup=1", "--peak_n=256", f"--peers={','.join(peers)}", "--objectives=lm",
         "--variants=unrolled,scan", "--parallel_setup",
         f"--json={out}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert "jaxtextgan:lm" in proc.stdout and "tokens/s" in proc.stdout
  results = report["results"]
  assert set(results) == {"peak:matmul", "jaxtextgan:lm", "jaxtextgan:lm@scan", *(f"{p}:lm" for p in peers)}
  assert report["peak_gflops"] > 0
  for name, r in results.items():
    assert r["status"] == "ok", (name, r)
    assert r["timed_steps"] == 2 and len(r["step_seconds"]) == 2
    assert 0 < r["step_seconds_median"] < 60
    assert r["peak_rss_mb"] > 50 and r["gflops_per_second"] > 0
    assert r["compile_seconds"] >= 0 and r["first_step_seconds"] > 0
  ours = results["jaxtextgan:lm"]
  assert ours["tokens_per_step"] == 2 * 8
  assert ours["tokens_per_second"] == pytest.approx(16 / ours["step_seconds_median"])
  assert ours["compile_seconds"] > 0 and 0 < ours["fraction_of_peak"]
  # 6N + 12*L*d*T per token; the jaxpr's matmuls are the same model minus the embedding lookups.
  assert ours["flops_per_step"] == pytest.approx(16 * (6 * ours["params"] + 12 * 2 * 32 * 8))
  assert 0.3 * ours["flops_per_step"] < ours["jaxpr_matmul_flops_per_step"] < 1.5 * ours["flops_per_step"]
  # The scanned layout is the same model: same parameter count and analytic FLOPs.
  assert results["jaxtextgan:lm@scan"]["params"] == ours["params"]
  assert results["jaxtextgan:lm@scan"]["flops_per_step"] == ours["flops_per_step"]
  for p in peers:
    assert results[f"{p}:lm"]["params"] == ours["params"]
    assert set(report["ratios"][f"lm_vs_{p}"]) == {"tokens_per_second", "peak_rss", "compile_seconds"}


def test_bad_flags_are_rejected():
  with pytest.raises(SystemExit):
    bench.parse_args(["--peers=tensorflow"])
  with pytest.raises(SystemExit):
    bench.parse_args(["--objectives=rl"])
  with pytest.raises(SystemExit):
    bench.parse_args(["--variants=unrolled,pipelined"])
  args = bench.parse_args(["--variants=scan,unrolled"])
  assert args.variant_list == ["scan", "unrolled"] and args.variant == "scan"
  assert bench.parse_args(["--variants=scan", "--worker=jaxtextgan:lm@unrolled"]).variant == "unrolled"
