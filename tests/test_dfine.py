"""Discriminator fine-tuning objective: eq. (6), (8), (11)-(12) against NumPy, Proposition 1, clipping, sharding."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtextgan import sharding as shd
from jaxtextgan import training
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import dfine


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture
def tiny():
  """B=2, T=3, V=6 logits for qθ, q0 and the discriminator, targets and a mask with one padded position."""
  rng = np.random.RandomState(0)
  return dict(logits=rng.randn(2, 3, 6).astype(np.float32), q0_logits=rng.randn(2, 3, 6).astype(np.float32),
              d_logits=(2 * rng.randn(2, 3, 6)).astype(np.float32), targets=rng.randint(0, 6, (2, 3)),
              mask=np.array([[1, 1, 1], [1, 0, 1]], np.float32))


def test_discriminator_loss_eq6_matches_numpy(tiny):
  q0 = np.exp(_np_log_softmax(tiny["q0_logits"].astype(np.float64)))
  r = _np_sigmoid(tiny["d_logits"].astype(np.float64))
  d_q = -(q0 * np.log(r)).sum(-1)
  d_p = -np.log(1.0 - np.take_along_axis(r, tiny["targets"][..., None], -1)[..., 0])
  total, count, aux = dfine.discriminator_loss(jnp.asarray(tiny["d_logits"]),
                                               jax.nn.log_softmax(jnp.asarray(tiny["q0_logits"])),
                                               jnp.asarray(tiny["targets"]), jnp.asarray(tiny["mask"]))
  m = tiny["mask"]
  np.testing.assert_allclose(float(total), ((d_q + d_p) * m).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["d_q"]), (d_q * m).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["d_p"]), (d_p * m).sum(), rtol=1e-5)
  assert float(count) == 5


def test_discriminator_optimum_is_eq7():
  """Minimising eq. (6) in expectation over w* ~ p gives r = q0/(q0 + p), i.e. p̂ of eq. (8) equals p."""
  q0 = np.array([0.5, 0.3, 0.15, 0.05])
  p = np.array([0.4, 0.3, 0.2, 0.1])
  logq0 = jnp.log(jnp.asarray(q0, jnp.float32))[None, None]

  def expected_loss(l):
    terms = [dfine.discriminator_loss(l[None, None], logq0, jnp.array([[w]]))[0] for w in range(4)]
    return sum(pw * t for pw, t in zip(p, terms))

  descend = jax.jit(lambda l: jax.lax.fori_loop(0, 3000, lambda _, x: x - 2.0 * jax.grad(expected_loss)(x), l))
  l = descend(jnp.zeros(4))
  np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(l)), q0 / (q0 + p), atol=2e-3)
  p_hat = np.exp(np.asarray(dfine.log_p_hat(logq0, l[None, None])))[0, 0]
  np.testing.assert_allclose(p_hat, p, rtol=2e-2)


def test_finetune_loss_eq12_matches_numpy(tiny):
  eps = 1e-3
  logq = _np_log_softmax(tiny["logits"].astype(np.float64))
  logq0 = _np_log_softmax(tiny["q0_logits"].astype(np.float64))
  r = np.clip(_np_sigmoid(tiny["d_logits"].astype(np.float64)), eps, 1 - eps)
  pick = lambda x: np.take_along_axis(x, tiny["targets"][..., None], -1)[..., 0]
  t = np.exp(pick(logq)) / np.exp(pick(logq0)) * pick(r) / (1 - pick(r))  # eq. (11)
  per_token = -pick(logq) + t * np.log(t)  # eq. (12)
  m = tiny["mask"]
  total, count, aux = dfine.finetune_loss(*(jnp.asarray(tiny[k]) for k in ("logits", "q0_logits", "d_logits",
                                                                           "targets", "mask")), kind="dfine", eps=eps)
  np.testing.assert_allclose(float(total), (per_token * m).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["nll"]), (-pick(logq) * m).sum(), rtol=1e-5)
  assert float(count) == 5
  # The variant: exact reverse KL over the vocabulary against p̂ = q0 (1 - r)/r of eq. (8).
  p_hat = np.exp(logq0) * (1 - r) / r
  kl = (np.exp(logq) * (logq - np.log(p_hat))).sum(-1)
  total_kl, _, _ = dfine.finetune_loss(*(jnp.asarray(tiny[k]) for k in ("logits", "q0_logits", "d_logits",
                                                                        "targets", "mask")), kind="dfine_kl", eps=eps)
  np.testing.assert_allclose(float(total_kl), ((-pick(logq) + kl) * m).sum(), rtol=1e-5)


def test_without_discriminator_is_r_one_half(tiny):
  args = [jnp.asarray(tiny[k]) for k in ("logits", "q0_logits")]
  none = dfine.finetune_loss(args[0], args[1], None, jnp.asarray(tiny["targets"]))[0]
  half = dfine.finetune_loss(args[0], args[1], jnp.zeros_like(args[0]), jnp.asarray(tiny["targets"]))[0]
  np.testing.assert_allclose(float(none), float(half), rtol=1e-6)
  assert dfine.r_to_logit(0.5) == 0.0


def _step_change(kind, q_star, p_hat, lr=1e-2):
  """One gradient step on logits θ (qθ = softmax θ) at target w* = 0; returns qθ(w*) after minus before."""
  v = 5
  rest = (1.0 - q_star) / (v - 1)
  theta = jnp.log(jnp.array([q_star] + [rest] * (v - 1), jnp.float32))[None, None]
  q0 = jnp.full((1, 1, v), 1.0 / v)
  logq0 = jnp.log(q0)
  # Proposition 1 holds p̂ fixed: choose the discriminator logit with log p̂(w*) = log q0(w*) - l (eq. 8).
  d = jnp.zeros((1, 1, v)).at[0, 0, 0].set(logq0[0, 0, 0] - jnp.log(p_hat))
  target = jnp.zeros((1, 1), jnp.int32)
  loss = lambda th: dfine.finetune_loss(th, logq0, d, target, kind=kind)[0]
  new = theta - lr * jax.grad(loss)(theta)
  return float(jax.nn.softmax(new)[0, 0, 0] - jax.nn.softmax(theta)[0, 0, 0])


@pytest.mark.parametrize("q_star", [0.05, 0.2, 0.29])
def test_proposition1_raises_q_below_p_hat(q_star):
  assert _step_change("dfine", q_star, p_hat=0.3) > 0
  assert _step_change("ce", q_star, p_hat=0.3) > 0


@pytest.mark.parametrize("q_star", [0.31, 0.5, 0.9])
def test_proposition1_lowers_q_above_p_hat_while_ce_raises_it(q_star):
  assert _step_change("dfine", q_star, p_hat=0.3) < 0
  assert _step_change("ce", q_star, p_hat=0.3) > 0


def test_proposition1_steps_are_smaller_near_p_hat():
  """Eq. (14)-(15): near p̂ the step is O(ε/p̂) times the cross-entropy one."""
  assert abs(_step_change("dfine", 0.29, 0.3)) < 0.2 * abs(_step_change("ce", 0.29, 0.3))


@pytest.mark.parametrize("r", [0.0, 1.0])
@pytest.mark.parametrize("kind", ["dfine", "dfine_kl"])
def test_r_exactly_zero_or_one_is_finite(r, kind):
  logits = jnp.asarray(np.random.RandomState(1).randn(2, 3, 6), jnp.float32)
  q0 = jnp.asarray(np.random.RandomState(2).randn(2, 3, 6), jnp.float32)
  d = jnp.broadcast_to(dfine.r_to_logit(jnp.float32(r)), logits.shape)
  targets = jnp.zeros((2, 3), jnp.int32)
  loss = lambda x: dfine.finetune_loss(x, q0, d, targets, kind=kind)[0]
  value, grad = jax.value_and_grad(loss)(logits)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
  # Unclipped logits of ±inf (σ = 0 or 1 exactly) are clipped too.
  d_inf = jnp.full(logits.shape, jnp.inf if r else -jnp.inf)
  assert np.isfinite(float(dfine.finetune_loss(logits, q0, d_inf, targets, kind=kind)[0]))
  assert np.isfinite(float(dfine.discriminator_loss(d, jax.nn.log_softmax(q0), targets)[0]))


def test_bad_inputs_are_one_line_errors():
  a, b = jnp.zeros((1, 2, 5)), jnp.zeros((1, 2, 6))
  t = jnp.zeros((1, 2), jnp.int32)
  with pytest.raises(InputError, match="discriminator must score exactly the LM's vocabulary") as err:
    dfine.discriminator_loss(a, b, t)
  assert "\n" not in str(err.value)
  with pytest.raises(InputError, match="same vocab_size"):
    dfine.finetune_loss(b, b, a, t)
  with pytest.raises(InputError, match="eps=0.0 is invalid"):
    dfine.clip_logit(a, 0.0)
  with pytest.raises(InputError, match="finetune loss 'kl' is unknown"):
    dfine.finetune_loss(b, b, None, t, kind="kl")


def test_zero_output_layer_gives_r_one_half_and_perturbation_sets_one_bias():
  cfg = gpt2.GPT2Config(vocab_size=16, max_len=8, n_layer=1, d_model=16, n_head=2, d_ff=32, tie_embeddings=False,
                        output_bias=True, dropout=0.0)
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  state, _ = dfine.init_state(cfg, _opt(), jax.random.key(0), mesh)
  zeroed = dfine.zero_output_layer(state.params)
  logits = dfine._logits(state.graphdef, zeroed, jnp.zeros((1, 4), jnp.int32))
  assert float(jnp.abs(logits).max()) == 0.0
  perturbed = dfine.set_output_bias(state.params, 3, -30.0)
  bias = np.asarray(perturbed["out_bias"].get_value())
  assert bias[3] == -30.0 and np.all(np.delete(bias, 3) == np.asarray(state.params["out_bias"].get_value())[:15])


def _opt(steps=10, lr=1e-2):
  return ml_collections.ConfigDict(dict(lr=lr, total_steps=steps, warmup_steps=0, grad_clip_norm=1.0,
                                        weight_decay=0.0))


def _batch(seed, rows=8, t=8, vocab=32):
  ids = np.random.RandomState(seed).randint(0, vocab, (rows, t + 1)).astype(np.int32)
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


MESH_CFG = gpt2.GPT2Config(vocab_size=32, max_len=8, n_layer=2, d_model=32, n_head=4, d_ff=64, tie_embeddings=False,
                           output_bias=True, dropout=0.0)
MESHES = [(1, 1, 1), (2, 2, 2), (1, 2, 4)]  # (8,1,1) is (2,2,2)'s data axis alone
# Two AdamW steps at lr 1e-2 move a weight by up to ~2 lr; a flipped or missing update would differ by ~1e-2. Meshes
# only reorder reductions (gradients move by ~1e-7 relative). Adam's eps is 1e-3, not 1e-8: some gradients are
# zero up to rounding (the attention key bias: softmax ignores a shift per query), and g / (|g| + 1e-8) would blow
# their rounding noise up to +-lr. With eps 1e-3 the update is a smooth function of g (Lipschitz lr / eps = 10), the
# meshes agree to ~3e-7, and 1% of one lr step is a wide margin.
PARAM_ATOL = 1e-4


def _mesh_opt():
  opt = _opt()
  opt.eps = 1e-3
  return opt


@functools.lru_cache(maxsize=None)
def _frozen_host():
  """Host copies of q0 and of a random discriminator (r varies over words and contexts)."""
  one = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  q0_host = jax.device_get(dfine.init_state(MESH_CFG, _opt(), jax.random.key(0), one)[0].params)
  return q0_host, jax.device_get(dfine.init_state(MESH_CFG, _opt(), jax.random.key(1), one)[0].params)


def _two_stage_steps(stage, shape):
  """(losses, final params) of two steps of the discriminator stage (eq. 6, from the discriminator above) or the
  fine-tune stage (eq. 12 with that discriminator, from q0) on a mesh. Without dropout: it doubles the compile time
  here, and dropout keys on meshes are covered by the LM and GAN-BERT mesh tests."""
  mesh = shd.make_mesh(shape, jax.devices()[:int(np.prod(shape))])
  q0_host, disc_host = _frozen_host()
  _, params_sh = dfine.param_shardings(MESH_CFG, mesh)
  q0 = jax.device_put(q0_host, params_sh)
  batch_sh = {k: shd.batch_sharding(mesh) for k in ("inputs", "targets")}
  q0_graphdef = dfine.graphdef_of(MESH_CFG)
  if stage == "disc":
    frozen, frozen_sh = {"q0": q0}, {"q0": params_sh}
    state, state_sh = dfine.init_state(MESH_CFG, _mesh_opt(), jax.random.key(2), mesh,
                                       params=jax.device_put(disc_host, params_sh))
    step_fn = dfine.make_disc_step(q0_graphdef)
  else:
    frozen = {"q0": q0, "disc": jax.device_put(disc_host, params_sh)}
    frozen_sh = {"q0": params_sh, "disc": params_sh}
    state, state_sh = dfine.init_state(MESH_CFG, _mesh_opt(), jax.random.key(2), mesh, params=q0)
    step_fn = dfine.make_finetune_step(q0_graphdef, q0_graphdef, kind="dfine")
  step = training.jit_step(step_fn, mesh, state_sh, batch_sh, frozen_shardings=frozen_sh)
  losses = []
  for i in range(2):
    state, metrics = step(state, frozen, shd.put_batch(_batch(i), mesh), jax.random.key(3))
    losses.append(float(metrics["loss"]))
  # Donating the state left the frozen q0 intact (the fine-tuned state starts from a copy of it).
  np.testing.assert_array_equal(np.asarray(frozen["q0"]["out_bias"].get_value()),
                                np.asarray(q0_host["out_bias"].get_value()))
  assert losses[1] != losses[0]
  return losses, jax.device_get(state.params)


@pytest.mark.parametrize("stage", ["disc", "finetune"])
def test_stage_step_same_loss_and_params_on_every_mesh(stage):
  results = {shape: _two_stage_steps(stage, shape) for shape in MESHES}
  ref_losses, ref_params = results[(1, 1, 1)]
  start = _frozen_host()[1 if stage == "disc" else 0]
  assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(start))) > 1e-3
  for shape, (losses, params) in results.items():
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, err_msg=str(shape))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=PARAM_ATOL, err_msg=str(shape))


def test_disc_step_lowers_eq6_loss():
  cfg = gpt2.GPT2Config(vocab_size=32, max_len=8, n_layer=1, d_model=32, n_head=2, d_ff=64, tie_embeddings=False,
                        output_bias=True, dropout=0.0)
  mesh = shd.make_mesh((2, 1, 1), jax.devices()[:2])
  q0, sh = dfine.init_state(cfg, _opt(), jax.random.key(0), mesh)
  disc, disc_sh = dfine.init_state(cfg, _opt(40, 3e-2), jax.random.key(1), mesh,
                                   params=dfine.zero_output_layer(q0.params))
  step = training.jit_step(dfine.make_disc_step(q0.graphdef), mesh, disc_sh,
                           {k: shd.batch_sharding(mesh) for k in ("inputs", "targets")},
                           frozen_shardings={"q0": sh.params})
  b = shd.put_batch(_batch(0), mesh)
  first = None
  for _ in range(40):
    disc, metrics = step(disc, {"q0": q0.params}, b, jax.random.key(0))
    first = float(metrics["loss"]) if first is None else first
  assert abs(first - np.log(4.0)) < 1e-5  # r = 1/2 everywhere at the start
  assert float(metrics["loss"]) < first - 0.1


def test_unigram_logit_minimises_eq6_among_context_free_discriminators():
  rng = np.random.RandomState(0)
  q0_logp = jax.nn.log_softmax(jnp.asarray(rng.randn(4, 6, 7), jnp.float32))
  targets = jnp.asarray(rng.randint(0, 6, (4, 6)))  # word 6 never occurs: its pseudo-count keeps l finite
  mass = jnp.exp(q0_logp).sum((0, 1))
  counts = np.bincount(np.asarray(targets).ravel(), minlength=7)
  b = dfine.unigram_logit(mass, counts)
  loss = lambda b: dfine.discriminator_loss(jnp.broadcast_to(b, q0_logp.shape), q0_logp, targets)[0]
  grad = np.asarray(jax.grad(loss)(b))
  np.testing.assert_allclose(grad[:6], 0.0, atol=1e-4)
  assert np.all(np.isfinite(np.asarray(b)))
  cfg = gpt2.GPT2Config(vocab_size=7, max_len=8, n_layer=1, d_model=8, n_head=2, d_ff=16, tie_embeddings=False,
                        output_bias=True)
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  params = dfine.init_state(cfg, _opt(), jax.random.key(0), mesh)[0].params
  out = dfine.set_output_bias_vector(dfine.zero_output_layer(params), b)
  logits = dfine._logits(dfine.graphdef_of(cfg), out, jnp.zeros((1, 3), jnp.int32))
  np.testing.assert_allclose(np.asarray(logits[0, 0]), np.asarray(b), rtol=1e-6)


@pytest.mark.parametrize("spec,trained_layers,embeddings", [("all", (0, 1), True), ("head", (), False),
                                                             ("top:1", (1,), False), ("top:2", (0, 1), False)])
def test_train_layers_freezes_the_rest(spec, trained_layers, embeddings):
  """discriminator.train_layers: one AdamW step (with weight decay) moves the head always, the stacked blocks'
  top N layers, and the embeddings only with 'all'."""
  cfg = gpt2.GPT2Config(vocab_size=16, max_len=8, n_layer=2, d_model=16, n_head=2, d_ff=32, tie_embeddings=False,
                        output_bias=True, dropout=0.0)
  opt = _opt()
  opt.update(dict(weight_decay=0.1, train_layers=spec))
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  state, _ = dfine.init_state(cfg, opt, jax.random.key(0), mesh)
  grads = jax.tree.map(lambda x: jnp.ones_like(x), state.params)
  new = state.apply_gradients(grads).params
  for path, before in jax.tree_util.tree_leaves_with_path(state.params):
    names = dfine._names(path)
    after = dict(jax.tree_util.tree_leaves_with_path(new))[path]
    moved = np.asarray(jnp.abs(after - before).reshape(before.shape[0], -1).max(-1) > 0) if before.ndim else None
    if any(n in dfine.HEAD for n in names):
      assert moved.any(), names
    elif "blocks" in names:
      assert tuple(np.flatnonzero(moved)) == trained_layers, (names, moved)
    else:
      assert moved.all() == embeddings and moved.any() == embeddings, names
  with pytest.raises(InputError, match="train_layers"):
    dfine.parse_train_layers("top:0")


def test_over_seeds_and_seeds_report():
  """mean ± sample std of every number over seeds; the paired disc − (r ≡ 1/2) perplexity difference per seed."""
  from jaxtextgan.reports import dfine as report
  from jaxtextgan.tasks import dfine_numbers as numbers
  def rep(shift):
    e = lambda ppl: {"loss": 5.0, "perplexity": ppl, "rkl": 0.01, "rkl_exact": 0.02, "window": 32, "stride": 16}
    return {"table2": {"Initial model": {"valid": e(190 + shift), "test": e(175 + shift)},
                       numbers.TABLE2_LABELS["disc"]: {"valid": e(186 + shift), "test": e(172 + 2 * shift)},
                       numbers.TABLE2_LABELS["nodisc"]: {"valid": e(190 + shift), "test": e(175 + shift)}},
            "table1": {"Initial model": {"ppl": 90.0 + shift, "frequent_ppl": 50.0, "rare_ppl": 900.0, "ratio": 18.0}},
            "discriminators": {"stage2_disc": {"loss": 1.36 - 0.01 * shift, "start_loss": 1.375,
                                               "train_layers": "all"}}}
  reports = [rep(0), rep(1), rep(2)]
  agg = numbers.over_seeds(reports)
  assert agg["table1"]["Initial model"]["ppl"]["mean"] == 91.0
  np.testing.assert_allclose(agg["table1"]["Initial model"]["ppl"]["std"], 1.0)
  paired = agg["paired"][numbers.TABLE2_LABELS["disc"]]["test"]
  assert paired["values"] == [-3.0, -2.0, -1.0] and paired["mean"] == -2.0
  cfg = ml_collections.ConfigDict(dict(report=dict(title="t")))
  md = report.seeds_report({"seeds": [0, 1, 2], "per_seed": dict(enumerate(reports)), "over_seeds": agg,
                            "command": "c", "wall_seconds": 60.0, "jax_version": "j", "devices": "d"}, cfg)
  assert "| Initial model | 91.00 ± 1.00 |" in md and "sliding window 32, stride 16" in md
  assert "-2.00 ± 1.00 (per seed -3.00, -2.00, -1.00): NOT more than 2 std below" in md
  assert "| stage2_disc | 1.3500 ± 0.0100 | 1.3750 ± 0.0000 | +0.0250" in md
