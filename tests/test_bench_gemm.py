"""The per-GEMM benchmark: the step's GEMM list is complete, both libraries compute the same products, and the report
adds up. Not a timed test (no speed assertions)."""

import importlib.util
import subprocess
import sys

import pytest

from benchmarks import bench_gemm
from cli_helpers import REPO
from jaxtextgan.models import gpt2

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_step_gemms_are_the_6n_flops_of_the_matmul_parameters():
  cfg = gpt2.preset("gpt2_small")
  rows = 8 * 128
  gemms = bench_gemm.step_gemms(cfg.n_layer, cfg.d_model, cfg.d_ff, cfg.vocab_size, rows)
  assert len(gemms) == 4 * 3 + 3
  # Forward + two backward matmuls = 6 FLOPs per token per matmul weight: q/k/v, attention output, MLP, tied head.
  d, f, v, n_layer = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layer
  matmul_params = n_layer * (3 * d * d + d * d + 2 * d * f) + v * d
  assert sum(g["count"] * g["flops"] for g in gemms) == 6 * rows * matmul_params
  head_grad = next(g for g in gemms if g["name"] == "head weight grad")
  assert (head_grad["m"], head_grad["k"], head_grad["n"]) == (v, rows, d)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_tiny_run_times_every_gemm_in_both_libraries(dtype, tol):
  args = bench_gemm.parse_args(["--size=tiny", "--vocab=96", "--batch=2", "--seq=8", "--reps=2", "--burst=2",
                                f"--dtype={dtype}"] + ([] if HAS_TORCH else ["--no_torch"]))
  report = bench_gemm.run(args)
  libs = ["xla"] + (["torch"] if HAS_TORCH else [])
  assert [g["name"] for g in report["gemms"]][:3] == ["qkv forward", "qkv input grad", "qkv weight grad"]
  for g in report["gemms"]:
    for lib in libs:
      assert len(g[f"{lib}_seconds"]) == 2 and g[f"{lib}_gflops_per_second"] > 0
    if HAS_TORCH:
      # The XLA operands are the transposed, row-major copies of PyTorch's views: the same product.
      assert g["max_rel_diff"] < tol, g["name"]
  for lib in libs:
    assert report["step"][f"{lib}_seconds"] == pytest.approx(
      sum(g["count"] * g[f"{lib}_seconds_median"] for g in report["gemms"]))
  # The optimizer update runs over every parameter of the model: a tied tiny GPT-2 with a 96-word vocabulary.
  cfg = gpt2.preset("tiny", vocab_size=96)
  d, f, n_layer = cfg.d_model, cfg.d_ff, cfg.n_layer
  per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 2 * 2 * d  # q/k/v/out, their biases, MLP, two LayerNorms
  assert report["optimizer"]["params"] == 96 * d + cfg.max_len * d + n_layer * per_layer + 2 * d
  for lib in libs:
    assert report["step"][f"{lib}_floor_seconds"] == pytest.approx(
      report["step"][f"{lib}_seconds"] + report["optimizer"][f"{lib}_seconds_median"])
  table = bench_gemm.format_table(report)
  assert "head weight grad" in table and "one step's GEMMs" in table and "floor (GEMMs + optimizer)" in table


def test_without_torch_only_xla_is_timed_and_reported():
  report = bench_gemm.run(bench_gemm.parse_args(["--size=tiny", "--vocab=64", "--batch=2", "--seq=4", "--reps=1",
                                                 "--burst=2", "--no_torch", "--no_optimizer"]))
  assert "torch_seconds" not in report["step"] and "optimizer" not in report
  assert all("torch_seconds" not in g and "max_rel_diff" not in g for g in report["gemms"])
  table = bench_gemm.format_table(report)
  assert "PyTorch" not in table and "XLA" in table


def test_bad_arguments_are_refused():
  with pytest.raises(SystemExit):
    bench_gemm.parse_args(["--burst=1"])
  with pytest.raises(SystemExit):
    bench_gemm.parse_args(["--size=gpt3"])
  with pytest.raises(SystemExit):
    bench_gemm.parse_args(["--vocab=-1"])


def test_runs_as_a_module_from_the_repository_root():
  proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_gemm", "--help"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "python -m benchmarks.bench_gemm" in proc.stdout and "--dtype" in proc.stdout
