"""GAN-BERT (Croce et al. 2020): an SS-GAN (Salimans et al. 2016) over BERT sentence vectors, as pure steps.

Seed paper, sections 2-3. A BERT encoder maps a text x to h = pool(BERT(x)) in R^d; the discriminator D (an MLP
with one leaky-ReLU hidden layer f(.) and dropout) gives k+1 logits, the last one the "fake" class; the generator G
(an MLP from z ~ N(0, I_100)) gives fake vectors h_fake in R^d (`models.classifier`). With p = softmax(D(h)) and
eps = 1e-8 (release), the seed's sec. 2 losses are:

  L_D,sup   = -E_{(x,y) labeled} log softmax(D(h_x)[:k])_y          cross-entropy over the k real classes only;
                                                                     unlabeled rows are masked out of the mean
  L_D,unsup = -E_{x real} log(1 - p_fake(h_x) + eps) - E_{z} log(p_fake(G(z)) + eps)
  L_D       = L_D,sup + L_D,unsup                                    minimised in (encoder, D)
  L_G,unsup = -E_z log(1 - p_fake(G(z)) + eps)
  L_G,fm    = || E_x f(h_x) - E_z f(G(z)) ||^2                       feature matching
  L_G       = L_G,unsup + L_G,fm                                     minimised in G only

The feature-matching term is the mean of the squared differences (the release's tf.reduce_mean) or, with
`feature_matching='sum'`, the paper's squared L2 norm (d_hidden times larger).

Updates never mix: `d_step` differentiates L_D in (encoder, D) with the fakes behind stop_gradient, so G is only
read; `g_step` differentiates L_G in G's params alone, so the encoder and D are only read. (The public PyTorch port
back-propagates both losses into both players; the TensorFlow release and this module do not.) One training
iteration is `d_step` then `g_step` on the same real batch; `g_step` advances `state.step`.

One D for both players, as in the seed (sec. 2) and its TensorFlow release, where L_D and L_G come from one forward
pass: the G-step's L_G,unsup and both sides of L_G,fm are taken through D *as the D-step found it*, before its
update. The D-step stores E_x f(h_x) of its forward pass over the real batch and D's head parameters as it read
them (`GanBertState.fm_head`); the G-step puts G(z) through that head, so E_x f(h_x) and E_z f(G(z)) come from the
same D, and the encoder does not run again. Dropout and noise keys are fold_in(fold_in(rng, step), 0) for D and
fold_in(., 1) for G, so a resumed run draws the same keys.

The baseline (`sup_step`) is the same encoder with the same MLP head over k classes, trained by L_D,sup alone.
Nothing here is jitted: `stage.run_stage` jits the steps, `predict` the prediction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxtextgan import sharding as shd
from jaxtextgan import training
from jaxtextgan.errors import InputError
from jaxtextgan.models import bert, classifier

Array = jax.Array

METHODS = ("ganbert", "baseline")
FEATURE_MATCHING = ("mean", "sum")
NOISE = ("normal", "uniform")


@dataclasses.dataclass(frozen=True)
class GanBertConfig:
  """Static hyper-parameters. `d_hidden`/`g_hidden` of 0 mean "the encoder width d" (the release's choice)."""
  num_classes: int
  method: str = "ganbert"
  latent_dim: int = 100
  d_hidden: int = 0
  g_hidden: int = 0
  dropout: float = 0.1
  slope: float = 0.2
  pooling: str = "mean"
  epsilon: float = 1e-8
  feature_matching: str = "mean"
  noise: str = "normal"
  freeze_layers: int = 0  # N > 0: the embeddings and the bottom N encoder layers get no updates (CPU budget)

  def __post_init__(self):
    if self.method not in METHODS:
      raise InputError(f"method={self.method!r} is unknown: use one of {', '.join(METHODS)}")
    if self.num_classes < 1:
      raise InputError(f"num_classes={self.num_classes}: a classifier needs at least one class")
    if self.pooling not in bert.POOLING_MODES:
      raise InputError(f"pooling={self.pooling!r} is unknown: use one of {', '.join(bert.POOLING_MODES)}")
    if self.feature_matching not in FEATURE_MATCHING:
      raise InputError(f"feature_matching={self.feature_matching!r} is unknown: use 'mean' (release) or 'sum' "
                       f"(paper's squared L2 norm)")
    if self.noise not in NOISE:
      raise InputError(f"noise={self.noise!r} is unknown: use 'normal' (paper) or 'uniform' (release)")
    if self.freeze_layers < 0:
      raise InputError(f"freeze_layers={self.freeze_layers} is negative: use 0 (train all) or N bottom layers")
    if not 0.0 <= self.dropout < 1.0:
      raise InputError(f"dropout={self.dropout} is out of range: use a rate in [0, 1)")

  @property
  def num_outputs(self) -> int:
    """k+1 logits for GAN-BERT (the last is "fake"), k for the baseline."""
    return self.num_classes + (1 if self.method == "ganbert" else 0)


@flax.struct.dataclass
class GanBertState:
  """Encoder+D (`d`: params and AdamW state) and G (`g`, None for the baseline) in one pytree.

  `step` counts training iterations (one D-step and one G-step each); `real_features` (d_hidden,) is E_x f(h_x)
  over the last D-step's real batch, the feature-matching target of the next G-step, and `fm_head` D's head
  parameters as that D-step read them (before its update), the D the next G-step puts G(z) through (both None
  for the baseline).
  """
  step: jax.Array
  d: training.TrainState
  g: training.TrainState | None
  real_features: jax.Array | None = None
  fm_head: Any = None


# ------------------------------------------------------------------------------------------------------ losses


def discriminator_loss(real_logits_BC: Array, fake_logits_FC: Array, labels_B: Array,
                       epsilon: float = 1e-8) -> tuple[Array, dict]:
  """L_D = L_D,sup + L_D,unsup (section 2); the fake class is the last of the C = k+1 logits.

  `labels_B` holds class ids in [0, k) for labeled rows and -1 (unlabeled) elsewhere; the supervised mean is over
  labeled rows only (0 when a batch has none), the unsupervised real term over every real row.
  """
  k = real_logits_BC.shape[-1] - 1
  sup, count = supervised_loss(real_logits_BC[:, :k], labels_B)
  p_fake_real_B = jax.nn.softmax(real_logits_BC.astype(jnp.float32), -1)[:, k]
  p_fake_fake_F = jax.nn.softmax(fake_logits_FC.astype(jnp.float32), -1)[:, k]
  unsup_real = -jnp.mean(jnp.log(1.0 - p_fake_real_B + epsilon))
  unsup_fake = -jnp.mean(jnp.log(p_fake_fake_F + epsilon))
  loss = sup + unsup_real + unsup_fake
  return loss, {"d_sup": sup, "d_unsup_real": unsup_real, "d_unsup_fake": unsup_fake, "labeled": count,
                "p_fake_real": p_fake_real_B.mean(), "p_fake_fake": p_fake_fake_F.mean()}


def generator_loss(fake_logits_FC: Array, real_features_BH: Array, fake_features_FH: Array,
                   epsilon: float = 1e-8, feature_matching: str = "mean") -> tuple[Array, dict]:
  """L_G = L_G,unsup + L_G,fm (section 2): -E log(1 - p_fake(G(z)) + eps) + ||E f(real) - E f(G(z))||^2, the
  squared norm as a mean (release) or sum (paper) over features."""
  k = fake_logits_FC.shape[-1] - 1
  p_fake_F = jax.nn.softmax(fake_logits_FC.astype(jnp.float32), -1)[:, k]
  unsup = -jnp.mean(jnp.log(1.0 - p_fake_F + epsilon))
  diff_H = real_features_BH.astype(jnp.float32).mean(0) - fake_features_FH.astype(jnp.float32).mean(0)
  fm = jnp.mean(jnp.square(diff_H)) if feature_matching == "mean" else jnp.sum(jnp.square(diff_H))
  return unsup + fm, {"g_unsup": unsup, "g_feature_matching": fm}


def supervised_loss(logits_BK: Array, labels_B: Array) -> tuple[Array, Array]:
  """(mean cross-entropy over rows with label >= 0, number of such rows); 0 when there are none."""
  mask_B = (labels_B >= 0).astype(jnp.float32)
  log_probs_BK = jax.nn.log_softmax(logits_BK.astype(jnp.float32), -1)
  nll_B = -jnp.take_along_axis(log_probs_BK, jnp.maximum(labels_B, 0)[:, None], axis=-1)[:, 0]
  count = mask_B.sum()
  return jnp.sum(nll_B * mask_B) / jnp.maximum(count, 1.0), count


def class_probabilities(logits_BC: Array, num_classes: int) -> Array:
  """p(y | x, real) over the k real classes: softmax of the first k logits, i.e. p_y / (1 - p_fake)."""
  return jax.nn.softmax(logits_BC[:, :num_classes].astype(jnp.float32), -1)


def _accuracy(logits_BK: Array, labels_B: Array) -> Array:
  mask_B = labels_B >= 0
  hits = (jnp.argmax(logits_BK, -1) == labels_B) & mask_B
  return hits.sum() / jnp.maximum(mask_B.sum(), 1)


# ------------------------------------------------------------------------------------------------------- state


def _player(module: nnx.Module, tx) -> training.TrainState:
  graphdef, params = nnx.split(module, nnx.Param)
  return training.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                             graphdef=graphdef, tx=tx)


def make_classifier(bert_cfg: bert.BertConfig, cfg: GanBertConfig, rngs: nnx.Rngs) -> classifier.Classifier:
  """Encoder + D with k+1 outputs (GAN-BERT) or k (baseline)."""
  return classifier.Classifier(bert_cfg, cfg.num_outputs, hidden=cfg.d_hidden, dropout=cfg.dropout, slope=cfg.slope,
                               pooling=cfg.pooling, rngs=rngs)


def freeze_bottom(num_layers: int) -> optax.GradientTransformation:
  """Zeroes the updates of the encoder's embeddings and of its bottom `num_layers` layers (rows [:N] of the
  stacked layer axis), leaving the rest alone. Chained before AdamW (clipping and moments never see the frozen
  gradients) and after it (no weight decay either)."""

  def frozen(path) -> tuple[bool, bool]:
    names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
    return "encoder" in names and "embeddings" in names, "encoder" in names and "layers" in names

  def mask(updates, params=None):
    del params

    def one(path, u):
      whole, stacked = frozen(path)
      if whole:
        return jnp.zeros_like(u)
      if stacked and num_layers > 0:
        keep = (jnp.arange(u.shape[0]) >= num_layers).astype(u.dtype)
        return u * keep.reshape((-1,) + (1,) * (u.ndim - 1))
      return u

    return jax.tree_util.tree_map_with_path(one, updates)

  return optax.stateless(mask)


def _encoder_and_head_optimizer(opt_cfg) -> optax.GradientTransformation:
  """AdamW for (encoder, D head); with `head_lr` > 0 the head gets its own rate and schedule shape (its own
  clipping norm too, since optax.multi_transform splits the tree), else one optimizer over both (the release)."""
  head_lr = float(dict(opt_cfg).get("head_lr", 0.0))
  if not head_lr:
    return training.make_optimizer(opt_cfg)[0]
  labels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
    lambda path, _: "head" if getattr(path[0], "key", None) == "head" else "encoder", params)
  return optax.multi_transform({"encoder": training.make_optimizer(opt_cfg)[0],
                                "head": training.make_optimizer({**dict(opt_cfg), "lr": head_lr})[0]}, labels)


def make_state_fn(bert_cfg: bert.BertConfig, cfg: GanBertConfig, d_opt_cfg, g_opt_cfg=None):
  """A pure `rng -> GanBertState` initialiser with a random encoder (for `jax.eval_shape` and sharded init).

  Pre-trained encoder weights are set afterwards (`tasks.ganbert.with_encoder`), never closed over, so they are
  not baked into a compiled program as constants; AdamW's moments start at zero whatever the weights.
  """
  d_tx = _encoder_and_head_optimizer(d_opt_cfg)
  if cfg.freeze_layers:
    if cfg.freeze_layers > bert_cfg.num_hidden_layers:
      raise InputError(f"freeze_layers={cfg.freeze_layers} exceeds the encoder's {bert_cfg.num_hidden_layers} layers")
    d_tx = optax.chain(freeze_bottom(cfg.freeze_layers), d_tx, freeze_bottom(cfg.freeze_layers))
  g_tx = training.make_optimizer(g_opt_cfg or d_opt_cfg)[0] if cfg.method == "ganbert" else None

  def make_state(rng):
    d_key, g_key = jax.random.split(rng)
    d = _player(make_classifier(bert_cfg, cfg, nnx.Rngs(params=d_key)), d_tx)
    g, real_features, fm_head = None, None, None
    if g_tx is not None:
      g = _player(classifier.make_generator(bert_cfg, cfg.latent_dim, hidden=cfg.g_hidden, dropout=cfg.dropout,
                                            slope=cfg.slope, rngs=nnx.Rngs(params=g_key)), g_tx)
      real_features = jnp.zeros((cfg.d_hidden or bert_cfg.hidden_size,), jnp.float32)
      fm_head = jax.tree.map(jnp.zeros_like, d.params["head"])  # set by every D-step before a G-step reads it
    return GanBertState(step=jnp.zeros((), jnp.int32), d=d, g=g, real_features=real_features, fm_head=fm_head)

  return make_state


# ------------------------------------------------------------------------------------------------------- steps


def _batch_constraint(x: Array, mesh: Mesh | None) -> Array:
  """Pins the leading axis of a value made inside the step (the noise) to ('data','fsdp'), like the real batch."""
  return x if mesh is None else jax.lax.with_sharding_constraint(x, shd.batch_sharding(mesh, x.ndim))


def make_steps(cfg: GanBertConfig, mesh: Mesh | None = None):
  """Pure `d_step`, `g_step`, `sup_step`: (state, batch, rng) -> (state, metrics), and `predict_step`.

  A batch is {'input_ids' (B,T) int32, 'attention_mask' (B,T) int32, 'labels' (B,) int32, -1 = unlabeled}, and
  with `freeze_layers` > 0 it may carry 'frozen', the frozen bottom's cached output (`Classifier.frozen_features`).
  """
  k = cfg.num_classes

  def noise(key, batch_size: int) -> Array:
    shape = (batch_size, cfg.latent_dim)
    z = jax.random.normal(key, shape) if cfg.noise == "normal" else jax.random.uniform(key, shape)
    return _batch_constraint(z, mesh)

  def fakes(g_graphdef, g_params, key: Array, batch_size: int) -> Array:
    """h_fake = G(z), one fake per real row (as in the release)."""
    z_key, drop_key = jax.random.split(key)
    h_fake, _ = nnx.merge(g_graphdef, g_params)(noise(z_key, batch_size), dropout_key=drop_key)
    return h_fake

  def d_loss_fn(d_params, d_graphdef, batch, h_fake_FD, key):
    model = nnx.merge(d_graphdef, d_params)
    enc_key, real_key, fake_key = jax.random.split(key, 3)
    h_real_BD = model.sentence_from(batch, enc_key, cfg.freeze_layers)
    real_logits, real_features_BH = model.discriminate(h_real_BD, real_key)
    fake_logits, _ = model.discriminate(h_fake_FD, fake_key)
    loss, aux = discriminator_loss(real_logits, fake_logits, batch["labels"], cfg.epsilon)
    aux["train_accuracy"] = _accuracy(real_logits[:, :k], batch["labels"])
    return loss, (aux, real_features_BH.astype(jnp.float32).mean(0))

  def d_step(state: GanBertState, batch, rng):
    """(encoder, D) <- AdamW(grad of L_D = L_D,sup + L_D,unsup); G's fakes enter behind stop_gradient. Stores
    E_x f(h_x) of this real batch and D's head before the update: the one D of the next `g_step`'s L_G."""
    key = jax.random.fold_in(training.step_rng(rng, state.step), 0)
    g_key, loss_key = jax.random.split(key)
    h_fake = jax.lax.stop_gradient(fakes(state.g.graphdef, state.g.params, g_key, batch["input_ids"].shape[0]))
    (loss, (aux, real_features)), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
      state.d.params, state.d.graphdef, batch, h_fake, loss_key)
    metrics = {"d_loss": loss, "d_grad_norm": training.tree_l2_norm(grads),
               "d_head_grad_norm": training.tree_l2_norm(grads["head"]), **aux}
    return state.replace(d=state.d.apply_gradients(grads), real_features=jax.lax.stop_gradient(real_features),
                         fm_head=state.d.params["head"]), metrics

  def g_loss_fn(g_params, state: GanBertState, batch_size: int, key):
    g_key, fake_key = jax.random.split(key)
    # D enters as a constant: only g_params are differentiated, so nothing flows back into D or the encoder. It is
    # the D of the preceding D-step's forward pass (its head before the update), the D of E_x f(h_x).
    model = nnx.merge(state.d.graphdef, nnx.State({**state.d.params, "head": state.fm_head}))
    h_fake = fakes(state.g.graphdef, g_params, g_key, batch_size)
    fake_logits, fake_features = model.discriminate(h_fake, fake_key)
    return generator_loss(fake_logits, state.real_features[None, :], fake_features, cfg.epsilon,
                          cfg.feature_matching)

  def g_step(state: GanBertState, batch, rng):
    """G <- AdamW(grad in G of L_G = L_G,unsup + L_G,fm), one fake per row of `batch`, through the D the preceding
    D-step read (`fm_head`), the D of its stored E_x f(h_x); nothing of D is updated. Advances `state.step`."""
    key = jax.random.fold_in(training.step_rng(rng, state.step), 1)
    (loss, aux), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g.params, state,
                                                                     batch["input_ids"].shape[0], key)
    metrics = {"g_loss": loss, "g_grad_norm": training.tree_l2_norm(grads), **aux}
    return state.replace(step=state.step + 1, g=state.g.apply_gradients(grads)), metrics

  def sup_loss_fn(d_params, d_graphdef, batch, key):
    model = nnx.merge(d_graphdef, d_params)
    enc_key, head_key = jax.random.split(key)  # as `Classifier.__call__`
    logits, _ = model.discriminate(model.sentence_from(batch, enc_key, cfg.freeze_layers), head_key)
    loss, count = supervised_loss(logits, batch["labels"])
    return loss, {"labeled": count, "train_accuracy": _accuracy(logits, batch["labels"])}

  def sup_step(state: GanBertState, batch, rng):
    """Baseline: (encoder, head) <- AdamW(grad of L_D,sup over k classes, no fake class). Advances `state.step`."""
    key = jax.random.fold_in(training.step_rng(rng, state.step), 0)
    (loss, aux), grads = jax.value_and_grad(sup_loss_fn, has_aux=True)(state.d.params, state.d.graphdef, batch, key)
    metrics = {"loss": loss, "d_grad_norm": training.tree_l2_norm(grads), **aux}
    return state.replace(step=state.step + 1, d=state.d.apply_gradients(grads)), metrics

  def predict_step(d_params, d_graphdef, batch):
    """p(y | x, real) over the k real classes (B, k), without dropout."""
    logits, _ = nnx.merge(d_graphdef, d_params)(batch["input_ids"], batch["attention_mask"])
    return class_probabilities(logits, k)

  return d_step, g_step, sup_step, predict_step
