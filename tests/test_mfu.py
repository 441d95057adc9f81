"""Model FLOPs utilisation: the jaxpr FLOP count against hand counts, the chip table, the CPU peak."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxtextgan import mfu


def test_matmul_flops_count_scan_bodies_by_their_length():
  a = jnp.ones((4, 8))
  w = jnp.ones((3, 8, 8))

  def f(a, w):
    y = a @ w[0]  # 2 * 4 * 8 * 8
    y, _ = jax.lax.scan(lambda c, wi: (c @ wi, None), y, w)  # 3 more of the same
    return jnp.einsum("bd,cd->bc", y, a).sum()  # 2 * 4 * 4 * 8

  assert mfu.step_flops(f, a, w) == 2 * 4 * 8 * 8 * 4 + 2 * 4 * 4 * 8
  # The gradient's matmuls count too: twice the forward for every matmul whose both operands need no gradient...
  grad_flops = mfu.step_flops(jax.grad(f, argnums=1), a, w)
  assert grad_flops > 2 * mfu.step_flops(f, a, w)
  # ... and abstract arguments are enough.
  spec = jax.ShapeDtypeStruct((4, 8), jnp.float32), jax.ShapeDtypeStruct((3, 8, 8), jnp.float32)
  assert mfu.step_flops(f, *spec) == mfu.step_flops(f, a, w)


def test_chip_table_lookup_by_device_kind():
  assert mfu.chip("TPU v5 lite")["bfloat16"] == 197e12
  assert mfu.chip("TPU v5e") is mfu.chip("TPU v5 lite")
  assert mfu.chip("NVIDIA H100 80GB HBM3")["float32"] == 67e12
  assert mfu.chip("NVIDIA H200")["hbm_bandwidth"] == 4.8e12
  assert mfu.chip("cpu") is None


def test_cpu_peak_is_measured_and_shared_by_fake_devices():
  peak = mfu.peak_flops("float32", jax.devices()[:1])
  assert np.isfinite(peak) and peak > 1e8
  assert mfu.peak_flops("float32", jax.devices()) == peak  # 8 fake devices share the same cores
