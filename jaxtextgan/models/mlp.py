"""Multi-layer perceptrons: GAN-BERT's generator and discriminator, and the text GAN's simplest generator."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtextgan.models import layers

Array = jax.Array


def leaky_relu(x: Array, slope: float = 0.2) -> Array:
  return jnp.where(x >= 0, x, slope * x)


class MLP(nnx.Module):
  """x -> [Dense -> leaky-ReLU -> dropout] * len(hidden) -> Dense(out).

  `__call__` returns (output, last hidden activation); the hidden features serve GAN-BERT's feature matching.
  Logical axes: inputs 'embed', hidden 'mlp', output `out_axis`.
  """

  def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, *, dropout: float = 0.1,
               slope: float = 0.2, out_axis: str | None = "embed", in_axis: str | None = "embed",
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    dims = [in_dim, *hidden]
    axes = [in_axis] + ["mlp"] * len(hidden)
    self.hidden = nnx.List([
      layers.Dense(dims[i], dims[i + 1], in_axes=axes[i], out_axes=axes[i + 1], dtype=dtype,
                   param_dtype=param_dtype, rngs=rngs) for i in range(len(hidden))])
    self.out = layers.Dense(dims[-1], out_dim, in_axes=axes[-1], out_axes=out_axis, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
    self.dropout = dropout
    self.slope = slope

  def __call__(self, x: Array, *, dropout_key: Array | None = None) -> tuple[Array, Array]:
    keys = (jax.random.split(dropout_key, max(len(self.hidden), 1)) if dropout_key is not None
            else [None] * max(len(self.hidden), 1))
    h = x
    for layer, key in zip(self.hidden, keys):
      h = layers.dropout(leaky_relu(layer(h), self.slope), self.dropout, key)
    return self.out(h), h
