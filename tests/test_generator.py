"""Generators: straight-through one-hots, KV-cache decoding = a full forward pass, gradients through the soft
feedback path, LM-checkpoint compatibility, the MLP option and bad configs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtextgan.errors import InputError
from jaxtextgan.models import generator as gen_lib
from jaxtextgan.models import gpt2
from jaxtextgan.training import FAST_COMPILE

V, T, Z, B = 13, 6, 4, 3
LM_CFG = gpt2.GPT2Config(vocab_size=V, max_len=8, n_layer=2, d_model=16, n_head=2, d_ff=32, dropout=0.0)


@functools.lru_cache(maxsize=None)
def _params(kind, seed=0):
  """Parameters of one generator per kind, initialised once for the module (initialisation is the slow part)."""
  cfg = gen_lib.GeneratorConfig(kind=kind, length=T, latent_dim=Z, bos_id=V - 1, mlp_hidden=(8,))
  model = gen_lib.make_generator(cfg, LM_CFG, rngs=nnx.Rngs(seed))
  if kind == "gpt2":  # the latent projection is zero at init; give it weights so z matters in these tests
    model.latent.kernel[...] = jax.random.normal(jax.random.key(seed + 1), model.latent.kernel[...].shape) * 0.5
  return nnx.split(model, nnx.Param)[1]


def _generator(kind="gpt2", forbidden=()):
  cfg = gen_lib.GeneratorConfig(kind=kind, length=T, latent_dim=Z, bos_id=V - 1, forbidden_ids=forbidden,
                                mlp_hidden=(8,))
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: gen_lib.make_generator(cfg, LM_CFG, rngs=nnx.Rngs(0))), nnx.Param)
  return nnx.merge(graphdef, jax.tree.map(lambda x: x, _params(kind)))


def _z(seed=0):
  return jax.random.normal(jax.random.key(seed), (B, Z))


def _run(g, z, key, tau, temperature=1.0):
  """g(z, key, tau) under jit (eager op-by-op decoding is slow)."""
  graphdef, params = nnx.split(g, nnx.Param)
  fn = jax.jit(lambda p, z, k, t, temp: nnx.merge(graphdef, p)(z, k, t, temperature=temp),
               compiler_options=FAST_COMPILE)
  return fn(params, z, key, tau, temperature)


@pytest.mark.parametrize("kind", ["gpt2", "mlp"])
def test_outputs_are_one_hot_with_ids_at_argmax(kind):
  g = _generator(kind)
  y, ids, logits = _run(g, _z(), jax.random.key(1), 0.5)
  assert y.shape == (B, T, V) and ids.shape == (B, T) and logits.shape == (B, T, V)
  y = np.asarray(y)
  assert set(np.unique(y)) <= {0.0, 1.0}
  np.testing.assert_array_equal(y.sum(-1), 1.0)
  np.testing.assert_array_equal(y.argmax(-1), np.asarray(ids))


@pytest.mark.parametrize("kind", ["gpt2", "mlp"])
def test_forbidden_ids_are_never_drawn(kind):
  g = _generator(kind, forbidden=(V - 1, 0))
  _, ids, _ = _run(g, jax.random.normal(jax.random.key(0), (64, Z)), jax.random.key(2), 1.0)
  ids = np.asarray(ids)
  assert not np.isin(ids, [0, V - 1]).any()


def test_cached_decoding_matches_a_full_forward_pass_over_the_fed_back_tokens():
  """The logits of step t equal GPT-2 run once, without cache, on [E[bos] + Wz, y_1 E, ..., y_{T-1} E]."""
  g = _generator()
  y, _, logits = _run(g, _z(), jax.random.key(3), 0.7)
  lm = g.lm
  x0 = lm.embed(jnp.full((B, 1), V - 1), jnp.zeros((1,), jnp.int32)) + g.latent(_z())[:, None]
  rest = lm.embed(y[:, :-1], jnp.arange(1, T))
  h, _ = lm.backbone(jnp.concatenate([x0, rest], axis=1), jnp.arange(T))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(lm.logits(h)), rtol=1e-4, atol=1e-5)


def test_soft_decoding_gradient_matches_finite_differences():
  """With hard=False the decoder is smooth; autodiff through the cache and the fed-back y_t @ E agrees with
  central differences, so no path (in particular the soft-embedding feedback) is cut."""
  g = _generator()
  graphdef, params = nnx.split(g, nnx.Param)
  weights = jax.random.normal(jax.random.key(5), (B, T, V))
  key = jax.random.key(4)

  @jax.jit
  def loss(p):  # fp32 at XLA's default optimisation: central differences need the precision
    y, _, _ = nnx.merge(graphdef, p)(_z(), key, 1.5, hard=False)
    return jnp.sum(weights[:, 1:] * y[:, 1:])

  grads = jax.grad(loss)(params)
  emb = params["lm"]["wte"]["embedding"][...]
  direction = jax.random.normal(jax.random.key(6), emb.shape)
  direction = direction / jnp.linalg.norm(direction)  # a unit step keeps the O(h^2) error of central differences small
  h = 1e-2

  def shifted(sign):
    p = jax.tree.map(lambda x: x, params)
    p["lm"]["wte"]["embedding"] = nnx.Param(emb + sign * h * direction)
    return loss(p)

  fd = (shifted(+1) - shifted(-1)) / (2 * h)
  ad = jnp.sum(grads["lm"]["wte"]["embedding"][...] * direction)
  np.testing.assert_allclose(float(ad), float(fd), rtol=2e-2, atol=1e-4)


def test_straight_through_gradient_reaches_embedding_and_latent():
  g = _generator()
  graphdef, params = nnx.split(g, nnx.Param)
  weights = jax.random.normal(jax.random.key(7), (B, T, V))

  def loss(p):
    y, _, _ = nnx.merge(graphdef, p)(_z(), jax.random.key(8), 0.5, hard=True)
    return jnp.sum(weights * y)

  grads = jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)(params)
  for path in (("lm", "wte", "embedding"), ("latent", "kernel")):
    leaf = grads
    for name in path:
      leaf = leaf[name]
    leaf = np.asarray(leaf[...])
    assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0, path


def test_zero_latent_generator_starts_as_the_lm_it_was_initialised_from():
  cfg = gen_lib.GeneratorConfig(length=T, latent_dim=Z, bos_id=V - 1)
  g = gen_lib.GPT2Generator(cfg, LM_CFG, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(g, nnx.Param)
  lm = gpt2.GPT2(LM_CFG, rngs=nnx.Rngs(42))
  lm_params = nnx.split(lm, nnx.Param)[1]
  params = gen_lib.inject_lm_params(graphdef, params, lm_params)
  g2 = nnx.merge(graphdef, params)
  _, _, logits = _run(g2, _z(), jax.random.key(0), 1.0)
  first = jax.jit(lambda x: lm(x))(jnp.full((B, 1), V - 1))[:, 0]
  np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(first), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(gen_lib.lm_params(params)["wte"]["embedding"][...]),
                                np.asarray(lm_params["wte"]["embedding"][...]))


def test_temperature_scales_the_logits_tokens_are_drawn_from():
  g = _generator()
  _, _, l1 = _run(g, _z(), jax.random.key(0), 1.0, temperature=1.0)
  _, _, l2 = _run(g, _z(), jax.random.key(0), 1.0, temperature=2.0)
  np.testing.assert_allclose(np.asarray(l2[:, 0]), np.asarray(l1[:, 0]) / 2, rtol=1e-5, atol=1e-6)


def test_bad_configs_are_input_errors():
  with pytest.raises(InputError, match="generator='lstm' is unknown"):
    gen_lib.GeneratorConfig(kind="lstm")
  with pytest.raises(InputError, match="length=0"):
    gen_lib.GeneratorConfig(length=0)
  with pytest.raises(InputError, match="exceeds model.max_len"):
    nnx.eval_shape(lambda: gen_lib.GPT2Generator(gen_lib.GeneratorConfig(length=9), LM_CFG, rngs=nnx.Rngs(0)))
