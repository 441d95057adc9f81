"""LM objective: loss numerics, overfit, eval sums, and 8-device sharding equal to one device."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtextgan import losses, training
from jaxtextgan import sharding as shd
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import lm


def opt_cfg(steps=30, lr=1e-2):
  return ml_collections.ConfigDict(dict(lr=lr, total_steps=steps, warmup_steps=2, grad_clip_norm=1.0,
                                        weight_decay=0.01))


def batch(rows=8, t=16, vocab=64, seed=0):
  ids = np.random.RandomState(seed).randint(0, vocab, (rows, t + 1)).astype(np.int32)
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


def test_cross_entropy_and_accuracy_match_numpy():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 3, 5).astype(np.float32)
  targets = rng.randint(0, 5, (2, 3))
  mask = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  total, count = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  np.testing.assert_allclose(float(total), (nll * mask).sum(), rtol=1e-5)
  assert float(count) == 4
  hits = ((logits.argmax(-1) == targets) * mask).sum()
  assert float(losses.correct_predictions(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))) == hits


def test_schedule_warmup_then_cosine():
  sched = training.learning_rate_schedule(1.0, total_steps=110, warmup_steps=10, end_fraction=0.1)
  assert float(sched(0)) == 0.0
  assert abs(float(sched(10)) - 1.0) < 1e-6
  assert abs(float(sched(110)) - 0.1) < 1e-6
  assert float(sched(60)) < 1.0


def test_overfit_one_batch():
  cfg = gpt2.preset("tiny", vocab_size=64, dropout=0.0)
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  state, shardings = lm.init_state(cfg, opt_cfg(60, 1e-2), jax.random.key(0), mesh)
  step = training.jit_step(lm.train_step, mesh, shardings, {k: shd.batch_sharding(mesh) for k in batch()})
  b = shd.put_batch(batch(), mesh)
  first = None
  for _ in range(60):
    state, metrics = step(state, b, jax.random.key(1))
    first = float(metrics["loss"]) if first is None else first
  assert float(metrics["loss"]) < 0.3 * first
  assert int(state.step) == 60


def test_eval_step_sums_are_exact_with_padding_rows():
  cfg = gpt2.preset("tiny", vocab_size=64, dropout=0.0)
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  state, _ = lm.init_state(cfg, opt_cfg(), jax.random.key(0), mesh)
  b = batch(rows=4)
  full = lm.eval_step(state, {k: jnp.asarray(v) for k, v in b.items()})
  padded = {k: np.concatenate([v, np.zeros_like(v[:2])]) for k, v in b.items()}
  padded["mask"] = np.array([1, 1, 1, 1, 0, 0], bool)
  out = lm.eval_step(state, {k: jnp.asarray(v) for k, v in padded.items()})
  assert float(out["count"]) == 4 * 16
  np.testing.assert_allclose(float(out["nll_sum"]), float(full["nll_sum"]), rtol=1e-5)
  summary = lm.summarize_eval(out)
  assert abs(summary["perplexity"] - np.exp(float(out["nll_sum"]) / 64)) < 1e-3


def _two_steps(cfg, shape):
  mesh = shd.make_mesh(shape, jax.devices()[:int(np.prod(shape))])
  # Adam's eps at 1e-3: a gradient that is zero up to rounding (bf16 sums in another order on another mesh) must
  # not move its weight by a whole +-lr; with eps 1e-8 the sign of that rounding noise decides the update.
  opt = opt_cfg()
  opt.eps = 1e-3
  state, shardings = lm.init_state(cfg, opt, jax.random.key(0), mesh)
  step = training.jit_step(lm.train_step, mesh, shardings, {k: shd.batch_sharding(mesh) for k in batch()})
  for i in range(2):
    state, metrics = step(state, shd.put_batch(batch(seed=i), mesh), jax.random.key(3))
  return float(metrics["loss"]), jax.device_get(state.params)


_SINGLE = {}


@pytest.mark.parametrize("position,scan_layers,mesh_shape,dtype", [
  ("learned", True, (2, 2, 2), "float32"), ("learned", True, (1, 1, 8), "float32"),
  ("relative", True, (1, 2, 4), "float32"), ("learned", False, (2, 2, 2), "bfloat16")])
def test_sharded_step_equals_single_device(position, scan_layers, mesh_shape, dtype):
  cfg = gpt2.GPT2Config(vocab_size=64, max_len=32, n_layer=2, d_model=32, n_head=4, d_ff=64, dropout=0.1,
                        position=position, scan_layers=scan_layers, dtype=dtype)
  key = (position, scan_layers, dtype)
  if key not in _SINGLE:
    _SINGLE[key] = _two_steps(cfg, (1, 1, 1))
  (loss_1, params_1), (loss_n, params_n) = _SINGLE[key], _two_steps(cfg, mesh_shape)
  # bf16: a sharded matmul sums its fp32 partial products in another order before the rounding to bf16.
  loss_tol, param_tol = (1e-5, 2e-5) if dtype == "float32" else (1e-3, 1e-3)  # measured: 5e-7 and 1.3e-4
  assert abs(loss_1 - loss_n) < loss_tol
  for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_n)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=param_tol)


def test_params_are_actually_sharded_on_2x2x2():
  cfg = gpt2.GPT2Config(vocab_size=64, max_len=32, n_layer=2, d_model=32, n_head=4, d_ff=64)
  mesh = shd.make_mesh((2, 2, 2))
  state, _ = lm.init_state(cfg, opt_cfg(), jax.random.key(0), mesh)
  fc = state.params["blocks"]["mlp"]["fc"]["kernel"].get_value()
  assert fc.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  q = state.params["blocks"]["attn"]["query"]["kernel"].get_value()
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  # AdamW moments follow their parameters (FSDP shards optimizer state too).
  mu = state.opt_state[1][0].mu["blocks"]["mlp"]["fc"]["kernel"].get_value()
  assert mu.sharding.spec == fc.sharding.spec
  # Unrolled blocks have no layer axis; each block's kernels take the same rules.
  unrolled, _ = lm.init_state(cfg.replace(scan_layers=False), opt_cfg(), jax.random.key(0), mesh)
  fc1 = unrolled.params["blocks"][1]["mlp"]["fc"]["kernel"].get_value()
  assert fc1.shape == (32, 64) and fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_loss_chunk_gives_the_same_loss_metrics_and_gradients():
  """model.loss_chunk only changes how many logits exist at once: loss, sums and gradients equal the whole-sequence
  loss, with dropout on (the same keys) and a padding mask."""
  from flax import nnx
  cfg = gpt2.preset("tiny", vocab_size=64, max_len=16)
  b = {k: jnp.asarray(v) for k, v in batch().items()}
  b["mask"] = jnp.asarray(np.arange(16)[None, :] < np.array([[16]] * 6 + [[9]] * 2)).astype(jnp.float32)

  def loss_and_grads(model_cfg):
    graphdef, params = nnx.split(gpt2.GPT2(model_cfg, rngs=nnx.Rngs(0)), nnx.Param)
    return jax.jit(jax.value_and_grad(lambda p: lm.lm_loss(p, graphdef, b, jax.random.key(5)), has_aux=True))(params)

  (loss, sums), grads = loss_and_grads(cfg)
  (loss_c, sums_c), grads_c = loss_and_grads(cfg.replace(loss_chunk=4))
  np.testing.assert_allclose(float(loss_c), float(loss), rtol=1e-6)
  assert [float(x) for x in sums_c[1:]] == [float(x) for x in sums[1:]]
  for a, c in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_c)):
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="loss_chunk=-1 is negative"):
    cfg.replace(loss_chunk=-1)
