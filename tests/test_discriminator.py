"""Discriminators: ids and one-hots agree, soft tokens are differentiable, rows are independent, options."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtextgan.errors import InputError
from jaxtextgan.models import discriminator as disc_lib

V, T, B = 11, 7, 4


@functools.lru_cache(maxsize=None)
def _model(kind, pooling="mean"):
  cfg = disc_lib.DiscriminatorConfig(kind=kind, vocab_size=V, max_len=T, n_layer=2, d_model=16, n_head=2, d_ff=32,
                                     pooling=pooling, widths=(2, 3), filters=8)
  graphdef, params = nnx.split(disc_lib.make_discriminator(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  apply = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  return graphdef, params, apply


def _ids(seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


KINDS = [("transformer", "mean"), ("transformer", "last"), ("cnn", "mean")]


@pytest.mark.parametrize("kind,pooling", KINDS)
def test_ids_and_one_hots_give_the_same_logit(kind, pooling):
  _, params, apply = _model(kind, pooling)
  ids = _ids()
  by_ids = apply(params, ids)
  by_one_hot = apply(params, jax.nn.one_hot(ids, V))
  assert by_ids.shape == (B,) and by_ids.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(by_ids), np.asarray(by_one_hot), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,pooling", KINDS)
def test_soft_tokens_are_differentiable_and_rows_independent(kind, pooling):
  graphdef, params, apply = _model(kind, pooling)
  x = jax.nn.softmax(jax.random.normal(jax.random.key(1), (B, T, V)) * 3)
  # d logit_0 / d x: nonzero for row 0, exactly zero for the other rows (the gradient penalty relies on it).
  grad = jax.jit(jax.grad(lambda x: nnx.merge(graphdef, params)(x)[0]))(x)
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad)) and np.abs(grad[0]).max() > 0
  np.testing.assert_array_equal(grad[1:], 0.0)


def test_mean_pooling_sees_the_first_token_and_the_last():
  _, params, apply = _model("transformer", "mean")
  ids = _ids()
  base = np.asarray(apply(params, ids))
  for pos in (0, T - 1):
    changed = np.asarray(apply(params, ids.at[:, pos].set((ids[:, pos] + 1) % V)))
    assert np.all(np.abs(changed - base) > 0), pos


def test_bad_options_are_input_errors():
  with pytest.raises(InputError, match="discriminator='rnn' is unknown"):
    disc_lib.DiscriminatorConfig(kind="rnn")
  with pytest.raises(InputError, match="pooling='max' is unknown"):
    disc_lib.DiscriminatorConfig(pooling="max")
  with pytest.raises(InputError, match="widths"):
    disc_lib.make_discriminator(disc_lib.DiscriminatorConfig(kind="cnn", vocab_size=V, max_len=3, widths=(2, 5)),
                                rngs=nnx.Rngs(0))
  with pytest.raises(InputError, match="vocab_size"):
    disc_lib.make_discriminator(disc_lib.DiscriminatorConfig(vocab_size=0), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind,pooling", KINDS)
def test_one_hot_path_matches_the_dense_path_in_value_and_gradient(kind, pooling):
  graphdef, params, _ = _model(kind, pooling)
  y = jax.nn.one_hot(_ids(3), V)
  weights = jnp.arange(1.0, B + 1)

  def score(p, x, one_hot):
    return jnp.sum(weights * nnx.merge(graphdef, p)(x, one_hot=one_hot))

  grads = jax.jit(jax.grad(score, (0, 1)), static_argnums=2)
  dense_value, lookup_value = score(params, y, False), score(params, y, True)
  assert float(lookup_value) == pytest.approx(float(dense_value), rel=1e-5)
  for got, want in zip(jax.tree.leaves(grads(params, y, True)), jax.tree.leaves(grads(params, y, False))):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
