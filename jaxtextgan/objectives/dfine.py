"""Fine-tuning an LM with a discriminator (Popov & Kudinov, "Fine-tuning of Language Models with Discriminator").

Notation (paper §2): q0 is the frozen initial LM, qθ the model being fine-tuned, p the data distribution. The
discriminator has the LM's architecture; a sigmoid of its vocabulary logits l(w|c) gives

  r(w|c) = σ(l(w|c)) = P(w was drawn from q0 rather than from p | c),

so the *model* side is labelled 1 and the *real* side 0, as in eq. (4)-(5). All losses work with the logit l, since
log r = log σ(l), log(1 - r) = log σ(-l) and r / (1 - r) = exp(l): nothing is divided or exponentiated that could
overflow. Clipping r to [ε, 1 - ε] is the same as clipping l to ±log((1 - ε)/ε).

  eq. (6)   D̂(c, w*) = -Σ_w q0(w|c) log r(w|c) - log(1 - r(w*|c))       exact over the vocabulary
  eq. (8)   p̂(w|c)  = q0(w|c) (1 - r)/r,  i.e. log p̂ = log q0 - l
  eq. (11)  t        = qθ(w|c)/q0(w|c) · r/(1 - r),  i.e. log t = log qθ - log q0 + l
  eq. (12)  L̂(c, w*) = -log qθ(w*|c) + t log t   (t at w*)
  variant   L̂_KL     = -log qθ(w*|c) + KL(qθ(·|c) ‖ p̂(·|c))
                     = -log qθ(w*|c) + Σ_w qθ(w|c)(log qθ(w|c) - log p̂(w|c))

"Without discriminator" (Table 2) is r ≡ 1/2, i.e. l ≡ 0 and p̂ = q0.

The stage steps are pure functions of (state, frozen, batch, rng): `frozen` holds the parameters that do not train
(q0, and the discriminator while fine-tuning), passed as jit arguments so they are sharded like the trained ones and
never baked into the compiled program as constants.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtextgan import losses, training
from jaxtextgan import sharding as shd
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import lm

Array = jax.Array

LOSSES = ("dfine", "dfine_kl", "ce")
DEFAULT_EPS = 1e-7


# --- pure losses ------------------------------------------------------------------------------------------------


def _check_vocab(a: Array, b: Array, what_a: str, what_b: str) -> None:
  if a.shape[-1] != b.shape[-1]:
    raise InputError(f"{what_a} cover {a.shape[-1]} words but {what_b} cover {b.shape[-1]}: the discriminator "
                     "must score exactly the LM's vocabulary; give both the same vocab_size")


def logit_bound(eps: float) -> float:
  """|l| ≤ log((1 - ε)/ε) is r ∈ [ε, 1 - ε]."""
  if not 0.0 < eps < 0.5:
    raise InputError(f"eps={eps} is invalid: r is clipped to [eps, 1 - eps], so use 0 < eps < 0.5 (e.g. 1e-7)")
  return math.log1p(-eps) - math.log(eps)


def clip_logit(d_logits: Array, eps: float = DEFAULT_EPS) -> Array:
  """The discriminator logit with r = σ(l) clipped to [ε, 1 - ε]."""
  bound = logit_bound(eps)
  return jnp.clip(d_logits.astype(jnp.float32), -bound, bound)


def r_to_logit(r: Array, eps: float = DEFAULT_EPS) -> Array:
  """l = log r - log(1 - r) of r clipped to [ε, 1 - ε]; finite for r exactly 0 or 1."""
  r = jnp.clip(jnp.asarray(r, jnp.float32), eps, 1.0 - eps)
  return jnp.log(r) - jnp.log1p(-r)


def _mask(mask_BT: Array | None, targets_BT: Array) -> Array:
  if mask_BT is None:
    return jnp.ones(targets_BT.shape, jnp.float32)
  if mask_BT.ndim == 1:  # a row mask from padded evaluation batches
    mask_BT = jnp.broadcast_to(mask_BT[:, None], targets_BT.shape)
  return mask_BT.astype(jnp.float32)


def _pick(x_BTV: Array, targets_BT: Array) -> Array:
  return jnp.take_along_axis(x_BTV, targets_BT[..., None], axis=-1)[..., 0]


def discriminator_terms(d_logits_BTV: Array, q0_logp_BTV: Array, targets_BT: Array) -> tuple[Array, Array]:
  """Per position (D^(q), D^(p)) of eq. (6): -Σ_w q0(w|c) log r(w|c) and -log(1 - r(w*|c))."""
  _check_vocab(d_logits_BTV, q0_logp_BTV, "discriminator logits", "the LM's log-probabilities")
  d_logits_BTV = d_logits_BTV.astype(jnp.float32)
  q0_BTV = jnp.exp(q0_logp_BTV.astype(jnp.float32))
  d_q_BT = -jnp.sum(q0_BTV * jax.nn.log_sigmoid(d_logits_BTV), axis=-1)
  d_p_BT = -jax.nn.log_sigmoid(-_pick(d_logits_BTV, targets_BT))
  return d_q_BT, d_p_BT


def discriminator_loss(d_logits_BTV: Array, q0_logp_BTV: Array, targets_BT: Array, mask_BT: Array | None = None):
  """Eq. (6) summed over counted positions: (total, count, {"d_q": Σ D^(q), "d_p": Σ D^(p)}).

  The q0 expectation is exact over the vocabulary; the p expectation is the real next word w*. Its minimum over
  r is at r = q0/(q0 + p) (eq. 7), where the loss equals log 4 per position if q0 = p.
  """
  m_BT = _mask(mask_BT, targets_BT)
  d_q_BT, d_p_BT = discriminator_terms(d_logits_BTV, q0_logp_BTV, targets_BT)
  d_q, d_p = jnp.sum(d_q_BT * m_BT), jnp.sum(d_p_BT * m_BT)
  return d_q + d_p, jnp.sum(m_BT), {"d_q": d_q, "d_p": d_p}


def log_p_hat(q0_logp_BTV: Array, d_logits_BTV: Array | None, eps: float = DEFAULT_EPS) -> Array:
  """Eq. (8) in log space: log p̂ = log q0 + log(1 - r) - log r = log q0 - l; r ≡ 1/2 (l = 0) when no logits."""
  q0_logp_BTV = q0_logp_BTV.astype(jnp.float32)
  if d_logits_BTV is None:
    return q0_logp_BTV
  _check_vocab(d_logits_BTV, q0_logp_BTV, "discriminator logits", "the LM's log-probabilities")
  return q0_logp_BTV - clip_logit(d_logits_BTV, eps)


def t_log_t(log_t: Array) -> Array:
  """t log t from log t (eq. 12's reverse-KL term); exp only of log t, never of a ratio of probabilities."""
  return jnp.exp(log_t) * log_t


def dfine_token_loss(logq_BT: Array, logq0_BT: Array, d_logit_BT: Array | None, eps: float = DEFAULT_EPS):
  """Eq. (11)-(12) at the true word: (L̂, -log qθ, t log t) per position, with log t = log qθ - log q0 + clip(l)."""
  log_t = logq_BT - jax.lax.stop_gradient(logq0_BT)
  if d_logit_BT is not None:
    log_t = log_t + jax.lax.stop_gradient(clip_logit(d_logit_BT, eps))
  rkl = t_log_t(log_t)
  return -logq_BT + rkl, -logq_BT, rkl


def finetune_loss(logits_BTV: Array, q0_logits_BTV: Array, d_logits_BTV: Array | None, targets_BT: Array,
                  mask_BT: Array | None = None, *, kind: str = "dfine", eps: float = DEFAULT_EPS):
  """The fine-tuning objective summed over counted positions: (total, count, {"nll", "rkl"} sums).

  kind 'dfine': eq. (12), the t log t estimate of KL(qθ ‖ p) at the true word;
  kind 'dfine_kl': the exact reverse KL Σ_w qθ(w) log(qθ(w)/p̂(w)) over the vocabulary, p̂ of eq. (8);
  kind 'ce': plain cross-entropy (rkl reported as 0).
  d_logits_BTV None means r ≡ 1/2 (the paper's "without discriminator"). q0 and the discriminator get no gradient.
  """
  if kind not in LOSSES:
    raise InputError(f"finetune loss {kind!r} is unknown: use one of {', '.join(LOSSES)}")
  _check_vocab(logits_BTV, q0_logits_BTV, "the fine-tuned LM's logits", "q0's logits")
  m_BT = _mask(mask_BT, targets_BT)
  logq_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  logq0_BTV = jax.lax.stop_gradient(jax.nn.log_softmax(q0_logits_BTV.astype(jnp.float32), axis=-1))
  logq_BT = _pick(logq_BTV, targets_BT)
  nll_BT = -logq_BT
  if kind == "ce":
    rkl_BT = jnp.zeros_like(nll_BT)
  elif kind == "dfine":
    d_BT = None if d_logits_BTV is None else _pick(d_logits_BTV, targets_BT)
    if d_logits_BTV is not None:
      _check_vocab(d_logits_BTV, logits_BTV, "discriminator logits", "the LM's logits")
    _, _, rkl_BT = dfine_token_loss(logq_BT, _pick(logq0_BTV, targets_BT), d_BT, eps)
  else:
    d = None if d_logits_BTV is None else jax.lax.stop_gradient(d_logits_BTV)
    log_phat_BTV = log_p_hat(logq0_BTV, d, eps)
    rkl_BT = jnp.sum(jnp.exp(logq_BTV) * (logq_BTV - log_phat_BTV), axis=-1)
  nll, rkl = jnp.sum(nll_BT * m_BT), jnp.sum(rkl_BT * m_BT)
  return nll + rkl, jnp.sum(m_BT), {"nll": nll, "rkl": rkl}


# --- states -----------------------------------------------------------------------------------------------------


HEAD = ("lm_head", "out_bias", "norm_f")  # the output layer and the final layer norm that feeds it


def _names(path) -> list:
  return [getattr(k, "key", getattr(k, "name", None)) for k in path]


def parse_train_layers(spec: str) -> int | None:
  """'all' -> None (every parameter trains), 'head' -> 0, 'top:N' -> N (the head and the top N blocks)."""
  spec = str(spec)
  if spec == "all":
    return None
  if spec == "head":
    return 0
  top = spec.partition("top:")[2]
  if spec.startswith("top:") and top.isdigit() and int(top) >= 1:
    return int(top)
  raise InputError(f"train_layers={spec!r} is invalid: use 'all', 'head' or 'top:N' with N >= 1")


def train_mask(params, spec: str):
  """A tree like `params` of 0/1 multipliers: 1 where `spec` (`parse_train_layers`) trains the parameter.

  The blocks are stacked (L, ...) in layer order (gpt2's scan), so 'top:N' is the mask arange(L) >= L - N on their
  leading axis; embeddings (wte, wpe) train only with 'all'.
  """
  top = parse_train_layers(spec)

  def mask(path, x):
    names = _names(path)
    if top is None or any(n in HEAD for n in names):
      return jnp.ones((), x.dtype)
    if "blocks" in names:
      n_layer = x.shape[0]
      return (jnp.arange(n_layer) >= n_layer - top).astype(x.dtype).reshape((n_layer,) + (1,) * (x.ndim - 1))
    return jnp.zeros((), x.dtype)
  return jax.tree_util.tree_map_with_path(mask, params)


def freeze_layers(spec: str) -> optax.GradientTransformation:
  """Multiplies updates by `train_mask(params, spec)`: before the optimizer (frozen gradients neither count in the
  clipping norm nor fill Adam's moments) and after it (no weight decay moves a frozen parameter)."""
  def scale(updates, state, params=None):
    return jax.tree.map(lambda u, m: u * m, updates, train_mask(updates, spec)), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), scale)


def make_tx(opt_cfg) -> optax.GradientTransformation:
  """AdamW (training.make_optimizer) or, with opt_cfg.name == 'sgd', plain SGD after global-norm clipping; with
  opt_cfg.train_layers other than 'all' (`parse_train_layers`), the other parameters stay frozen."""
  get = opt_cfg.get if hasattr(opt_cfg, "get") else (lambda k, d=None: getattr(opt_cfg, k, d))
  name = get("name", "adamw")
  if name == "adamw":
    tx = training.make_optimizer(opt_cfg)[0]
  elif name == "sgd":
    schedule = training.learning_rate_schedule(get("lr"), get("total_steps"), get("warmup_steps", 0),
                                               get("end_lr_fraction", 0.1), get("schedule", "cosine"))
    chain = [optax.clip_by_global_norm(get("grad_clip_norm"))] if get("grad_clip_norm", 0.0) else []
    tx = optax.chain(*chain, optax.sgd(schedule))
  else:
    raise InputError(f"optimizer.name={name!r} is unknown: use 'adamw' or 'sgd'")
  layers = str(get("train_layers", "all") or "all")
  if parse_train_layers(layers) is None:
    return tx
  return optax.chain(freeze_layers(layers), tx, freeze_layers(layers))


def make_state_fn(model_cfg: gpt2.GPT2Config, opt_cfg) -> Callable[[Array], training.TrainState]:
  """A pure `rng -> TrainState` initialiser (the LM, the discriminator and the fine-tuned LM share it)."""
  return lm.state_fn_with_tx(model_cfg, make_tx(opt_cfg))


def with_params(state: training.TrainState, params) -> training.TrainState:
  """`state` restarted from a copy of `params` (same tree) with their fresh optimizer state.

  The copy keeps the caller's arrays valid when the train step donates the state (the frozen q0 that the
  fine-tuned model starts from, for instance).
  """
  params = jax.tree.map(jnp.copy, params)
  return state.replace(step=jnp.zeros((), jnp.int32), params=params, opt_state=state.tx.init(params))


def init_state(model_cfg: gpt2.GPT2Config, opt_cfg, rng, mesh, params=None):
  """(state, shardings) created in their sharded layout; with `params`, the state starts from a copy of them."""
  state, shardings = training.init_sharded_state(make_state_fn(model_cfg, opt_cfg), rng, mesh)
  if params is not None:
    state = jax.jit(with_params, out_shardings=shardings)(state, params)
  return state, shardings


def param_shardings(model_cfg: gpt2.GPT2Config, mesh):
  """(abstract parameter tree, its shardings) of a model, for restoring or placing frozen parameters."""

  def make(rng):
    return nnx.split(gpt2.GPT2(model_cfg, rngs=nnx.Rngs(params=rng)), nnx.Param)[1]

  abstract = jax.eval_shape(make, jax.random.key(0))
  return abstract, shd.state_shardings(abstract, mesh)


def graphdef_of(model_cfg: gpt2.GPT2Config):
  """The static graph of a model (its parameters come from elsewhere)."""
  return nnx.split(nnx.eval_shape(lambda: gpt2.GPT2(model_cfg, rngs=nnx.Rngs(params=0))), nnx.Param)[0]


def zero_output_layer(params):
  """Parameters with the untied output projection and output bias set to 0, so σ(logits) = 1/2 everywhere.

  A discriminator initialised from q0 this way starts at p̂ = q0 (eq. 8 with r = 1/2) and keeps q0's features.
  """
  def zero(path, x):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return jnp.zeros_like(x) if ("lm_head" in names or "out_bias" in names) else x
  return jax.tree_util.tree_map_with_path(zero, params)


def q0_mass(graphdef, params, batch) -> Array:
  """Σ over counted positions of q0(·|c): (V,), the expected count of every word under q0 on real contexts."""
  logits = _logits(graphdef, params, batch["inputs"])
  m = _mask(batch.get("mask"), batch["targets"])
  return jnp.einsum("btv,bt->v", jax.nn.softmax(logits.astype(jnp.float32), axis=-1), m)


def unigram_logit(q0_mass_V, counts_V, pseudo_count: float = 0.5) -> Array:
  """The best context-free discriminator: l(w) = log(Q_w / P_w), Q_w = Σ_c q0(w|c), P_w = #w in the data.

  Eq. (6) with l(w|c) = b_w is Σ_w [Q_w (-log σ(b_w)) + P_w (-log σ(-b_w))], minimised by σ(b_w) = Q_w/(Q_w + P_w).
  Q_w > 0 always (a softmax); the pseudo-count only keeps words absent from the sample (P_w = 0) finite. Used as
  the discriminator's initial output bias, it puts r right on words whose q0 is off by a context-free factor (the
  perturbed word of §3, with Q_w/P_w ~ 1e-7) before any training.
  """
  q = jnp.maximum(jnp.asarray(q0_mass_V, jnp.float32), jnp.finfo(jnp.float32).tiny)
  p = jnp.asarray(counts_V, jnp.float32)
  return jnp.log(q) - jnp.log(jnp.where(p > 0, p, pseudo_count))


def set_output_bias_vector(params, bias_V):
  """Parameters with the whole output bias replaced by `bias_V`."""
  def put(path, x):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return jnp.asarray(bias_V, x.dtype).reshape(x.shape) if "out_bias" in names else x
  return jax.tree_util.tree_map_with_path(put, params)


def set_output_bias(params, word: int, value: float):
  """The "perturbed model" of §3: the output bias of one word set to `value` (a large negative number)."""
  def put(path, x):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return x.at[word].set(value) if "out_bias" in names else x
  return jax.tree_util.tree_map_with_path(put, params)


# --- stage steps and evaluation sums ------------------------------------------------------------------------------


def _logits(graphdef, params, inputs, dropout_key=None):
  return nnx.merge(graphdef, params)(inputs, dropout_key=dropout_key)


@functools.lru_cache(maxsize=None)
def make_disc_step(q0_graphdef) -> Callable:
  """Discriminator stage: (state, frozen={"q0"}, batch, rng) -> (state, metrics), one optimizer step on eq. (6).

  Contexts are the real ones of the batch only (§2.1); q0 runs without dropout, the discriminator with its own.
  Memoised: equal graphs give the same function, so `training.jit_step` compiles it once for every stage.
  """
  def step(state: training.TrainState, frozen, batch, rng):
    q0_logp = jax.nn.log_softmax(jax.lax.stop_gradient(_logits(q0_graphdef, frozen["q0"], batch["inputs"])), -1)
    key = training.step_rng(rng, state.step)

    def loss_fn(params):
      d_logits = _logits(state.graphdef, params, batch["inputs"], key)
      total, count, aux = discriminator_loss(d_logits, q0_logp, batch["targets"], batch.get("mask"))
      return total / jnp.maximum(count, 1.0), (aux, count)

    (loss, (aux, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    n = jnp.maximum(count, 1.0)
    metrics = {"loss": loss, "d_q": aux["d_q"] / n, "d_p": aux["d_p"] / n, "grad_norm": training.tree_l2_norm(grads)}
    return state.apply_gradients(grads), metrics

  return step


def disc_sums(graphdef, q0_graphdef, params, q0_params, batch) -> dict[str, Array]:
  """Sums {d_q, d_p, count, r_real, r_model} of eq. (6) for the discriminator on real contexts.

  r_real = Σ r(w*|c) over true words, r_model = Σ E_{q0} r(w|c): a good discriminator has r_model > r_real.
  """
  q0_logp = jax.nn.log_softmax(_logits(q0_graphdef, q0_params, batch["inputs"]), -1)
  d_logits = _logits(graphdef, params, batch["inputs"])
  m = _mask(batch.get("mask"), batch["targets"])
  _, count, aux = discriminator_loss(d_logits, q0_logp, batch["targets"], m)
  r = jax.nn.sigmoid(d_logits)
  return {"d_q": aux["d_q"], "d_p": aux["d_p"], "count": count,
          "r_real": jnp.sum(_pick(r, batch["targets"]) * m),
          "r_model": jnp.sum(jnp.sum(jnp.exp(q0_logp) * r, -1) * m)}


def summarize_disc_eval(t) -> dict[str, float]:
  n = max(float(t["count"]), 1.0)
  return {"loss": (float(t["d_q"]) + float(t["d_p"])) / n, "d_q": float(t["d_q"]) / n, "d_p": float(t["d_p"]) / n,
          "r_real": float(t["r_real"]) / n, "r_model": float(t["r_model"]) / n, "log4": math.log(4.0)}


@functools.lru_cache(maxsize=None)
def make_finetune_step(q0_graphdef, disc_graphdef=None, *, kind: str = "dfine", eps: float = DEFAULT_EPS) -> Callable:
  """Fine-tune stage: (state, frozen={"q0"[, "disc"]}, batch, rng) -> (state, metrics) on eq. (12) (or a variant).

  Without `disc_graphdef` (or without frozen["disc"]) r ≡ 1/2: the "without discriminator" ablation. Memoised
  like `make_disc_step`.
  """
  if kind not in LOSSES:
    raise InputError(f"finetune loss {kind!r} is unknown: use one of {', '.join(LOSSES)}")

  def step(state: training.TrainState, frozen, batch, rng):
    inputs = batch["inputs"]
    q0_logits = jax.lax.stop_gradient(_logits(q0_graphdef, frozen["q0"], inputs))
    d_logits = None
    if disc_graphdef is not None and "disc" in frozen and kind != "ce":
      d_logits = jax.lax.stop_gradient(_logits(disc_graphdef, frozen["disc"], inputs))
    key = training.step_rng(rng, state.step)

    def loss_fn(params):
      logits = _logits(state.graphdef, params, inputs, key)
      total, count, aux = finetune_loss(logits, q0_logits, d_logits, batch["targets"], batch.get("mask"),
                                        kind=kind, eps=eps)
      return total / jnp.maximum(count, 1.0), (aux, count)

    (loss, (aux, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    n = jnp.maximum(count, 1.0)
    metrics = {"loss": loss, "nll": aux["nll"] / n, "rkl": aux["rkl"] / n, "grad_norm": training.tree_l2_norm(grads)}
    return state.apply_gradients(grads), metrics

  return step


def exact_reverse_kl(logits_BTV: Array, q0_logits_BTV: Array, d_logits_BTV: Array | None,
                     eps: float = DEFAULT_EPS) -> Array:
  """KL(qθ ‖ p̂) over the vocabulary per position, p̂ of eq. (8) normalised over V: p̂ ∝ q0 (1 - r)/r.

  Eq. (8) sums to 1 only at the optimal discriminator (eq. 7); normalised, the KL is ≥ 0 for any r.
  """
  logq_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  log_phat_BTV = log_p_hat(jax.nn.log_softmax(q0_logits_BTV.astype(jnp.float32), axis=-1), d_logits_BTV, eps)
  log_phat_BTV = log_phat_BTV - jax.nn.logsumexp(log_phat_BTV, axis=-1, keepdims=True)
  return jnp.sum(jnp.exp(logq_BTV) * (logq_BTV - log_phat_BTV), axis=-1)


def finetune_sums(graphdef, q0_graphdef, disc_graphdef, eps: float, params, q0_params, disc_params,
                  batch) -> dict[str, Array]:
  """Sums for Table 2: nll (CE), rkl (the eq. 10-12 estimate Σ t log t at true words), rkl_exact
  (`exact_reverse_kl`), correct and count. Without `disc_graphdef`, r ≡ 1/2."""
  inputs, targets = batch["inputs"], batch["targets"]
  m = _mask(batch.get("mask"), targets)
  logits = _logits(graphdef, params, inputs)
  q0_logits = _logits(q0_graphdef, q0_params, inputs)
  d_logits = _logits(disc_graphdef, disc_params, inputs) if disc_graphdef is not None else None
  _, count, aux = finetune_loss(logits, q0_logits, d_logits, targets, m, kind="dfine", eps=eps)
  return {"nll_sum": aux["nll"], "rkl_sum": aux["rkl"], "count": count,
          "rkl_exact_sum": jnp.sum(exact_reverse_kl(logits, q0_logits, d_logits, eps) * m),
          "correct": losses.correct_predictions(logits, targets, m)}


def summarize_finetune_eval(t) -> dict[str, float]:
  """Table 2 columns: loss = CE + reverse-KL estimate, perplexity = exp(CE)."""
  n = max(float(t["count"]), 1.0)
  nll, rkl = float(t["nll_sum"]) / n, float(t["rkl_sum"]) / n
  return {"loss": nll + rkl, "nll": nll, "perplexity": math.exp(nll), "rkl": rkl,
          "rkl_exact": float(t["rkl_exact_sum"]) / n, "accuracy": float(t["correct"]) / n, "tokens": int(n)}


def token_log_probs(graphdef, params, batch) -> Array:
  """log q(w_t | c_t) of every target (B, T), for per-token tables (Table 1)."""
  logits = _logits(graphdef, params, batch["inputs"])
  return losses.token_log_probs(logits, batch["targets"])
