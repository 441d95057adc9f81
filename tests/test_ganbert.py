"""GAN-BERT objective: both losses against NumPy, masking, replication, update isolation, mesh equivalence."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtextgan import sharding as shd
from jaxtextgan import training
from jaxtextgan.data import classification as cls_data
from jaxtextgan.models import bert
from jaxtextgan.objectives import ganbert as gb

EPS = 1e-8


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_d_loss(real, fake, labels):
  """Section 2 with the release's eps, written out in NumPy; fake class last."""
  k = real.shape[1] - 1
  labeled = labels >= 0
  log_p = _log_softmax(real[:, :k])
  sup = -np.mean([log_p[i, labels[i]] for i in np.flatnonzero(labeled)]) if labeled.any() else 0.0
  unsup_real = -np.mean(np.log(1 - _softmax(real)[:, k] + EPS))
  unsup_fake = -np.mean(np.log(_softmax(fake)[:, k] + EPS))
  return sup + unsup_real + unsup_fake, sup, unsup_real, unsup_fake


def np_g_loss(fake, real_f, fake_f, reduce):
  k = fake.shape[1] - 1
  unsup = -np.mean(np.log(1 - _softmax(fake)[:, k] + EPS))
  diff = real_f.mean(0) - fake_f.mean(0)
  fm = np.mean(diff ** 2) if reduce == "mean" else np.sum(diff ** 2)
  return unsup + fm, unsup, fm


# Hand-made logits over k = 3 real classes + fake: confident, uncertain, and "looks fake" rows.
REAL = np.array([[4.0, 0.0, -1.0, -2.0],
                 [0.5, 0.4, 0.3, 0.2],
                 [-1.0, 3.0, 0.0, 2.5],
                 [0.0, 0.0, 5.0, -3.0],
                 [1.0, -1.0, 0.0, 6.0]], np.float32)
FAKE = np.array([[0.0, 0.0, 0.0, 3.0], [2.0, 1.0, 0.0, -1.0], [0.0, 0.5, 0.0, 0.0]], np.float32)
LABELS = np.array([0, -1, 1, -1, 2], np.int32)


def test_discriminator_loss_matches_numpy():
  loss, aux = gb.discriminator_loss(jnp.asarray(REAL), jnp.asarray(FAKE), jnp.asarray(LABELS))
  ref, sup, ur, uf = np_d_loss(REAL, FAKE, LABELS)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
  np.testing.assert_allclose([float(aux["d_sup"]), float(aux["d_unsup_real"]), float(aux["d_unsup_fake"])],
                             [sup, ur, uf], rtol=1e-6)
  assert float(aux["labeled"]) == 3


def test_unlabeled_rows_are_masked_out_of_the_supervised_term():
  """Changing the class logits of unlabeled rows (not their fake logit) leaves L_D,sup unchanged."""
  other = REAL.copy()
  other[LABELS < 0, :3] += np.array([7.0, -5.0, 2.0])
  _, a = gb.discriminator_loss(jnp.asarray(REAL), jnp.asarray(FAKE), jnp.asarray(LABELS))
  _, b = gb.discriminator_loss(jnp.asarray(other), jnp.asarray(FAKE), jnp.asarray(LABELS))
  assert float(a["d_sup"]) == pytest.approx(float(b["d_sup"]), rel=1e-7)
  assert float(a["d_unsup_real"]) != pytest.approx(float(b["d_unsup_real"]), rel=1e-3)  # still real rows
  # The mean is over labeled rows only: not diluted by the two unlabeled rows.
  per_row = -_log_softmax(REAL[:, :3])[[0, 2, 4], [0, 1, 2]]
  assert float(a["d_sup"]) == pytest.approx(per_row.mean(), rel=1e-6)
  # A batch without labels has no supervised term (and no NaN).
  loss, c = gb.discriminator_loss(jnp.asarray(REAL), jnp.asarray(FAKE), jnp.full((5,), -1, jnp.int32))
  assert float(c["d_sup"]) == 0.0 and np.isfinite(float(loss))


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_generator_loss_matches_numpy(reduce):
  rng = np.random.default_rng(0)
  real_f, fake_f = rng.normal(size=(5, 6)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
  loss, aux = gb.generator_loss(jnp.asarray(FAKE), jnp.asarray(real_f), jnp.asarray(fake_f), EPS, reduce)
  ref, unsup, fm = np_g_loss(FAKE, real_f, fake_f, reduce)
  np.testing.assert_allclose([float(loss), float(aux["g_unsup"]), float(aux["g_feature_matching"])],
                             [ref, unsup, fm], rtol=1e-6)


def test_feature_matching_compares_batch_means():
  """Zero when the means agree, even if the rows differ; the paper's squared L2 norm is d times the mean."""
  real_f = np.array([[1.0, 2.0], [3.0, 0.0]], np.float32)
  fake_f = np.array([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0]], np.float32)
  _, aux = gb.generator_loss(jnp.asarray(FAKE), jnp.asarray(real_f), jnp.asarray(fake_f))
  assert float(aux["g_feature_matching"]) == pytest.approx(0.0, abs=1e-7)
  fake_f = fake_f + np.array([1.0, -3.0], np.float32)
  _, mean = gb.generator_loss(jnp.asarray(FAKE), jnp.asarray(real_f), jnp.asarray(fake_f), EPS, "mean")
  _, total = gb.generator_loss(jnp.asarray(FAKE), jnp.asarray(real_f), jnp.asarray(fake_f), EPS, "sum")
  assert float(mean["g_feature_matching"]) == pytest.approx(5.0)
  assert float(total["g_feature_matching"]) == pytest.approx(10.0)


def test_class_probabilities_drop_the_fake_class():
  probs = np.asarray(gb.class_probabilities(jnp.asarray(REAL), 3))
  p = _softmax(REAL)
  np.testing.assert_allclose(probs, p[:, :3] / (1 - p[:, 3:]), rtol=1e-5)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("n_labeled,n_unlabeled,copies", [(109, 5343, 5), (10, 990, 6), (50, 50, 1), (4, 0, 1)])
def test_labeled_rows_are_replicated_log2_inverse_fraction(n_labeled, n_unlabeled, copies):
  """TREC's 109 of 5,452 (2%): int(log2(int(1/0.02))) = 5 copies; unlabeled rows once; baseline: no copies."""
  labeled = cls_data.Examples([f"l{i}" for i in range(n_labeled)], np.arange(n_labeled) % 3)
  unlabeled = cls_data.Examples([f"u{i}" for i in range(n_unlabeled)], np.full(n_unlabeled, -1))
  data = cls_data.ClassificationData(labeled, unlabeled, labeled, ("a", "b", "c"))
  train = cls_data.training_examples(data, "ganbert")
  counts = {t: train.texts.count(t) for t in set(train.texts)}
  assert all(counts[f"l{i}"] == copies for i in range(n_labeled))
  assert all(counts[f"u{i}"] == 1 for i in range(n_unlabeled))
  assert len(train) == copies * n_labeled + n_unlabeled
  assert (train.labels >= 0).sum() == copies * n_labeled
  assert len(cls_data.training_examples(data, "baseline")) == n_labeled


# ------------------------------------------------------------------------------------------ steps on a tiny BERT

TINY = bert.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, max_position_embeddings=40)
OPT = dict(lr=1e-3, total_steps=10, warmup_steps=0, schedule="linear", end_lr_fraction=0.0, weight_decay=0.01,
           grad_clip_norm=1.0)


def _batch(b=8, t=16, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones((b, t), np.int32)
  mask[1, 9:] = 0
  mask[5, 4:] = 0
  return {"input_ids": rng.integers(5, 64, (b, t)).astype(np.int32), "attention_mask": mask,
          "labels": np.array([0, -1, 2, -1, -1, 1, -1, 0][:b], np.int32)}


FAST = {"xla_backend_optimization_level": 0}  # compile time dominates tests of tiny models


def _program(mesh, cfg):
  """(state shardings, initialiser, {name: step}): the steps jitted as `stage.run_stage` jits them
  (`training.jit_step`), without donation, so a test can reuse a state."""
  make_state = gb.make_state_fn(TINY, cfg, OPT, OPT if cfg.method == "ganbert" else None)
  _, shardings = training.abstract_state(make_state, jax.random.key(0), mesh)
  batch_sh = {"input_ids": shd.batch_sharding(mesh, 2), "attention_mask": shd.batch_sharding(mesh, 2),
              "labels": shd.batch_sharding(mesh, 1)}
  d_step, g_step, _, _ = gb.make_steps(cfg, mesh)
  steps = {fn.__name__: training.jit_step(fn, mesh, shardings, batch_sh, donate=False, compiler_options=FAST)
           for fn in (d_step, g_step)}
  return shardings, jax.jit(make_state, out_shardings=shardings), steps


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, _host(a), _host(b))


def _changed(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(_host(a)), jax.tree.leaves(_host(b))))


CFG = gb.GanBertConfig(num_classes=3)


@pytest.fixture(scope="module")
def one_device():
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  _, init, steps = _program(mesh, CFG)
  return mesh, init(jax.random.key(0)), steps


def test_g_step_leaves_encoder_and_d_unchanged_and_d_step_leaves_g_unchanged(one_device):
  mesh, state, steps = one_device
  batch = shd.put_batch(_batch(), mesh)
  rng = jax.random.key(3)
  after_d, _ = steps["d_step"](state, batch, rng)
  _assert_same(after_d.g.params, state.g.params)
  _assert_same(after_d.g.opt_state, state.g.opt_state)
  assert _changed(after_d.d.params["encoder"], state.d.params["encoder"])  # the encoder is fine-tuned by L_D
  assert _changed(after_d.d.params["head"], state.d.params["head"])
  assert int(after_d.step) == int(state.step)

  after_g, _ = steps["g_step"](after_d, batch, rng)
  _assert_same(after_g.d.params, after_d.d.params)
  _assert_same(after_g.d.opt_state, after_d.d.opt_state)
  assert _changed(after_g.g.params, after_d.g.params)
  assert int(after_g.step) == int(state.step) + 1


def test_each_update_is_the_gradient_of_its_own_loss_alone(one_device):
  """No mixing: D-step's gradient in D's head is that of L_D alone (fakes held fixed), and G-step's gradient is
  that of L_G in G alone; neither adds the other player's loss (the PyTorch port back-propagates both into both).
  The reference recomputes both losses with the steps' own keys (same dropout masks and noise)."""
  mesh, state, steps = one_device
  host = _batch()
  batch = shd.put_batch(host, mesh)
  rng = jax.random.key(5)
  after_d, d_metrics = steps["d_step"](state, batch, rng)
  _, g_metrics = steps["g_step"](after_d, batch, rng)
  classifier = nnx.merge(state.d.graphdef, state.d.params)
  sentence = jax.jit(lambda ids, mask, key: classifier.sentence(ids, mask, key))

  def generate(g_params, key):
    z_key, drop_key = jax.random.split(key)
    return nnx.merge(state.g.graphdef, g_params)(jax.random.normal(z_key, (8, CFG.latent_dim)),
                                                 dropout_key=drop_key)[0]

  # d_step: key = fold_in(fold_in(rng, step), 0) -> (fake key, loss key); loss key -> (encoder, real, fake) keys.
  g_key, loss_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(rng, 0), 0))
  enc_key, real_key, fake_key = jax.random.split(loss_key, 3)
  h_real = sentence(host["input_ids"], host["attention_mask"], enc_key)
  h_fake = jax.jit(generate)(state.g.params, g_key)
  head_graphdef, head_params = nnx.split(classifier.head, nnx.Param)

  def d_loss(head_params):
    model = nnx.merge(state.d.graphdef, state.d.params)
    model.head = nnx.merge(head_graphdef, head_params)
    real, real_f = model.discriminate(h_real, real_key)
    fake, _ = model.discriminate(h_fake, fake_key)
    return gb.discriminator_loss(real, fake, host["labels"])[0], real_f.mean(0)

  (loss, real_f), grads = jax.jit(jax.value_and_grad(d_loss, has_aux=True))(head_params)
  assert float(d_metrics["d_loss"]) == pytest.approx(float(loss), rel=1e-5)
  assert float(d_metrics["d_head_grad_norm"]) == pytest.approx(float(gb.training.tree_l2_norm(grads)), rel=1e-4)
  # The D-step stores E f(real) of its own forward pass: the feature-matching target of the G-step.
  np.testing.assert_allclose(np.asarray(after_d.real_features), np.asarray(real_f), rtol=1e-5, atol=1e-7)

  # g_step: key = fold_in(fold_in(rng, step), 1) -> (G, fake) keys; D is the one the D-step read (before its
  # update), read only: the D of E f(real).
  g_key, fake_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(rng, 0), 1))

  def g_loss(g_params):
    fake, fake_f = classifier.discriminate(generate(g_params, g_key), fake_key)
    return gb.generator_loss(fake, real_f[None], fake_f)[0]

  loss, grads = jax.jit(jax.value_and_grad(g_loss))(state.g.params)
  assert float(g_metrics["g_loss"]) == pytest.approx(float(loss), rel=1e-5)
  assert float(g_metrics["g_grad_norm"]) == pytest.approx(float(gb.training.tree_l2_norm(grads)), rel=1e-4)


def _leaky(x, slope=0.2):
  return np.where(x >= 0, x, slope * x)


def _one_d_feature_matching(module):
  """(g_step's metrics, the NumPy reference of L_G with every term through the D before the D-step's update).

  Dropout is off everywhere and G's first kernel is zero, so G(z) = leaky(b1) W2 + b2 whatever z: the reference
  needs no noise. D = the head MLP f(h) = leaky(h W1 + b1), logits = f(h) W2 + b2 (seed sec. 2).
  """
  cfg_bert = dataclasses.replace(TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  cfg = module.GanBertConfig(num_classes=3, dropout=0.0)
  opt = dict(OPT, lr=1e-2)
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  state, _ = training.init_sharded_state(module.make_state_fn(cfg_bert, cfg, opt, opt), jax.random.key(0), mesh)
  g_module = nnx.merge(state.g.graphdef, state.g.params)
  rng = np.random.default_rng(1)
  g_module.hidden[0].kernel.set_value(jnp.zeros_like(g_module.hidden[0].kernel.get_value()))
  g_module.hidden[0].bias.set_value(jnp.asarray(rng.normal(size=g_module.hidden[0].bias.shape), jnp.float32))
  g_module.out.bias.set_value(jnp.asarray(rng.normal(size=g_module.out.bias.shape), jnp.float32))
  state = state.replace(g=state.g.replace(params=nnx.state(g_module, nnx.Param)))
  d_step, g_step, _, _ = module.make_steps(cfg, mesh)
  host = _batch()

  def iteration(state, batch, rng):
    state, _ = d_step(state, batch, rng)
    return g_step(state, batch, rng)

  _, metrics = jax.jit(iteration)(state, host, jax.random.key(3))

  p = lambda x: np.asarray(x.get_value() if hasattr(x, "get_value") else x, np.float64)  # noqa: E731
  d0 = nnx.merge(state.d.graphdef, state.d.params)
  h_real_BD = np.asarray(jax.jit(d0.sentence)(host["input_ids"], host["attention_mask"]), np.float64)
  w1, b1 = p(d0.head.hidden[0].kernel), p(d0.head.hidden[0].bias)
  w2, b2 = p(d0.head.out.kernel), p(d0.head.out.bias)
  h_fake_D = _leaky(p(g_module.hidden[0].bias)) @ p(g_module.out.kernel) + p(g_module.out.bias)
  f_real_BH, f_fake_H = _leaky(h_real_BD @ w1 + b1), _leaky(h_fake_D @ w1 + b1)
  fake_logits = f_fake_H @ w2 + b2
  unsup = -np.log(1 - _softmax(fake_logits)[-1] + EPS)
  fm = np.mean((f_real_BH.mean(0) - f_fake_H) ** 2)
  return metrics, unsup, fm


def test_feature_matching_takes_both_sides_through_one_d():
  """L_G,fm = ||E_x f(h_x) - E_z f(G(z))||^2 and L_G,unsup through the one D of the D-step's forward pass (the
  seed, sec. 2, and its TensorFlow release, where L_D and L_G share one forward pass), not E f(G(z)) through the D
  the D-step has just updated."""
  metrics, unsup, fm = _one_d_feature_matching(gb)
  assert fm > 1e-4  # the reference is far from 0, so a D moved by one lr=1e-2 step shows
  np.testing.assert_allclose(float(metrics["g_feature_matching"]), fm, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["g_unsup"]), unsup, rtol=1e-4)


# Parameters after one D-step and one G-step: AdamW's first update is lr * g / (|g| + eps) per weight, i.e. about
# +-lr = 1e-3, so a flipped or missing update would differ by 1e-3 to 2e-3. The meshes only reorder reductions
# (gradients move by ~1e-7 relative; the parameters agree to ~3e-7 on every mesh); 2% of one lr step (2e-5)
# leaves a wide margin.
PARAM_ATOL = 0.02 * OPT["lr"]


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 2, 4)])  # (8,1,1) is (2,2,2)'s data axis alone
def test_steps_give_the_same_losses_and_params_on_a_mesh_as_on_one_device(one_device, shape):
  mesh1, state1, steps1 = one_device
  batch = _batch()
  rng = jax.random.key(7)
  s1, d1 = steps1["d_step"](state1, shd.put_batch(batch, mesh1), rng)
  s1, g1 = steps1["g_step"](s1, shd.put_batch(batch, mesh1), rng)

  mesh = shd.make_mesh(shape)
  shardings, _, steps = _program(mesh, CFG)
  # The same initial values laid out on the mesh (the static graphdef/optimizer come from the mesh's program).
  state = jax.tree.unflatten(jax.tree.structure(shardings),
                             [jax.device_put(x, sh) for x, sh in zip(jax.tree.leaves(state1),
                                                                     jax.tree.leaves(shardings))])
  s, d = steps["d_step"](state, shd.put_batch(batch, mesh), rng)
  s, g = steps["g_step"](s, shd.put_batch(batch, mesh), rng)
  for key in ("d_loss", "d_sup", "d_unsup_real", "d_unsup_fake", "d_grad_norm"):
    assert float(d[key]) == pytest.approx(float(d1[key]), rel=2e-5, abs=1e-6), key
  np.testing.assert_allclose(np.asarray(s.real_features), np.asarray(s1.real_features), rtol=2e-5, atol=1e-6)
  for key in ("g_loss", "g_feature_matching", "g_grad_norm"):
    assert float(g[key]) == pytest.approx(float(g1[key]), rel=2e-5, abs=1e-7), key
  # Updated parameters of the encoder, D's head and G; each player's update really moved them.
  for name, got, ref, before in (("encoder", s.d.params["encoder"], s1.d.params["encoder"], state1.d.params["encoder"]),
                                 ("D", s.d.params["head"], s1.d.params["head"], state1.d.params["head"]),
                                 ("G", s.g.params, s1.g.params, state1.g.params)):
    assert _changed(ref, before), name
    for a, b in zip(jax.tree.leaves(_host(got)), jax.tree.leaves(_host(ref))):
      np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL, err_msg=name)
  if shape == (2, 2, 2):  # the state really is sharded: FSDP on 'embed', tensor parallelism on 'mlp'
    kernel = s.d.params["head"]["hidden"][0]["kernel"].get_value()
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_freeze_layers_leaves_embeddings_and_bottom_layers_unchanged():
  """freeze_layers=1 of 2: the embeddings and layer 0 (row 0 of each stacked layer weight) get no update, not even
  weight decay; layer 1 and the head do."""
  cfg = gb.GanBertConfig(num_classes=3, method="baseline", freeze_layers=1)
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  state, _ = training.init_sharded_state(gb.make_state_fn(TINY, cfg, OPT), jax.random.key(0), mesh)
  _, _, sup_step, _ = gb.make_steps(cfg, mesh)
  new, _ = jax.jit(sup_step)(state, _batch(), jax.random.key(1))
  before, after = _host(state.d.params), _host(new.d.params)
  _assert_same(before["encoder"]["embeddings"], after["encoder"]["embeddings"])
  layer_leaves = list(zip(jax.tree.leaves(before["encoder"]["layers"]), jax.tree.leaves(after["encoder"]["layers"])))
  assert layer_leaves and all(a.shape[0] == TINY.num_hidden_layers for a, _ in layer_leaves)
  for a, b in layer_leaves:
    np.testing.assert_array_equal(a[0], b[0])
  assert any(not np.array_equal(a[1], b[1]) for a, b in layer_leaves)
  assert _changed(before["head"], after["head"])
  with pytest.raises(gb.InputError, match="exceeds"):
    gb.make_state_fn(TINY, dataclasses.replace(cfg, freeze_layers=3), OPT)


def test_head_lr_moves_the_head_at_its_own_rate():
  """head_lr: the D head steps at head_lr and the encoder at lr; with lr 0 the encoder stays put while every head
  weight with a gradient moves by about head_lr (Adam's first step)."""
  cfg = gb.GanBertConfig(num_classes=3, method="baseline")
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  _, _, sup_step, _ = gb.make_steps(cfg, mesh)
  head_lr = 1e-2
  opt = dict(OPT, lr=0.0, head_lr=head_lr)
  # Shardings of the state as `stage.run_stage` derives them, through optax.multi_transform's masked states.
  training.abstract_state(gb.make_state_fn(TINY, cfg, opt), jax.random.key(0), mesh)
  state, _ = training.init_sharded_state(gb.make_state_fn(TINY, cfg, opt), jax.random.key(0), mesh)
  new, _ = jax.jit(sup_step, compiler_options=FAST)(state, _batch(), jax.random.key(1))
  before, after = _host(state.d.params), _host(new.d.params)
  _assert_same(before["encoder"], after["encoder"])
  kernel = np.abs(after["head"]["out"]["kernel"] - before["head"]["out"]["kernel"]).max()
  assert 0.5 * head_lr < kernel < 1.5 * head_lr


@pytest.mark.parametrize("frozen,method", [(1, "ganbert"), (2, "baseline")])
def test_cached_frozen_bottom_gives_the_steps_of_the_whole_encoder(frozen, method):
  """Without dropout, a batch that carries the frozen bottom's output (layer 1 of 2: hidden states; all layers:
  sentence vectors) gives the D-step and the baseline's step the losses and updates of the batch of token ids."""
  tiny = TINY.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  cfg = gb.GanBertConfig(num_classes=3, method=method, freeze_layers=frozen, dropout=0.0)
  state, _ = training.init_sharded_state(gb.make_state_fn(tiny, cfg, OPT), jax.random.key(0), mesh)
  batch = _batch()
  model = nnx.merge(state.d.graphdef, state.d.params)
  cached = {**batch, "frozen": model.frozen_features(batch["input_ids"], batch["attention_mask"], frozen)}
  assert cached["frozen"].shape == ((8, 32) if frozen == 2 else (8, 16, 32))
  d_step, _, sup_step, _ = gb.make_steps(cfg, mesh)
  step = jax.jit(d_step if method == "ganbert" else sup_step, compiler_options=FAST)
  (a, metrics_a), (b, metrics_b) = step(state, batch, jax.random.key(1)), step(state, cached, jax.random.key(1))
  loss = "d_loss" if method == "ganbert" else "loss"
  np.testing.assert_allclose(metrics_a[loss], metrics_b[loss], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), _host(a.d.params), _host(b.d.params))
  assert _changed(state.d.params["head"], b.d.params["head"])
