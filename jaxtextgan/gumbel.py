"""Gumbel-Softmax (Jang et al. 2017; Maddison et al. 2017), the GAN seed's eq. (6) and (10).

  y_i = exp((u_i + g_i) / tau) / sum_j exp((u_j + g_j) / tau),   g_i ~ Gumbel(0, 1) i.i.d.

With `hard=True` the forward value is the exact one-hot of argmax_i(u_i + g_i) (a sample of softmax(u), the
Gumbel-max trick) and the backward pass is the soft sample's gradient (straight-through, seed section 3.3).
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxtextgan.errors import InputError

Array = jax.Array


def _fmix32(h: Array) -> Array:
  """murmur3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def uniform_open(key: Array, shape) -> Array:
  """u ~ U(0, 1) in fp32 on the grid (k + 1/2) 2^-23, strictly inside (0, 1): u in [2^-24, 1 - 2^-24].

  Counter-based: two 32-bit seeds from `key` (threefry), then u = fmix32(fmix32(i ^ s0) + s1) for element index
  i. On CPU this is ~18x cheaper than threefry for the (B, V) noise of every decoding step, where threefry
  dominated the step time; values depend only on (key, index), never on how the array is sharded.
  """
  size = math.prod(shape)
  if size >= 1 << 32:
    raise ValueError(f"noise shape {shape} has more than 2^32 elements")
  seeds = jax.random.bits(key, (2,), jnp.uint32)
  index = jax.lax.iota(jnp.uint32, size).reshape(shape)
  bits = _fmix32(_fmix32(index ^ seeds[0]) + seeds[1])
  # 23 bits: 1 - 2^-24 is the largest fp32 below 1, so no draw rounds up to 1 (which would make g infinite).
  return ((bits >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))


def gumbel_noise(key: Array, shape) -> Array:
  """g = -log(-log u), finite because u never reaches 0 or 1 (g in [-2.82, 16.6])."""
  return -jnp.log(-jnp.log(uniform_open(key, tuple(shape))))


@functools.partial(jax.jit, static_argnames=("hard",))
def _gumbel_softmax(logits: Array, key: Array, tau, hard: bool) -> Array:
  logits = logits.astype(jnp.float32)
  perturbed = logits + gumbel_noise(key, logits.shape)
  # jax.nn.softmax subtracts the max before exp, so tiny tau cannot overflow.
  y_soft = jax.nn.softmax(perturbed / jnp.asarray(tau, jnp.float32), axis=-1)
  if not hard:
    return y_soft
  y_hard = jax.nn.one_hot(jnp.argmax(perturbed, axis=-1), logits.shape[-1], dtype=y_soft.dtype)
  # y_hard + (y_soft - sg(y_soft)): the bracket is exactly 0 forward, so the value is exactly one-hot, and its
  # gradient is y_soft's (the seed's y_hard - sg(y_soft) + y_soft would round 1 - y + y in fp32).
  return y_hard + (y_soft - jax.lax.stop_gradient(y_soft))


def check_tau(tau) -> None:
  """InputError for a concrete tau <= 0 (or NaN); traced values are the caller's responsibility."""
  if isinstance(tau, jax.core.Tracer):
    return
  value = np.asarray(tau, np.float64) if isinstance(tau, (numbers.Number, np.ndarray, jax.Array)) else None
  if value is None:
    raise InputError(f"tau={tau!r} is not a number: pass a temperature > 0")
  if not np.all(value > 0):
    raise InputError(f"tau={float(np.min(value))} is not positive (zero tau): the Gumbel-Softmax temperature "
                     "must be > 0, e.g. 1.0 or 0.1")


def gumbel_softmax(logits: Array, key: Array, tau=1.0, hard: bool = False) -> Array:
  """A relaxed (hard=False) or straight-through (hard=True) sample over the last axis of `logits`.

  Noise and softmax run in fp32; the result is fp32. `tau` may be traced (a schedule inside a jitted step);
  a concrete tau <= 0 raises InputError.
  """
  check_tau(tau)
  return _gumbel_softmax(logits, key, tau, hard)


@jax.custom_vjp
def one_hot_embed(y: Array, table: Array) -> Array:
  """y @ table for y (..., V) that is exactly one-hot in value (a straight-through sample), as a gather.

  The backward pass is the dense product's, dy = g table^T and dtable = y^T g (a scatter-add, y being one-hot),
  so gradients equal those of `y @ table` while the forward pass and dtable cost O(D) per token instead of O(V D).
  """
  return jnp.take(table, jnp.argmax(y, axis=-1), axis=0)


def _one_hot_embed_fwd(y, table):
  ids = jnp.argmax(y, axis=-1)
  return jnp.take(table, ids, axis=0), (ids, table)


def _one_hot_embed_bwd(res, g):
  ids, table = res
  dy = jnp.einsum("...d,vd->...v", g, table.astype(g.dtype))
  dtable = jnp.zeros_like(table).at[ids.reshape(-1)].add(g.reshape(-1, g.shape[-1]).astype(table.dtype))
  return dy.astype(g.dtype), dtable


one_hot_embed.defvjp(_one_hot_embed_fwd, _one_hot_embed_bwd)


def one_hot_gradient(y: Array, table: Array) -> Array:
  """Exactly 0 in value, with y's gradient of y @ table (the table's comes from the lookup it is added to).

  embed(argmax y) + one_hot_gradient(y, E) equals y @ E in value and in both gradients for a one-hot y, at the
  cost of a lookup: how a straight-through token enters an embedding that also takes ids (GPT2.embed).
  """
  embedded = one_hot_embed(y, jax.lax.stop_gradient(table))
  return embedded - jax.lax.stop_gradient(embedded)
