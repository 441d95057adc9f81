"""Shared Transformer layers in Flax NNX.

Every parameter carries `logical_axes` metadata (one name per array dimension). `jaxtextgan.sharding` maps those
names to the mesh axes ('data', 'fsdp', 'tensor') through one rules table, so no layer ever names a mesh axis.
Dropout takes an explicit PRNG key, so a module called under `jax.jit` is a pure function of (params, inputs, key).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtextgan import sharding as shd

Array = jax.Array

_default_kernel_init = nnx.initializers.normal(stddev=0.02)


def param(rngs: nnx.Rngs, init, shape: Sequence[int], dtype, axes: Sequence[str | None]) -> nnx.Param:
  """A parameter with logical axis names, one per dimension."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match shape {shape}")
  return nnx.Param(init(rngs.params(), tuple(shape), dtype), logical_axes=tuple(axes))


def dropout(x: Array, rate: float, key: Array | None) -> Array:
  """Inverted dropout; identity when `key` is None (evaluation) or rate is 0."""
  if key is None or rate == 0.0:
    return x
  keep = shd.bernoulli(key, 1.0 - rate, x.shape)  # rbg keys: each batch shard draws only its rows
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def contract(x: Array, w: Array, w_dims: Sequence[int], dtype, bias: Array | None = None) -> Array:
  """y = x . w (+ bias) over x's last len(w_dims) dims and w's `w_dims`, which are w's leading or trailing dims in
  order; y's dims are x's leading dims, then w's others; y has `dtype`.

  fp32 is a plain `dot_general`. For a narrower `dtype` (bf16) every matmul, forward and backward, takes `dtype`
  operands and accumulates in fp32 (`preferred_element_type`): the form TPUs compute natively, and the only one
  XLA:CPU sends to AMX (a bf16 x bf16 -> bf16 dot is upcast to an fp32 matmul). The bias is added in fp32 before
  the one rounding to `dtype`, so its gradient is summed in fp32, and w's gradient comes out of the fp32
  accumulator in w's own dtype (fp32 master weights get fp32 gradients, never rounded to bf16).
  """
  w_dims = tuple(w_dims)
  n = len(w_dims)
  if w_dims not in (tuple(range(n)), tuple(range(w.ndim - n, w.ndim))):
    raise ValueError(f"contract: w_dims={w_dims} must be the leading or the trailing dims of w (ndim {w.ndim})")
  if jnp.dtype(dtype) == jnp.float32:
    x_dims = tuple(range(x.ndim - n, x.ndim))
    y = jax.lax.dot_general(x.astype(dtype), w.astype(dtype), ((x_dims, w_dims), ((), ())))
    return y if bias is None else y + bias.astype(dtype)
  y32 = _contract_accumulating(x, w, w_dims, jnp.dtype(dtype), (jnp.dtype(x.dtype), jnp.dtype(w.dtype)))
  return (y32 if bias is None else y32 + bias.astype(jnp.float32)).astype(dtype)


def _dot_f32(a: Array, b: Array, contracting) -> Array:
  return jax.lax.dot_general(a, b, (contracting, ((), ())), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _contract_accumulating(x: Array, w: Array, w_dims: tuple[int, ...], dtype, grad_dtypes) -> Array:
  """fp32 x . w from `dtype` operands (see `contract`); the gradients come back in `grad_dtypes` = (x's, w's)."""
  return _contract_fwd(x, w, w_dims, dtype, grad_dtypes)[0]


def _contract_fwd(x, w, w_dims, dtype, grad_dtypes):
  x_lo, w_lo = x.astype(dtype), w.astype(dtype)
  return _dot_f32(x_lo, w_lo, (tuple(range(x.ndim - len(w_dims), x.ndim)), w_dims)), (x_lo, w_lo)


def _contract_bwd(w_dims, dtype, grad_dtypes, res, g_f32):
  x_lo, w_lo = res
  batch = tuple(range(x_lo.ndim - len(w_dims)))
  w_free = tuple(i for i in range(w_lo.ndim) if i not in w_dims)
  g = g_f32.astype(dtype)
  # dx = g . w over w's free dims: (batch..., w_dims...).
  dx = _dot_f32(g, w_lo, (tuple(range(len(batch), g.ndim)), w_free))
  # dw = x . g over the batch dims, with the operands in the order that yields w's own layout, so no transpose is
  # left for XLA to fold into the dot (XLA:CPU cannot run a bf16 dot that YNNPACK does not take).
  if w_dims[0] == 0:
    dw = _dot_f32(x_lo, g, (batch, batch))  # (w_dims..., w_free...)
  else:
    dw = _dot_f32(g, x_lo, (batch, batch))  # (w_free..., w_dims...)
  return dx.astype(grad_dtypes[0]), dw.astype(grad_dtypes[1])


_contract_accumulating.defvjp(_contract_fwd, _contract_bwd)


class Dense(nnx.Module):
  """y = x W + b over the last `len(in_shape)` dims of x; W has shape in_shape + out_shape."""

  def __init__(self, in_shape, out_shape, *, in_axes, out_axes, use_bias=True, dtype=jnp.float32,
               param_dtype=jnp.float32, kernel_init=_default_kernel_init, rngs: nnx.Rngs):
    self.in_shape = tuple(in_shape) if isinstance(in_shape, (tuple, list)) else (in_shape,)
    self.out_shape = tuple(out_shape) if isinstance(out_shape, (tuple, list)) else (out_shape,)
    in_axes = tuple(in_axes) if isinstance(in_axes, (tuple, list)) else (in_axes,)
    out_axes = tuple(out_axes) if isinstance(out_axes, (tuple, list)) else (out_axes,)
    self.dtype = dtype
    self.kernel = param(rngs, kernel_init, self.in_shape + self.out_shape, param_dtype, in_axes + out_axes)
    self.bias = (param(rngs, nnx.initializers.zeros, self.out_shape, param_dtype, out_axes)
                 if use_bias else None)

  def __call__(self, x: Array) -> Array:
    bias = None if self.bias is None else self.bias[...]
    return contract(x, self.kernel[...], range(len(self.in_shape)), self.dtype, bias)


class LayerNorm(nnx.Module):
  """y = (x - mean) / sqrt(var + eps) * scale + bias, statistics in fp32."""

  def __init__(self, dim: int, *, eps: float = 1e-5, use_bias: bool = True, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (dim,), param_dtype, ("norm",))
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), param_dtype, ("norm",)) if use_bias else None

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale (Gopher, Rae et al. 2021; Zhang & Sennrich 2019), stats in fp32."""

  def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (dim,), param_dtype, ("norm",))

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def make_norm(kind: str, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs) -> nnx.Module:
  if kind == "layernorm":
    return LayerNorm(dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
  if kind == "rmsnorm":
    return RMSNorm(dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
  raise ValueError(f"unknown norm {kind!r}: use 'layernorm' or 'rmsnorm'")


def gelu_tanh(x: Array) -> Array:
  """GPT-2's tanh approximation of GELU."""
  return jax.nn.gelu(x, approximate=True)


class Embed(nnx.Module):
  """Token embedding E (V, D). Accepts ids (B, T) or soft one-hots (B, T, V), embedded as probs @ E."""

  def __init__(self, vocab_size: int, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding = param(rngs, _default_kernel_init, (vocab_size, dim), param_dtype, ("vocab", "embed"))

  def __call__(self, ids_or_probs: Array) -> Array:
    table = self.embedding[...]
    if jnp.issubdtype(ids_or_probs.dtype, jnp.integer):
      return jnp.take(table, ids_or_probs, axis=0).astype(self.dtype)
    # Soft tokens: a differentiable mixture of embeddings, so gradients reach E and the producer of the probs.
    return contract(ids_or_probs, table, (0,), self.dtype)

  def attend(self, x_BTD: Array) -> Array:
    """Tied output projection: logits = x E^T."""
    return contract(x_BTD, self.embedding[...], (1,), self.dtype)


def stacked(make_layer, n_layer: int, rngs: nnx.Rngs) -> nnx.Module:
  """`n_layer` modules `make_layer(rngs)` with their parameters stacked on a leading axis (logical name 'layers'),
  each initialised from its own split of `rngs`: the form `lax.scan` over layers takes."""

  @nnx.split_rngs(splits=n_layer)
  @nnx.vmap(in_axes=(0,), out_axes=0,
            transform_metadata={nnx.PARTITION_NAME: "layers", "logical_axes": "layers"})
  def make(rngs):
    return make_layer(rngs)

  return make(rngs)


def sinusoid_table(positions: Array, dim: int) -> Array:
  """Transformer sinusoids at (possibly negative or relative) positions: (..., dim)."""
  half = dim // 2
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def init_scale_for_residual(n_layer: int) -> float:
  """GPT-2 scales the init of residual projections by 1/sqrt(2 * n_layer)."""
  return 0.02 / math.sqrt(2 * n_layer)
