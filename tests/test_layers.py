"""Shared layers against NumPy references."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
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


# (x shape, w shape, w's contracted dims): a Dense, a multi-axis Dense (attention output) and the tied LM head.
CONTRACTIONS = [((2, 5, 8), (8, 3, 4), (0,)), ((2, 5, 3, 4), (3, 4, 6), (0, 1)), ((2, 5, 8), (11, 8), (1,))]


def _contraction_inputs(xs, ws, seed):
  rs = np.random.RandomState(seed)
  return rs.randn(*xs).astype(np.float32), rs.randn(*ws).astype(np.float32)


def _numpy_contract(x, w, w_dims):
  return np.tensordot(x, w, axes=(list(range(x.ndim - len(w_dims), x.ndim)), list(w_dims)))


def test_contract_fp32_matches_numpy():
  for i, (xs, ws, w_dims) in enumerate(CONTRACTIONS):
    x, w = _contraction_inputs(xs, ws, i)
    y = layers.contract(jnp.asarray(x), jnp.asarray(w), w_dims, jnp.float32)
    np.testing.assert_allclose(np.asarray(y), _numpy_contract(x, w, w_dims), rtol=1e-5, atol=1e-5)


def test_contract_bf16_values_and_gradients_match_fp32_math_on_bf16_inputs():
  """bf16 operands, fp32 accumulation, one rounding to bf16; the custom VJP gives the gradients of that math."""
  for i, (xs, ws, w_dims) in enumerate(CONTRACTIONS):
    x, w = _contraction_inputs(xs, ws, 10 + i)
    x16, w16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    y = layers.contract(x16, w16, w_dims, jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    ref = _numpy_contract(np.asarray(x16, np.float32), np.asarray(w16, np.float32), w_dims)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=1e-2, atol=1e-2)
    g = np.random.RandomState(20 + i).randn(*y.shape).astype(np.float32)
    dx, dw = jax.grad(lambda a, b: jnp.vdot(layers.contract(a, b, w_dims, jnp.bfloat16).astype(jnp.float32), g),
                      (0, 1))(x16, w16)
    assert dx.dtype == dw.dtype == jnp.bfloat16 and dx.shape == x.shape and dw.shape == w.shape
    dx_ref, dw_ref = jax.grad(lambda a, b: jnp.vdot(layers.contract(a, b, w_dims, jnp.float32), g), (0, 1))(
      np.asarray(x16, np.float32), np.asarray(w16, np.float32))
    np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(dx_ref), rtol=2e-2, atol=3e-2)
    np.testing.assert_allclose(np.asarray(dw, np.float32), np.asarray(dw_ref), rtol=2e-2, atol=3e-2)


def _dots(jaxpr):
  yield from (eqn for eqn in jaxpr.eqns if eqn.primitive.name == "dot_general")
  for sub in jax.extend.core.subjaxprs(jaxpr):
    yield from _dots(sub)


def test_bf16_dense_every_matmul_takes_bf16_and_accumulates_in_fp32():
  """XLA:CPU sends only bf16 x bf16 -> fp32 dots to AMX; a bf16 -> bf16 dot is upcast to an fp32 matmul."""
  d16 = layers.Dense(8, 6, in_axes="embed", out_axes="mlp", dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(d16)
  x = jnp.ones((2, 3, 8), jnp.float32)
  loss = lambda p, x: nnx.merge(graphdef, p)(x).astype(jnp.float32).sum()
  dots = list(_dots(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x).jaxpr))
  assert len(dots) == 3  # forward, d/dx, d/dW
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16], eqn
    assert eqn.params["preferred_element_type"] == jnp.float32, eqn
  # fp32 stays a plain dot_general under JAX's own differentiation (results recorded in fp32 keep their sums).
  d32 = layers.Dense(8, 6, in_axes="embed", out_axes="mlp", rngs=nnx.Rngs(0))
  graphdef32, params32 = nnx.split(d32)
  jaxpr32 = jax.make_jaxpr(jax.grad(lambda p: nnx.merge(graphdef32, p)(x).sum()))(params32)
  assert "custom_vjp" not in str(jaxpr32) and len(list(_dots(jaxpr32.jaxpr))) == 2


def test_contract_refuses_interleaved_dims():
  with pytest.raises(ValueError, match="leading or the trailing"):
    layers.contract(jnp.ones((2, 4, 3)), jnp.ones((4, 5, 3)), (0, 2), jnp.bfloat16)


def test_bf16_embed_soft_tokens_and_tied_head_match_fp32():
  """The soft-token mixture probs . E and the tied head x . E^T in bf16 (fp32 accumulation) against fp32."""
  grads, outs = {}, {}
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(1), (2, 3, 40)))
  for dtype in (jnp.float32, jnp.bfloat16):
    emb = layers.Embed(40, 16, dtype=dtype, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(emb)

    def loss(p, probs):
      e = nnx.merge(graphdef, p)
      h = e(probs)
      return jnp.square(e.attend(h).astype(jnp.float32)).mean(), h

    (_, outs[dtype]), grads[dtype] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, probs)
  assert outs[jnp.bfloat16].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(outs[jnp.bfloat16], np.float32), np.asarray(outs[jnp.float32]), atol=2e-3)
  for g32, g16 in zip(jax.tree.leaves(grads[jnp.float32]), jax.tree.leaves(grads[jnp.bfloat16])):
    assert g16.dtype == g32.dtype == jnp.float32
    assert float(jnp.linalg.norm(g16 - g32) / jnp.linalg.norm(g32)) < 0.03
