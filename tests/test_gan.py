"""The GAN objective: tau schedules, separated player updates, the fused train step, sharding invariance,
checkpointing the one state pytree, and bad options."""

import concurrent.futures
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtextgan import checkpoint, training
from jaxtextgan import sharding as shd
from jaxtextgan.errors import InputError
from jaxtextgan.models import discriminator as disc_lib
from jaxtextgan.models import generator as gen_lib
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import gan

V, T, B, Z = 16, 5, 8, 4
LM_CFG = gpt2.GPT2Config(vocab_size=V, max_len=8, n_layer=1, d_model=16, n_head=2, d_ff=32, dropout=0.0)
GEN_CFG = gen_lib.GeneratorConfig(length=T, latent_dim=Z, bos_id=V - 1, forbidden_ids=(V - 1,))
# The CNN critic compiles in about half the time of the transformer one (the step's compilation dominates these
# tests); the transformer critic, with the gradient penalty through it, runs in tests/test_gan_tasks.py.
DISC_CFG = disc_lib.DiscriminatorConfig(kind="cnn", vocab_size=V, max_len=T, d_model=16, widths=(2, 3), filters=8,
                                        dropout=0.0)
# A large Adam eps makes the update a smooth function of the gradient, so sharded and unsharded runs (whose
# reductions round differently) give close parameters rather than sign flips of near-zero gradients.
OPT = dict(lr=1e-2, total_steps=10, warmup_steps=0, schedule="constant", b1=0.5, b2=0.9, eps=1e-2, grad_clip_norm=0.0)


def _cfg(loss, n_critic=1):
  return gan.GANConfig(loss=loss, n_critic=n_critic, batch_size=B, tau=gan.TauSchedule("exponential", 1.0, 0.5, 10))


def _mesh(shape):
  n = math.prod(shape)
  return shd.make_mesh(shape, jax.devices()[:n])


def _init(shape=(1, 1, 1)):
  """(mesh, state, shardings); other meshes get the one-device state re-laid out (one init compilation)."""
  return _init_cached(tuple(shape))


@functools.lru_cache(maxsize=None)
def _init_cached(shape):
  mesh = _mesh(shape)
  if shape == (1, 1, 1):
    state, shardings = training.init_sharded_state(gan.make_state_fn(GEN_CFG, LM_CFG, DISC_CFG, OPT, OPT),
                                                   jax.random.key(0), mesh)
    return mesh, state, shardings
  base = _init()[1]
  shardings = shd.state_shardings(jax.eval_shape(lambda: base), mesh)
  return mesh, jax.jit(lambda s: s, out_shardings=shardings)(jax.device_get(base)), shardings


def _real(n_critic=1):
  return np.asarray(jax.random.randint(jax.random.key(1), (B, n_critic, T), 0, V - 1), np.int32)


def _copy(tree):
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def _same(a, b):
  return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


# --- tau schedule ------------------------------------------------------------------------------------------------


def test_tau_schedules_are_pure_functions_of_the_step():
  const = gan.TauSchedule("constant", 0.7, 0.1, 100)
  lin = gan.TauSchedule("linear", 1.0, 0.2, 100)
  exp = gan.TauSchedule("exponential", 1.0, 0.01, 100)
  for step in (0, 50, 100, 150):
    assert float(gan.tau_at(step, const)) == pytest.approx(0.7)
  assert [float(gan.tau_at(s, lin)) for s in (0, 50, 100, 150)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
  assert [float(gan.tau_at(s, exp)) for s in (0, 50, 100, 150)] == pytest.approx([1.0, 0.1, 0.01, 0.01], rel=1e-5)
  jitted = jax.jit(lambda s: gan.tau_at(s, exp))
  assert float(jitted(jnp.int32(50))) == pytest.approx(0.1, rel=1e-5)


def test_bad_gan_options_are_input_errors():
  with pytest.raises(InputError, match="zero tau"):
    gan.TauSchedule("linear", 1.0, 0.0, 10)
  with pytest.raises(InputError, match="zero tau"):
    gan.TauSchedule("constant", 0.0, 1.0, 10)
  with pytest.raises(InputError, match="tau schedule 'cosine' is unknown"):
    gan.TauSchedule("cosine", 1.0, 0.5, 10)
  with pytest.raises(InputError, match="gan loss='hinge' is unknown"):
    gan.GANConfig(loss="hinge")
  with pytest.raises(InputError, match="n_critic=0"):
    gan.GANConfig(n_critic=0)


# --- player separation and the fused step ------------------------------------------------------------------------
# Compiling a step dominates these tests, so each jitted function is built once per (loss, mesh) and shared.

N_CRITIC = {"minimax": 1, "wgan-gp": 2}


def _compile_all(lowered):
  """Compiles lowered functions two at a time (XLA compiles on one core; the machine has two)."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    return list(pool.map(lambda low: low.compile(), lowered))


@functools.lru_cache(maxsize=None)
def _player_steps(loss):
  """Compiled (d_step, g_step) on one device."""
  _, state, _ = _init()
  d_step, g_step, _ = gan.make_steps(_cfg(loss, N_CRITIC[loss]), Z)
  fast = functools.partial(jax.jit, compiler_options=training.FAST_COMPILE)
  real = jnp.asarray(_real()[:, 0])
  return tuple(_compile_all([fast(d_step).lower(state, real, jax.random.key(0)),
                             fast(g_step).lower(state, jax.random.key(0))]))


_TRAIN_STEPS = {}


def _train_steps(loss, shapes):
  """Compiled train steps on the given meshes (cached per (loss, mesh))."""
  todo = [shape for shape in shapes if (loss, shape) not in _TRAIN_STEPS]
  lowered = []
  for shape in todo:
    mesh, state, shardings = _init(shape)
    _, _, train_step = gan.make_steps(_cfg(loss, N_CRITIC[loss]), Z, mesh)
    jitted = training.jit_step(train_step, mesh, shardings, {"real": shd.batch_sharding(mesh, 3)}, donate=False,
                               compiler_options=training.FAST_COMPILE)
    lowered.append(jitted.lower(state, shd.put_batch({"real": _real(N_CRITIC[loss])}, mesh), jax.random.key(0)))
  _TRAIN_STEPS.update({(loss, shape): fn for shape, fn in zip(todo, _compile_all(lowered))})
  return [_TRAIN_STEPS[(loss, shape)] for shape in shapes]


@pytest.mark.parametrize("loss", ["minimax", "wgan-gp"])
def test_each_update_leaves_the_other_player_bitwise_unchanged(loss):
  _, state, _ = _init()
  d_step, g_step = _player_steps(loss)
  real = jnp.asarray(_real()[:, 0])
  after_d, d_metrics = d_step(state, real, jax.random.key(2))
  assert _same(after_d.g.params, state.g.params) and _same(after_d.g.opt_state, state.g.opt_state)
  assert not _same(after_d.d.params, state.d.params)
  after_g, g_metrics = g_step(state, jax.random.key(3))
  assert _same(after_g.d.params, state.d.params) and _same(after_g.d.opt_state, state.d.opt_state)
  assert not _same(after_g.g.params, state.g.params)
  assert np.isfinite(float(d_metrics["d_loss"])) and np.isfinite(float(g_metrics["g_loss"]))
  if loss == "minimax":  # D starts near chance: eq. (4) ~ 2 log 2, eq. (5) ~ log 2
    assert float(d_metrics["d_loss"]) == pytest.approx(2 * math.log(2), abs=0.1)
    assert float(g_metrics["g_loss"]) == pytest.approx(math.log(2), abs=0.1)
  else:
    assert float(d_metrics["gp"]) >= 0 and "wasserstein" in d_metrics


@pytest.mark.parametrize("loss", ["minimax", "wgan-gp"])
def test_critic_steps_learn_to_separate_real_from_generated_sequences(loss):
  """D must actually learn from its steps: real rows repeat one token and G's (random) rows do not, so a few dozen
  critic steps separate them. A lost D update, a gradient that misses D, or real and fake reaching D the same way
  would leave D at chance (d_real = d_fake); 30 steps of lr 1e-2 reach a gap of about 0.5."""
  _, state, _ = _init()
  d_step, _ = _player_steps(loss)
  real = jnp.full((B, T), 3, jnp.int32)
  first = None
  for i in range(30):
    state, metrics = d_step(state, real, jax.random.key(10 + i))
    first = first or metrics
  gap = lambda m: float(m["d_real"]) - float(m["d_fake"])  # sigmoid probabilities (minimax) or critic scores
  assert abs(gap(first)) < 0.2 and gap(metrics) > 0.3, (gap(first), gap(metrics))


@pytest.mark.parametrize("loss", ["minimax", "wgan-gp"])
def test_train_step_is_n_critic_d_steps_then_a_g_step(loss):
  """The fused step (one G forward shared by the last critic step and G's VJP) computes the sequential updates."""
  _, state, _ = _init()
  n_critic = N_CRITIC[loss]
  d_step, g_step = _player_steps(loss)
  real = _real(n_critic)
  rng = jax.random.key(4)
  (train_step,) = _train_steps(loss, [(1, 1, 1)])
  fused, metrics = train_step(state, shd.put_batch({"real": real}, _init()[0]), rng)
  reference = state
  step_key = jax.random.fold_in(rng, state.step)
  for i in range(n_critic):
    reference, _ = d_step(reference, jnp.asarray(real[:, i]), jax.random.fold_in(step_key, i))
  reference, _ = g_step(reference, jax.random.fold_in(step_key, n_critic - 1))
  assert int(fused.step) == 1 and int(fused.d.step) == n_critic and int(fused.g.step) == 1
  _close(fused.d.params, reference.d.params, 1e-6)
  _close(fused.g.params, reference.g.params, 1e-6)
  assert float(metrics["tau"]) == pytest.approx(1.0)
  for key in ("d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm", "g_entropy"):
    assert np.isfinite(float(metrics[key])), key
  if loss == "wgan-gp":
    assert np.isfinite(float(metrics["gp"]))


@pytest.mark.parametrize("loss", ["minimax", "wgan-gp"])
def test_sharded_steps_match_one_device(loss):
  """Meshes (2,2,2) and (1,2,4) give the losses and parameters of one device after two steps. (Plain data
  parallelism, (8,1,1), is the data axis of (2,2,2) alone: the suite's time goes to the meshes that add axes.)"""
  results = {}
  shapes = [(1, 1, 1), (2, 2, 2), (1, 2, 4)]
  for shape, step in zip(shapes, _train_steps(loss, shapes)):
    mesh, state, _ = _init(shape)
    history = []
    for _ in range(2):
      state, metrics = step(state, shd.put_batch({"real": _real(N_CRITIC[loss])}, mesh), jax.random.key(5))
      history.append({k: float(v) for k, v in metrics.items()})
    results[shape] = (jax.device_get(state.g.params), jax.device_get(state.d.params), history)
  ref_g, ref_d, ref_history = results[(1, 1, 1)]
  for shape, (g_params, d_params, history) in results.items():
    for ref, got in zip(ref_history, history):
      for key in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert got[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), (shape, key)
    _close(g_params, ref_g, 1e-4)  # 1% of one lr=1e-2 step
    _close(d_params, ref_d, 1e-4)


def test_gan_state_is_checkpointed_as_one_pytree(tmp_path):
  mesh, state, shardings = _init()
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", async_save=False)
  ckpt.save(3, state, {"objective": "gan"})
  ckpt.wait()
  fresh = jax.tree.map(jnp.zeros_like, state)
  restored, meta, step = ckpt.restore_latest(fresh)
  ckpt.close()
  assert step == 3 and meta["objective"] == "gan"
  assert isinstance(restored, gan.GANState)
  assert _same(restored, state)
  assert restored.g.graphdef == state.g.graphdef and restored.d.tx is state.d.tx
