"""Test set-up: 8 fake CPU devices, and access to ../shared."""

import gc
import os
import pathlib

# The tests' models are tiny, so compiling dominates their time; LLVM -O0 about halves it. XLA's HLO passes still
# run, so the programs are the same. Subprocesses and notebook kernels started by tests inherit the flag.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402  (after XLA_FLAGS, which is read when the backend starts)
import pytest

# Must run before any backend is initialised, so sharded tests can build 8-device meshes.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("JAXTEXTGAN_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> pathlib.Path:
  """Path under ../shared; skips the test when absent, fails when CI=true."""
  path = SHARED.joinpath(*parts)
  if not path.exists():
    reason = f"{path} is absent: it comes from the project's shared/ folder beside the repository"
    if os.environ.get("CI") == "true":
      pytest.fail(reason)
    pytest.skip(reason)
  return path


@pytest.fixture
def shared():
  return shared_path


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs(request):
  """Drops every compiled program after each test module: JAX's caches, and the module's own caches of compiled
  steps (its lru_caches and its `_UPPER_CASE` dicts). Each XLA:CPU executable holds memory maps (a GAN train step,
  about a thousand) for as long as anything holds it; a test worker that compiled for 15 minutes had 36k maps, Linux's
  default vm.max_map_count is 65,530, and workers used to segfault inside XLA's compiler late in a run."""
  yield
  for name, value in vars(request.module).items():
    if hasattr(value, "cache_clear"):
      value.cache_clear()
    elif isinstance(value, dict) and name.startswith("_") and name.isupper():
      value.clear()
  jax.clear_caches()
  gc.collect()
