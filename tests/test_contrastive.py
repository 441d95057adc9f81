"""The contrastive Stage (SetFit's first stage in JAX): loss against NumPy, pair batches, a tiny overfit, the same
step on 8 devices as on one, and an exact resume through `stage.run_stage`."""

import jax
import numpy as np
import pytest

from jaxtextgan import sharding as shd
from jaxtextgan import stage, training
from jaxtextgan.data.classification import Encoded
from jaxtextgan.data.pairs import pair_batches, pair_batch_at, pair_indices
from jaxtextgan.errors import InputError
from jaxtextgan.models import bert
from jaxtextgan.objectives import contrastive

TINY = bert.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, max_position_embeddings=40)
OPT = dict(lr=3e-3, total_steps=40, warmup_steps=0, schedule="linear", end_lr_fraction=0.0, weight_decay=0.01,
           grad_clip_norm=1.0)
FAST = {"xla_backend_optimization_level": 0}


def test_cosine_pair_loss_matches_numpy():
  rng = np.random.default_rng(0)
  u, v = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
  same = np.array([1, 0, 1, 1, 0, 0], np.int32)
  cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
  loss, aux = contrastive.cosine_pair_loss(u, v, same)
  np.testing.assert_allclose(loss, np.mean((cos - same) ** 2), rtol=1e-5)
  np.testing.assert_allclose(aux["cos_same"], cos[same == 1].mean(), rtol=1e-5)
  np.testing.assert_allclose(aux["cos_different"], cos[same == 0].mean(), rtol=1e-5)
  # A zero vector gives cos 0, not NaN.
  zero_loss, _ = contrastive.cosine_pair_loss(np.zeros((1, 5), np.float32), v[:1], np.ones(1, np.int32))
  assert float(zero_loss) == pytest.approx(1.0)


def _encoded(labels, t=8, seed=0):
  rng = np.random.default_rng(seed)
  n = len(labels)
  mask = np.ones((n, t), np.int32)
  for i in range(n):
    mask[i, 2 + i % (t - 2):] = 0
  return Encoded(rng.integers(5, 64, (n, t)).astype(np.int32), mask, np.asarray(labels, np.int32))


def test_pairs_are_half_positive_never_self_and_never_unlabeled():
  labels = np.array([0, 0, 0, 1, 1, 2, -1, -1, 3], np.int32)  # class 2 and 3 have one row each
  pairs, same = pair_indices(labels, 16, np.random.default_rng(0))
  assert pairs.shape == (16, 2) and same.tolist() == [1] * 8 + [0] * 8
  assert (labels[pairs] >= 0).all() and (pairs[:, 0] != pairs[:, 1]).all()
  assert (labels[pairs[:8, 0]] == labels[pairs[:8, 1]]).all() and (labels[pairs[8:, 0]] != labels[pairs[8:, 1]]).all()
  assert not np.isin(pairs[:8], [5, 8]).any()  # singletons have no positive pair
  # No class with two rows: every pair negative; one class: every pair positive.
  assert pair_indices(np.array([0, 1, 2]), 6, np.random.default_rng(0))[1].tolist() == [0] * 6
  assert pair_indices(np.array([4, 4, -1]), 6, np.random.default_rng(0))[1].tolist() == [1] * 6


def test_pair_batches_are_a_pure_function_of_seed_and_step_and_resume():
  enc = _encoded([0, 0, 1, 1, 2, 2, -1])
  batch = pair_batch_at(enc, 3, 4, seed=5, pad_multiple=4)
  assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[:2] == (4, 2)
  assert batch["input_ids"].shape[2] % 4 == 0 and batch["same"].tolist() == [1, 1, 0, 0]
  it = pair_batches(enc, 4, 5, 4)
  first = [next(it) for _ in range(4)]
  resumed = pair_batches(enc, 4, 5, 4)
  resumed.restore({"step": 3})
  np.testing.assert_array_equal(next(resumed)["input_ids"], first[3]["input_ids"])
  assert not np.array_equal(first[0]["input_ids"], first[1]["input_ids"])
  with pytest.raises(InputError, match="at least two labeled rows"):
    pair_batches(_encoded([0, -1, -1]), 4, 0, 4)


def _program(mesh):
  make_state = contrastive.make_state_fn(TINY, OPT)
  _, shardings = training.abstract_state(make_state, jax.random.key(0), mesh)
  batch_sh = {"input_ids": shd.batch_sharding(mesh, 3), "attention_mask": shd.batch_sharding(mesh, 3),
              "same": shd.batch_sharding(mesh, 1)}
  step = training.jit_step(contrastive.make_step("mean"), mesh, shardings, batch_sh, donate=False,
                           compiler_options=FAST)
  return jax.jit(make_state, out_shardings=shardings)(jax.random.key(0)), step


def test_tiny_overfit_pulls_classmates_together_and_pushes_others_apart():
  enc = _encoded([0, 0, 0, 1, 1, 1, 2, 2])
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  state, step = _program(mesh)
  rng = jax.random.key(1)
  first = None
  for s in range(40):
    state, metrics = step(state, pair_batch_at(enc, s, 8, seed=0, pad_multiple=0), rng)
    first = first or {k: float(v) for k, v in metrics.items()}
  assert float(metrics["loss"]) < 0.3 * first["loss"], (first, metrics)
  assert float(metrics["cos_same"]) > 0.8 and float(metrics["cos_different"]) < first["cos_different"] - 0.3
  assert first["grad_norm"] > 0


def test_step_on_eight_devices_equals_one_device():
  assert len(jax.devices()) == 8, "conftest.py makes 8 CPU devices"
  batch = pair_batch_at(_encoded([0, 0, 1, 1, 2, 2, 0, 1]), 0, 8, seed=0, pad_multiple=0)
  results = []
  for shape in ((1, 1, 1), (4, 2, 1)):
    mesh = shd.make_mesh(shape, jax.devices()[:8] if shape[0] > 1 else jax.devices()[:1])
    state, step = _program(mesh)
    new, metrics = step(state, shd.put_batch(batch, mesh), jax.random.key(3))
    results.append((float(metrics["loss"]), jax.tree.map(np.asarray, jax.device_get(new.params))))
  assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), results[0][1], results[1][1])


# One initialiser and step for every Stage below, so `training.jit_step` compiles the step once.
_STAGE_INIT, _STAGE_STEP = contrastive.make_state_fn(TINY, dict(OPT, total_steps=6)), contrastive.make_step("mean")


def _stage(directory, steps, enc):
  return stage.Stage(name="contrastive", init=_STAGE_INIT, steps=(_STAGE_STEP,),
                     batches=lambda: pair_batches(enc, 4, 0, 4),
                     batch_spec=stage.int_batch(input_ids=(4, 2, 8), attention_mask=(4, 2, 8), same=(4,)),
                     num_steps=steps, seed=0, rng_seed=1, directory=directory, checkpoint_every=2, log_every=1,
                     compiler_options=FAST, tensorboard=False, show_progress=False)


def test_stage_resumes_exactly_and_a_finished_stage_is_restored(tmp_path, capsys):
  enc = _encoded([0, 0, 1, 1, 2, 2])
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  whole = stage.run_stage(_stage(tmp_path / "whole", 6, enc), mesh)
  stage.run_stage(_stage(tmp_path / "parts", 3, enc), mesh)
  parts = stage.run_stage(_stage(tmp_path / "parts", 6, enc), mesh)
  assert "at step 3" in capsys.readouterr().out
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(whole.state.params), jax.device_get(parts.state.params))
  again = stage.run_stage(_stage(tmp_path / "whole", 6, enc), mesh)
  assert "skipped" in capsys.readouterr().out
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(whole.state.params), jax.device_get(again.state.params))
