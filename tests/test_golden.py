"""Golden values of one train step of every objective: LM, GAN (minimax, WGAN-GP), GAN-BERT, dfine stages 2 and 3.

The numbers below were taken at commit 3916cf4, before the stage-runner refactor (jit helpers, state builders, task
runners), from an untouched checkout of that commit, on CPU under tests/conftest.py (8 fake devices, XLA LLVM -O0).
They pin the math, the rng paths (dropout on) and the optimizer update of each objective. NEVER edit a number to
make a refactor pass: a refactor must leave them all unchanged. Only a deliberate change of the math may update
them, with the reason stated in the commit. When a refactor renames a helper, edit only the builders at the top.
Each step runs once under plain `jax.jit` on a one-device mesh (the pure step, not the project's jit helpers);
the values were bitwise the same over two runs and under `pytest -n 2`.

Each builder returns (trees, metrics): `trees` names the new state's parts (params, optimizer state, step
counters). A scalar part is pinned by its value; any other part by the float64 sum, sum of |x| and L2 norm of its
floating leaves and the sum of its integer ones (optimizer counts), whatever its tree structure. The L2 norm, not
the sum of squares, keeps a fingerprint on the scale of its values (Adam's moments of a gradient of norm 1e-3 would
otherwise fall below atol). Adam's eps is 1e-3, so an update is a smooth function of its gradient: gradients that
are zero up to rounding (attention key biases) move a weight by ~1e-6 lr, not +-lr, whatever the reduction order.
"""

import functools

import jax
import numpy as np
import pytest

from jaxtextgan import sharding as shd
from jaxtextgan import training
from jaxtextgan.models import bert
from jaxtextgan.models import discriminator as disc_lib
from jaxtextgan.models import generator as gen_lib
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import dfine, gan, lm
from jaxtextgan.objectives import ganbert as gb

RTOL, ATOL = 1e-5, 1e-7
# AdamW with clipping, decoupled weight decay (layer-aware mask) and a constant lr; no warm-up, so step 0 updates.
OPT = dict(lr=1e-2, total_steps=10, warmup_steps=0, schedule="constant", b1=0.9, b2=0.99, eps=1e-3,
           grad_clip_norm=1.0, weight_decay=0.01)


def _mesh():
  return shd.make_mesh((1, 1, 1), jax.devices()[:1])


def _ids(seed, shape, vocab, low=0):
  return np.random.RandomState(seed).randint(low, vocab, shape).astype(np.int32)


# --- builders: all objective-specific construction ----------------------------------------------------------------


def _lm_step():
  """`objectives.lm.train_step`: AdamW on the masked mean next-token NLL (GAN seed eq. 1-2), dropout 0.1."""
  cfg = gpt2.preset("tiny", vocab_size=64, max_len=16, dropout=0.1)
  state, _ = training.init_sharded_state(lm.make_state_fn(cfg, OPT), jax.random.key(0), _mesh())
  ids_BT = _ids(10, (4, 17), 64)
  mask_BT = np.ones((4, 16), np.float32)
  mask_BT[2, 11:] = 0.0
  batch = {"inputs": ids_BT[:, :-1], "targets": ids_BT[:, 1:], "mask": mask_BT}
  new, metrics = jax.jit(lm.train_step)(state, batch, jax.random.key(1))
  return {"params": new.params, "opt_state": new.opt_state, "step": new.step}, metrics


def _gan_step(loss):
  """`objectives.gan.make_steps(...)[2]` (train_step): n_critic critic updates on GAN seed eq. (4) (minimax, one
  critic step, CNN critic) or E D(fake) - E D(real) + 10 GP (WGAN-GP, two critic steps, one through the scan,
  transformer critic), then one G update on eq. (5) or -E D(fake); GPT-2 generator, hard Gumbel-Softmax, critic
  dropout 0.1, tau exponential from 1.0."""
  v, t, b, z = 16, 5, 8, 4
  n_critic = {"minimax": 1, "wgan-gp": 2}[loss]
  lm_cfg = gpt2.GPT2Config(vocab_size=v, max_len=8, n_layer=1, d_model=16, n_head=2, d_ff=32, dropout=0.1)
  gen_cfg = gen_lib.GeneratorConfig(length=t, latent_dim=z, bos_id=v - 1, forbidden_ids=(v - 1,))
  if loss == "minimax":
    disc_cfg = disc_lib.DiscriminatorConfig(kind="cnn", vocab_size=v, max_len=t, d_model=16, widths=(2, 3),
                                            filters=8, dropout=0.1)
  else:
    disc_cfg = disc_lib.DiscriminatorConfig(kind="transformer", vocab_size=v, max_len=t, n_layer=1, d_model=16,
                                            n_head=2, d_ff=32, dropout=0.1)
  gan_cfg = gan.GANConfig(loss=loss, n_critic=n_critic, batch_size=b,
                          tau=gan.TauSchedule("exponential", 1.0, 0.5, 10))
  mesh = _mesh()
  make_state = gan.make_state_fn(gen_cfg, lm_cfg, disc_cfg, OPT, OPT)
  state, _ = training.init_sharded_state(make_state, jax.random.key(0), mesh)
  _, _, train_step = gan.make_steps(gan_cfg, z, mesh)
  batch = {"real": _ids(11, (b, n_critic, t), v - 1)}
  new, metrics = jax.jit(train_step)(state, batch, jax.random.key(2))
  return {"g_params": new.g.params, "g_opt_state": new.g.opt_state, "g_step": new.g.step,
          "d_params": new.d.params, "d_opt_state": new.d.opt_state, "d_step": new.d.step, "step": new.step}, metrics


def _ganbert_steps():
  """`objectives.ganbert.make_steps`: one `d_step` (L_D = L_D,sup + L_D,unsup in encoder+D, Croce et al. sec. 2)
  then one `g_step` (L_G = unsup + feature matching in G), as one Stage iteration runs them, in one jit; a 2-layer
  BERT with dropout 0.1 and D/G dropout 0.1; labeled and unlabeled rows, padded positions."""
  bert_cfg = bert.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=48, max_position_embeddings=40)
  cfg = gb.GanBertConfig(num_classes=3, latent_dim=16)
  mesh = _mesh()
  state, _ = training.init_sharded_state(gb.make_state_fn(bert_cfg, cfg, OPT, OPT), jax.random.key(0), mesh)
  d_step, g_step, _, _ = gb.make_steps(cfg, mesh)
  mask_BT = np.ones((8, 16), np.int32)
  mask_BT[1, 9:] = 0
  mask_BT[5, 4:] = 0
  batch = {"input_ids": _ids(12, (8, 16), 64, low=5), "attention_mask": mask_BT,
           "labels": np.array([0, -1, 2, -1, -1, 1, -1, 0], np.int32)}

  def iteration(state, batch, rng):
    state, d_metrics = d_step(state, batch, rng)
    state, g_metrics = g_step(state, batch, rng)
    return state, {**d_metrics, **g_metrics}

  new, metrics = jax.jit(iteration)(state, batch, jax.random.key(3))
  return {"d_params": new.d.params, "d_opt_state": new.d.opt_state, "d_step": new.d.step,
          "g_params": new.g.params, "g_opt_state": new.g.opt_state, "g_step": new.g.step,
          "real_features": new.real_features, "step": new.step}, metrics


DFINE_CFG = gpt2.GPT2Config(vocab_size=32, max_len=8, n_layer=1, d_model=32, n_head=4, d_ff=64,
                            tie_embeddings=False, output_bias=True, dropout=0.1)


@functools.lru_cache(maxsize=None)
def _dfine_frozen():
  """(q0 params, a random discriminator's params): r varies over words and contexts."""
  mesh = _mesh()
  q0 = dfine.init_state(DFINE_CFG, OPT, jax.random.key(0), mesh)[0].params
  return q0, dfine.init_state(DFINE_CFG, OPT, jax.random.key(1), mesh)[0].params


def _dfine_batch():
  ids_BT = _ids(13, (4, 9), 32)
  mask_BT = np.ones((4, 8), np.float32)
  mask_BT[3, 5:] = 0.0
  return {"inputs": ids_BT[:, :-1], "targets": ids_BT[:, 1:], "mask": mask_BT}


def _dfine_disc_step():
  """`objectives.dfine.make_disc_step`: one AdamW step of the discriminator on Popov & Kudinov eq. (6) against a
  frozen q0 (no dropout in q0, dropout 0.1 in the discriminator)."""
  q0, disc = _dfine_frozen()
  state, _ = dfine.init_state(DFINE_CFG, OPT, jax.random.key(2), _mesh(), params=disc)
  step = dfine.make_disc_step(dfine.graphdef_of(DFINE_CFG))
  new, metrics = jax.jit(step)(state, {"q0": q0}, _dfine_batch(), jax.random.key(4))
  return {"params": new.params, "opt_state": new.opt_state, "step": new.step}, metrics


def _dfine_finetune_step():
  """`objectives.dfine.make_finetune_step(kind='dfine')`: one AdamW step from q0 on eq. (12), -log q + t log t
  with t of eq. (11) from a frozen discriminator (dropout 0.1 in the fine-tuned LM only)."""
  q0, disc = _dfine_frozen()
  state, _ = dfine.init_state(DFINE_CFG, OPT, jax.random.key(2), _mesh(), params=q0)
  graphdef = dfine.graphdef_of(DFINE_CFG)
  step = dfine.make_finetune_step(graphdef, graphdef, kind="dfine")
  new, metrics = jax.jit(step)(state, {"q0": q0, "disc": disc}, _dfine_batch(), jax.random.key(5))
  return {"params": new.params, "opt_state": new.opt_state, "step": new.step}, metrics


# --- comparison ---------------------------------------------------------------------------------------------------


def _summary(trees, metrics) -> dict[str, float]:
  """Flat {name: float}: every metric; a scalar part by value; other parts by float64 sum, sum of |x| and L2 norm
  over their floating leaves, plus the sum of their integer leaves (optimizer step counts), if any."""
  out = {f"metric/{k}": float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
  for name, tree in trees.items():
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
    if len(leaves) == 1 and leaves[0].ndim == 0:
      out[f"state/{name}"] = float(leaves[0])
      continue
    floats = [x.astype(np.float64) for x in leaves if np.issubdtype(x.dtype, np.floating)]
    ints = [x.astype(np.int64) for x in leaves if not np.issubdtype(x.dtype, np.floating)]
    out[f"state/{name}/sum"] = float(sum(x.sum() for x in floats))
    out[f"state/{name}/abs"] = float(sum(np.abs(x).sum() for x in floats))
    out[f"state/{name}/l2"] = float(np.sqrt(sum(np.square(x).sum() for x in floats)))
    if ints:
      out[f"state/{name}/ints"] = float(sum(x.sum() for x in ints))
  return out


def _check(actual: dict[str, float], golden: dict[str, float]):
  """Same names; every value within rtol 1e-5, atol 1e-7. Reports every mismatch at once."""
  assert sorted(actual) == sorted(golden), "the step's metrics or state parts changed"
  bad = []
  for name, want in golden.items():
    try:
      np.testing.assert_allclose(actual[name], want, rtol=RTOL, atol=ATOL)
    except AssertionError:
      bad.append(f"{name}: got {actual[name]!r}, golden {want!r}")
  assert not bad, "golden values changed:\n" + "\n".join(bad)


# --- golden values (commit 3916cf4; never edit to make a refactor pass) --------------------------------------------

GOLDEN = {
  "lm": {
    "metric/accuracy": 0.0,
    "metric/grad_norm": 2.227463722229004,
    "metric/loss": 4.190402507781982,
    "state/params/sum": 155.08192664657489,
    "state/params/abs": 430.20750873452545,
    "state/params/l2": 12.891037071592233,
    "state/opt_state/sum": 0.02190391065532976,
    "state/opt_state/abs": 4.801246635513384,
    "state/opt_state/l2": 0.10000514328231512,
    "state/opt_state/ints": 2.0,
    "state/step": 1.0,
  },
  # G's loss now scores its fakes with D's dropout on (objectives/gan.py: one critic for D's scores, the
  # penalty and G's loss, issue 15); D's update is unchanged. Only the G values below changed.
  "gan_minimax": {
    "metric/d_fake": 0.5005831122398376,
    "metric/d_grad_norm": 0.020940624177455902,
    "metric/d_loss": 1.3865344524383545,
    "metric/d_real": 0.5004636645317078,
    "metric/g_entropy": 2.704149007797241,
    "metric/g_grad_norm": 0.0008441702229902148,
    "metric/g_loss": 0.6957260370254517,
    "metric/tau": 1.0,
    "state/g_params/sum": 48.39038121212625,
    "state/g_params/abs": 82.33451039873776,
    "state/g_params/l2": 6.984836181019773,
    "state/g_opt_state/sum": -4.8272554939269695e-08,
    "state/g_opt_state/abs": 0.0015461545400540853,
    "state/g_opt_state/l2": 8.441703017267634e-05,
    "state/g_opt_state/ints": 2.0,
    "state/g_step": 1.0,
    "state/d_params/sum": 2.7478005593548005,
    "state/d_params/abs": 86.25487087115835,
    "state/d_params/l2": 3.9843965649914046,
    "state/d_opt_state/sum": 0.0031216358675930185,
    "state/d_opt_state/abs": 0.0285134432026602,
    "state/d_opt_state/l2": 0.0020940624279297366,
    "state/d_opt_state/ints": 2.0,
    "state/d_step": 1.0,
    "state/step": 1.0,
  },
  # The penalty and G's loss now use D with dropout, the fakes' masks (objectives/gan.py: one critic for D's
  # scores, the penalty and G's loss, issue 15): every D and G value below changed for that reason only.
  "gan_wgan-gp": {
    "metric/critic_grad_norm": 0.39826539158821106,
    "metric/d_fake": 0.01831650733947754,
    "metric/d_grad_norm": 70.8869857788086,
    "metric/d_loss": 4.307802200317383,
    "metric/d_real": 0.0017435504123568535,
    "metric/g_entropy": 2.7039849758148193,
    "metric/g_grad_norm": 0.3476061224937439,
    "metric/g_loss": -0.0702541247010231,
    "metric/gp": 0.4291229248046875,
    "metric/tau": 1.0,
    "metric/wasserstein": -0.01657295599579811,
    "state/g_params/sum": 48.289087493172644,
    "state/g_params/abs": 85.11833925529828,
    "state/g_params/l2": 6.99179533636649,
    "state/g_opt_state/sum": 0.0032696486726903604,
    "state/g_opt_state/abs": 0.5995510153934491,
    "state/g_opt_state/l2": 0.03476118684181375,
    "state/g_opt_state/ints": 2.0,
    "state/g_step": 1.0,
    "state/d_params/sum": 47.61860809635902,
    "state/d_params/abs": 89.76894944496014,
    "state/d_params/l2": 7.038188498556573,
    "state/d_opt_state/sum": 0.036038512936107006,
    "state/d_opt_state/abs": 2.7625774573295123,
    "state/d_opt_state/l2": 0.15513230582018964,
    "state/d_opt_state/ints": 4.0,
    "state/d_step": 2.0,
    "state/step": 1.0,
  },
  "ganbert": {
    # Deliberate change of the math (issue 14, "feature matching through one D"): the G-step now puts G(z) through
    # D as the D-step read it (before its update), the D of E_x f(h_x), as in the seed (sec. 2) and its TensorFlow
    # release. Only G's metrics and G's state changed; every D value is still the one taken at commit 3916cf4.
    "metric/d_grad_norm": 0.6349473595619202,
    "metric/d_head_grad_norm": 0.6282734274864197,
    "metric/d_loss": 2.7709569931030273,
    "metric/d_sup": 1.0970165729522705,
    "metric/d_unsup_fake": 1.386277675628662,
    "metric/d_unsup_real": 0.28766289353370667,
    "metric/g_feature_matching": 0.001456764992326498,
    "metric/g_grad_norm": 0.0026956861838698387,
    "metric/g_loss": 0.28914153575897217,
    "metric/g_unsup": 0.28768476843833923,
    "metric/labeled": 4.0,
    "metric/p_fake_fake": 0.2500041127204895,
    "metric/p_fake_real": 0.249985471367836,
    "metric/train_accuracy": 0.25,
    "state/d_params/sum": 159.05293394778295,
    "state/d_params/abs": 479.37500284383583,
    "state/d_params/l2": 12.961696253187334,
    "state/d_opt_state/sum": -0.0026376158971750776,
    "state/d_opt_state/abs": 0.5394058916279497,
    "state/d_opt_state/l2": 0.0635501386784523,
    "state/d_opt_state/ints": 2.0,
    "state/d_step": 1.0,
    "state/g_params/sum": 0.9289321839851254,
    "state/g_params/abs": 24.413793881974016,
    "state/g_params/l2": 0.7840797633117156,
    "state/g_opt_state/sum": -0.00038339909495399506,
    "state/g_opt_state/abs": 0.002561294582709096,
    "state/g_opt_state/l2": 0.0002695686371602646,
    "state/g_opt_state/ints": 2.0,
    "state/g_step": 1.0,
    "state/real_features/sum": 0.41242426831740886,
    "state/real_features/abs": 0.8982172281248495,
    "state/real_features/l2": 0.21652458677338288,
    "state/step": 1.0,
  },
  "dfine_disc": {
    "metric/d_p": 0.7094050645828247,
    "metric/d_q": 0.6899261474609375,
    "metric/grad_norm": 1.0952553749084473,
    "metric/loss": 1.3993312120437622,
    "state/params/sum": 94.13526348954298,
    "state/params/abs": 259.00901169345116,
    "state/params/l2": 9.99235173228682,
    "state/opt_state/sum": 0.015145875994281067,
    "state/opt_state/abs": 4.630482802150977,
    "state/opt_state/l2": 0.10000209361113292,
    "state/opt_state/ints": 2.0,
    "state/step": 1.0,
  },
  "dfine_finetune": {
    "metric/grad_norm": 0.9040250778198242,
    "metric/loss": 3.548326015472412,
    "metric/nll": 3.4956777095794678,
    "metric/rkl": 0.05264797434210777,
    "state/params/sum": 90.55820323494439,
    "state/params/abs": 260.25751650840255,
    "state/params/l2": 10.00749413366751,
    "state/opt_state/sum": 0.028002473300466662,
    "state/opt_state/abs": 3.498523968146712,
    "state/opt_state/l2": 0.09040526481634902,
    "state/opt_state/ints": 2.0,
    "state/step": 1.0,
  },
}


def test_lm_train_step():
  _check(_summary(*_lm_step()), GOLDEN["lm"])


@pytest.mark.parametrize("loss", ["minimax", "wgan-gp"])
def test_gan_train_step(loss):
  _check(_summary(*_gan_step(loss)), GOLDEN[f"gan_{loss}"])


def test_ganbert_d_and_g_steps():
  _check(_summary(*_ganbert_steps()), GOLDEN["ganbert"])


def test_dfine_disc_step():
  _check(_summary(*_dfine_disc_step()), GOLDEN["dfine_disc"])


def test_dfine_finetune_step():
  _check(_summary(*_dfine_finetune_step()), GOLDEN["dfine_finetune"])
