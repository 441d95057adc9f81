"""Gumbel-Softmax: exact one-hot forward, straight-through gradient, Gumbel-max frequencies, tiny tau, bad tau."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtextgan import gumbel
from jaxtextgan.errors import InputError


def _logits(shape=(4, 7), seed=0, scale=2.0):
  return jax.random.normal(jax.random.key(seed), shape) * scale


@pytest.mark.parametrize("tau", [1.0, 0.3, 1e-3])
def test_hard_forward_is_exact_one_hot_at_argmax_of_perturbed_logits(tau):
  logits = _logits()
  key = jax.random.key(1)
  y = gumbel.gumbel_softmax(logits, key, tau, hard=True)
  y = np.asarray(y)
  assert set(np.unique(y)) <= {0.0, 1.0}
  np.testing.assert_array_equal(y.sum(-1), 1.0)
  # The same key gives the same noise: argmax(logits + g) is the sampled class.
  g = gumbel.gumbel_noise(key, logits.shape)
  np.testing.assert_array_equal(y.argmax(-1), np.asarray(jnp.argmax(logits + g, -1)))


def test_soft_sample_is_a_distribution_and_sharpens_as_tau_falls():
  logits = _logits()
  key = jax.random.key(2)
  soft_hot = gumbel.gumbel_softmax(logits, key, 5.0)
  soft_cold = gumbel.gumbel_softmax(logits, key, 0.05)
  np.testing.assert_allclose(np.asarray(soft_hot).sum(-1), 1.0, rtol=1e-6)
  assert float(soft_cold.max(-1).min()) > float(soft_hot.max(-1).max())


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_straight_through_gradient_equals_soft_relaxation_gradient(tau):
  logits = _logits()
  key = jax.random.key(3)
  weights = jax.random.normal(jax.random.key(4), logits.shape)
  hard = jax.grad(lambda l: jnp.sum(weights * gumbel.gumbel_softmax(l, key, tau, hard=True)))(logits)
  soft = jax.grad(lambda l: jnp.sum(weights * gumbel.gumbel_softmax(l, key, tau, hard=False)))(logits)
  np.testing.assert_allclose(np.asarray(hard), np.asarray(soft), rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(hard).max()) > 0


def test_sample_frequencies_match_softmax_chi_square():
  """Hard samples are exact categorical draws (Gumbel-max): a chi-square goodness-of-fit test at 0.1%."""
  probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
  n = 40_000
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)) + 3.0, (n, probs.size))  # shift-invariant
  y = gumbel.gumbel_softmax(logits, jax.random.key(5), 0.7, hard=True)
  counts = np.asarray(y.sum(0), np.float64)
  expected = probs * n
  stat = float(np.sum((counts - expected) ** 2 / expected))
  try:
    from scipy import stats
    critical = float(stats.chi2.ppf(0.999, df=probs.size - 1))
  except ImportError:  # chi2(5) 99.9% quantile
    critical = 20.515
  assert stat < critical, (counts, expected, stat)


def test_hard_samples_do_not_depend_on_tau():
  logits = _logits((64, 11))
  key = jax.random.key(6)
  ids = [np.asarray(gumbel.gumbel_softmax(logits, key, t, hard=True).argmax(-1)) for t in (2.0, 0.1, 1e-3)]
  np.testing.assert_array_equal(ids[0], ids[1])
  np.testing.assert_array_equal(ids[0], ids[2])


@pytest.mark.parametrize("hard", [False, True])
def test_tiny_tau_is_finite_in_value_and_gradient(hard):
  logits = _logits((8, 50), scale=30.0)  # wide logits: (u + g) / tau spans ~1e5
  key = jax.random.key(7)
  weights = jax.random.normal(jax.random.key(8), logits.shape)
  fn = lambda l: jnp.sum(weights * gumbel.gumbel_softmax(l, key, 1e-3, hard=hard))
  value, grad = jax.value_and_grad(fn)(logits)
  assert np.isfinite(float(value))
  assert np.all(np.isfinite(np.asarray(grad)))
  y = gumbel.gumbel_softmax(logits, key, 1e-3, hard=hard)
  assert np.all(np.isfinite(np.asarray(y)))


def test_noise_never_reaches_0_or_1():
  u = np.asarray(gumbel.uniform_open(jax.random.key(9), (1 << 22,)))
  assert u.min() > 0.0 and u.max() < 1.0
  assert abs(u.mean() - 0.5) < 2e-3 and abs(u.var() - 1 / 12) < 2e-3
  g = np.asarray(gumbel.gumbel_noise(jax.random.key(9), (1 << 22,)))
  assert np.all(np.isfinite(g))
  assert abs(g.mean() - np.euler_gamma) < 5e-3  # E[Gumbel(0, 1)] = Euler-Mascheroni constant


def test_noise_differs_across_keys_and_is_reproducible():
  a = gumbel.gumbel_noise(jax.random.key(0), (1000,))
  b = gumbel.gumbel_noise(jax.random.key(1), (1000,))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(gumbel.gumbel_noise(jax.random.key(0), (1000,))))
  assert abs(float(jnp.corrcoef(a, b)[0, 1])) < 0.1


def test_traced_tau_works_inside_jit():
  logits = _logits()
  fn = jax.jit(lambda t: gumbel.gumbel_softmax(logits, jax.random.key(0), t, hard=True))
  np.testing.assert_array_equal(np.asarray(fn(0.5)), np.asarray(fn(2.0)))


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_non_positive_tau_is_an_input_error(tau):
  with pytest.raises(InputError, match="tau") as err:
    gumbel.gumbel_softmax(_logits(), jax.random.key(0), tau)
  message = str(err.value)
  assert "\n" not in message and "must be > 0" in message
  if tau == 0.0:
    assert "zero tau" in message


def test_one_hot_embedding_has_the_dense_products_value_and_gradients():
  ids = jax.random.randint(jax.random.key(10), (3, 4), 0, 9)
  y = jax.nn.one_hot(ids, 9)
  table = jax.random.normal(jax.random.key(11), (9, 5))
  weights = jax.random.normal(jax.random.key(12), (3, 4, 5))
  dense = lambda y, t: jnp.sum(jnp.sin(weights * jnp.einsum("btv,vd->btd", y, t)))
  lookup = lambda y, t: jnp.sum(jnp.sin(weights * gumbel.one_hot_embed(y, t)))
  by_id = lambda y, t: jnp.sum(jnp.sin(weights * (jnp.take(t, jnp.argmax(y, -1), axis=0)
                                                  + gumbel.one_hot_gradient(y, t))))
  expected = jax.grad(dense, (0, 1))(y, table)
  for fn in (lookup, by_id):
    assert float(fn(y, table)) == pytest.approx(float(dense(y, table)), rel=1e-6)
    for got, want in zip(jax.grad(fn, (0, 1))(y, table), expected):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(gumbel.one_hot_gradient(y, table)), 0.0)
