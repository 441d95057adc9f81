"""GPT-2 model: shapes, causality, KV cache, soft inputs, Gopher options, bf16, remat."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtextgan.models import gpt2

GOPHER = list(itertools.product(["layernorm", "rmsnorm"], ["learned", "relative"]))


def tiny(**kw):
  return gpt2.preset("tiny", **{"vocab_size": 37, "dropout": 0.0, **kw})


@pytest.mark.parametrize("norm,position", GOPHER)
def test_shapes_and_causality(norm, position):
  model = gpt2.GPT2(tiny(norm=norm, position=position), rngs=nnx.Rngs(0))
  ids = jax.random.randint(jax.random.key(1), (2, 12), 0, 37)
  logits = model(ids)
  assert logits.shape == (2, 12, 37) and logits.dtype == jnp.float32
  changed = ids.at[:, 7:].set((ids[:, 7:] + 5) % 37)
  after = model(changed)
  np.testing.assert_array_equal(np.asarray(after[:, :7]), np.asarray(logits[:, :7]))
  assert not np.allclose(np.asarray(after[:, 7:]), np.asarray(logits[:, 7:]))


@pytest.mark.parametrize("position", ["learned", "relative"])
def test_kv_cache_decoding_equals_full_forward(position):
  model = gpt2.GPT2(tiny(position=position), rngs=nnx.Rngs(0))
  ids = jax.random.randint(jax.random.key(2), (3, 9), 0, 37)
  full = model(ids)
  cache = model.init_cache(3, 9)
  prefix, cache = model(ids[:, :4], cache=cache, cache_index=0)
  steps = [prefix]
  for t in range(4, 9):
    out, cache = model(ids[:, t:t + 1], cache=cache, cache_index=t)
    steps.append(out)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, 1)), np.asarray(full), atol=1e-5)


def test_soft_one_hot_inputs_equal_ids_and_differentiate_to_embedding():
  model = gpt2.GPT2(tiny(), rngs=nnx.Rngs(0))
  ids = jax.random.randint(jax.random.key(3), (2, 6), 0, 37)
  np.testing.assert_allclose(np.asarray(model(jax.nn.one_hot(ids, 37))), np.asarray(model(ids)), atol=1e-5)
  graphdef, params = nnx.split(model)

  def loss(p, probs):
    return nnx.merge(graphdef, p)(probs).mean()

  probs = jax.nn.softmax(jax.random.normal(jax.random.key(4), (2, 6, 37)))
  g_params, g_probs = jax.grad(loss, argnums=(0, 1))(params, probs)
  assert float(jnp.abs(g_probs).sum()) > 0
  assert float(jnp.abs(g_params["wte"]["embedding"].get_value()).sum()) > 0


@pytest.mark.parametrize("norm,position", GOPHER)
def test_tiny_overfit_loss_falls(norm, position):
  cfg = tiny(norm=norm, position=position)
  model = gpt2.GPT2(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  ids = jax.random.randint(jax.random.key(5), (4, 17), 0, 37)
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(ids[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  losses = []
  for _ in range(60):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_bf16_compute_close_to_fp32():
  ids = jax.random.randint(jax.random.key(6), (2, 10), 0, 37)
  f32 = gpt2.GPT2(tiny(), rngs=nnx.Rngs(0))
  b16 = gpt2.GPT2(tiny(dtype="bfloat16"), rngs=nnx.Rngs(0))
  out = b16(ids)
  assert out.dtype == jnp.float32  # logits are always returned in fp32 for the loss
  assert np.max(np.abs(np.asarray(out) - np.asarray(f32(ids)))) < 0.1


def test_remat_gives_same_gradients():
  ids = jax.random.randint(jax.random.key(7), (2, 10), 0, 37)
  grads = []
  for remat in (False, True):
    graphdef, params = nnx.split(gpt2.GPT2(tiny(remat=remat, dropout=0.1), rngs=nnx.Rngs(0)))
    grads.append(jax.grad(lambda p: nnx.merge(graphdef, p)(ids, dropout_key=jax.random.key(1)).mean())(params))
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_dropout_key_changes_output_only_when_given():
  model = gpt2.GPT2(gpt2.preset("tiny", vocab_size=37, dropout=0.3), rngs=nnx.Rngs(0))
  ids = jnp.zeros((1, 5), jnp.int32)
  np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(model(ids)))
  assert not np.allclose(np.asarray(model(ids, dropout_key=jax.random.key(0))), np.asarray(model(ids)))


def test_presets_and_parameter_count():
  small = gpt2.preset("gpt2_small")
  assert (small.n_layer, small.d_model, small.n_head) == (12, 768, 12)
  deep = gpt2.preset("gpt2_24l")
  assert (deep.n_layer, deep.d_model) == (24, 1024)
  assert gpt2.preset("cpu_24l").n_layer == 24 and gpt2.preset("cpu_12l").n_layer == 12
  abstract = nnx.eval_shape(lambda: gpt2.GPT2(small, rngs=nnx.Rngs(0)))
  # GPT-2 small has 124,439,808 parameters with tied embeddings.
  assert gpt2.count_params(nnx.state(abstract, nnx.Param)) == 124_439_808


def test_invalid_config_and_too_long_sequence():
  with pytest.raises(ValueError, match="norm"):
    tiny(norm="batchnorm")
  with pytest.raises(ValueError, match="divisible"):
    gpt2.GPT2Config(d_model=30, n_head=4)
  model = gpt2.GPT2(tiny(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="exceeds max_len"):
    model(jnp.zeros((1, 65), jnp.int32))


def test_output_bias_shifts_logits():
  model = gpt2.GPT2(tiny(output_bias=True), rngs=nnx.Rngs(0))
  ids = jnp.zeros((1, 3), jnp.int32)
  before = model(ids)
  model.out_bias.set_value(model.out_bias.get_value().at[5].set(-30.0))
  after = model(ids)
  np.testing.assert_allclose(np.asarray(after[..., 5]), np.asarray(before[..., 5]) - 30.0, atol=1e-4)
