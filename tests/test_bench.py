"""The benchmark runs end to end at a tiny size and reports sane fields; not a timed test (no speed assertions)."""

import importlib.util
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench
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
  peers = [p for p, mods in (("torch", ("torch", "transformers")), ("flax", ("flax", "transformers")),
                             ("torch_bf16", ("torch", "transformers"))) if _installed(*mods)]
  cmd = [sys.executable, "-m", "benchmarks.bench", "--size=tiny", "--vocab=128", "--batch=2", "--seq=8",
         "--steps=2", "--warmup=1", "--peak_n=256", f"--peers={','.join(peers)}", "--objectives=lm",
         "--variants=unrolled,scan,bf16", "--parallel_setup",
         f"--json={out}", f"--profile={tmp_path / 'profiles'}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert "jaxtextgan:lm" in proc.stdout and "tokens/s" in proc.stdout
  results = report["results"]
  assert set(results) == {"peak:matmul", "peak:matmul_bf16", "jaxtextgan:lm", "jaxtextgan:lm@scan", "jaxtextgan:lm@bf16",
                          *(f"{p}:lm" for p in peers)}
  assert report["peak_gflops"] > 0 and report["peak_gflops_bf16"] > 0
  # Each worker's fraction is of the peak of its own precision.
  bf16 = results["jaxtextgan:lm@bf16"]
  assert bf16["fraction_of_peak"] == pytest.approx(bf16["gflops_per_second"] / report["peak_gflops_bf16"])
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
  # The scanned layout and bf16 compute are the same model: same parameter count and analytic FLOPs.
  for variant in ("scan", "bf16"):
    assert results[f"jaxtextgan:lm@{variant}"]["params"] == ours["params"]
    assert results[f"jaxtextgan:lm@{variant}"]["flops_per_step"] == ours["flops_per_step"]
  # --profile traces one more step of every JAX worker and sums its device-op time.
  for name in ("jaxtextgan:lm", "jaxtextgan:lm@scan", *(["flax:lm"] if "flax" in peers else [])):
    profile = results[name].get("profile")
    assert profile, (name, results[name].get("profile_error"))
    assert profile["op_seconds"] > 0 and 0 < profile["matmul_share"] <= 1 and profile["top_ops"]
  for p in peers:
    assert results[f"{p}:lm"]["params"] == ours["params"]
  # Each of our LM workers is compared with every peer of its own precision, and only with those.
  fp32_peers = [p for p in peers if p != "torch_bf16"]
  expected = {f"{v}_vs_{p}" for v in ("lm", "lm@scan") for p in fp32_peers}
  expected |= {"lm@bf16_vs_torch_bf16"} if "torch_bf16" in peers else set()
  assert set(report["ratios"]) == expected
  for ratio in report["ratios"].values():
    assert set(ratio) == {"tokens_per_second", "peak_rss", "compile_seconds"} and ratio["tokens_per_second"] > 0


def test_bad_flags_are_rejected():
  with pytest.raises(SystemExit):
    bench.parse_args(["--peers=tensorflow"])
  with pytest.raises(SystemExit):
    bench.parse_args(["--objectives=rl"])
  with pytest.raises(SystemExit):
    bench.parse_args(["--gan_model=gpt3"])
  with pytest.raises(SystemExit):
    bench.parse_args(["--variants=unrolled,pipelined"])
  assert bench.precision("jaxtextgan:lm", "bf16") == bench.precision("torch_bf16:lm") == "bf16"
  assert bench.precision("jaxtextgan:lm@bf16") == "bf16" and bench.precision("jaxtextgan:lm@scan", "bf16") == "fp32"
  assert bench.precision("torch:lm") == bench.precision("flax:lm") == "fp32"
  args = bench.parse_args(["--variants=scan,unrolled"])
  assert args.variant_list == ["scan", "unrolled"] and args.variant == "scan"
  assert bench.parse_args(["--variants=scan", "--worker=jaxtextgan:lm@unrolled"]).variant == "unrolled"


@pytest.mark.skipif(not _installed("torch", "transformers"), reason="the PyTorch peers need torch and transformers")
def test_tiny_gan_and_ganbert_peers(tmp_path):
  """The text-GAN and GAN-BERT steps against their PyTorch peers, alternating, at a tiny size (not timed)."""
  out = tmp_path / "bench.json"
  cmd = [sys.executable, "-m", "benchmarks.bench", "--size=tiny", "--vocab=64", "--batch=4", "--seq=8",
         "--gan_len=4", "--gan_model=size", "--steps=1", "--warmup=1", "--peak_n=128", "--threads=1", "--peers=torch",
         "--objectives=gan,ganbert", "--parallel_setup", "--fast_compile", f"--json={out}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  results = report["results"]
  assert set(results) == {"peak:matmul", "jaxtextgan:gan", "torch:gan", "jaxtextgan:ganbert", "torch:ganbert"}
  for name, r in results.items():
    assert r["status"] == "ok", (name, r)
    # The peak worker stays for the rounds of both phases.
    assert r["timed_steps"] == (2 if name == "peak:matmul" else 1) and r["step_seconds_median"] > 0
    if name != "peak:matmul":
      assert r["tokens_per_second"] > 0 and 0 < r["mfu"] < 1, (name, r)
  # Both sides of a pair do the same work: the same tokens per step and (credited) the same FLOPs.
  for objective, tokens in (("gan", 4 * 4), ("ganbert", 4 * 8)):
    ours, peer = results[f"jaxtextgan:{objective}"], results[f"torch:{objective}"]
    assert ours["tokens_per_step"] == peer["tokens_per_step"] == tokens
    assert peer["flops_per_step"] == ours["jaxpr_matmul_flops_per_step"] > 0
  assert results["jaxtextgan:ganbert"]["labeled_rows"] == results["torch:ganbert"]["labeled_rows"] > 0
  assert set(report["ratios"]) == {"gan_vs_torch", "ganbert_vs_torch"}
  assert "MFU" in proc.stdout and report["mfu_peak_gflops"]["fp32"] > 0
