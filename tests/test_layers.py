"""Shared layers against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtextgan.models import layers


def test_layernorm_matches_numpy():
  x = np.random.RandomState(0).randn(3, 5, 8).astype(np.float32)
  ln = layers.LayerNorm(8, eps=1e-5, rngs=nnx.Rngs(0))
  ln.scale.set_value(jnp.arange(8, dtype=jnp.float32) / 8 + 0.5)
  ln.bias.set_value(jnp.full((8,), 0.1))
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  ref = (x - mu) / np.sqrt(var + 1e-5) * (np.arange(8) / 8 + 0.5) + 0.1
  np.testing.assert_allclose(np.asarray(ln(jnp.asarray(x))), ref, atol=1e-5)


def test_rmsnorm_matches_numpy_and_keeps_bf16():
  x = np.random.RandomState(1).randn(4, 16).astype(np.float32)
  rms = layers.RMSNorm(16, eps=1e-6, rngs=nnx.Rngs(0))
  ref = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(rms(jnp.asarray(x))), ref, atol=1e-5)
  assert rms(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


def test_dense_multi_axis_and_metadata():
  d = layers.Dense(6, (2, 3), in_axes="embed", out_axes=("heads", "head_dim"), rngs=nnx.Rngs(0))
  x = np.random.RandomState(2).randn(4, 6).astype(np.float32)
  ref = np.einsum("bi,ihk->bhk", x, np.asarray(d.kernel.get_value())) + np.asarray(d.bias.get_value())
  np.testing.assert_allclose(np.asarray(d(jnp.asarray(x))), ref, atol=1e-5)
  assert d.kernel.get_metadata()["logical_axes"] == ("embed", "heads", "head_dim")


def test_embed_soft_inputs_equal_hard_for_one_hots_and_carry_gradient():
  emb = layers.Embed(10, 4, rngs=nnx.Rngs(0))
  ids = jnp.array([[1, 7, 3]])
  np.testing.assert_allclose(np.asarray(emb(jax.nn.one_hot(ids, 10))), np.asarray(emb(ids)), atol=1e-6)
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (1, 3, 10)))
  grad = jax.grad(lambda p: emb(p).sum())(probs)
  # d/dp sum(p @ E) = row sums of E, the same for each position.
  np.testing.assert_allclose(np.asarray(grad[0, 0]), np.asarray(emb.embedding.get_value().sum(-1)), atol=1e-5)


def test_dropout_is_identity_without_key_and_unbiased_with_key():
  x = jnp.ones((2000,))
  assert np.array_equal(np.asarray(layers.dropout(x, 0.5, None)), np.ones(2000))
  y = np.asarray(layers.dropout(x, 0.5, jax.random.key(0)))
  assert set(np.unique(y)) == {0.0, 2.0}
  assert abs(y.mean() - 1.0) < 0.1


def test_sinusoid_table_values():
  t = np.asarray(layers.sinusoid_table(jnp.array([0, 3]), 4))
  inv = 1.0 / 10000 ** (np.arange(2) / 2)
  np.testing.assert_allclose(t[1], np.concatenate([np.sin(3 * inv), np.cos(3 * inv)]), atol=1e-6)
  np.testing.assert_allclose(t[0], [0, 0, 1, 1], atol=1e-7)
