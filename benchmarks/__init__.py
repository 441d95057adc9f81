"""Benchmarks of jaxtextgan, run from the repository root: `python -m benchmarks.bench`, `-m benchmarks.bench_gemm`."""
