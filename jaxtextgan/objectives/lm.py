"""Language-model objective: MLE on next tokens (GAN seed eq. 1-2), perplexity and next-token accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtextgan import losses, training
from jaxtextgan.models import gpt2


def make_state_fn(model_cfg: gpt2.GPT2Config, opt_cfg):
  """A pure `rng -> TrainState` initialiser (for `jax.eval_shape` and sharded init)."""
  tx, _ = training.make_optimizer(opt_cfg)
  return state_fn_with_tx(model_cfg, tx)


def state_fn_with_tx(model_cfg: gpt2.GPT2Config, tx):
  """`make_state_fn` for an optax transformation built elsewhere (e.g. dfine's AdamW-or-SGD)."""

  def make_state(rng):
    model = gpt2.GPT2(model_cfg, rngs=nnx.Rngs(params=rng))
    graphdef, params = nnx.split(model, nnx.Param)
    return training.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                               graphdef=graphdef, tx=tx)

  return make_state


def init_state(model_cfg: gpt2.GPT2Config, opt_cfg, rng, mesh):
  """(state, shardings), each array created directly in its sharded layout."""
  return training.init_sharded_state(make_state_fn(model_cfg, opt_cfg), rng, mesh)


def lm_loss(params, graphdef, batch, dropout_key):
  """Mean token NLL over counted positions, and (nll_sum, correct, count) for metrics; with `model.loss_chunk`
  the logits are made that many positions at a time (`losses.chunked_cross_entropy_and_hits`)."""
  model = nnx.merge(graphdef, params)
  mask_BT = batch.get("mask")
  if mask_BT is not None and mask_BT.ndim == 1:  # a row mask from padded evaluation batches
    mask_BT = jnp.broadcast_to(mask_BT[:, None], batch["targets"].shape)
  chunk = model.cfg.loss_chunk
  if chunk and chunk < batch["inputs"].shape[1]:
    h_BTD, _ = model.hidden(batch["inputs"], dropout_key=dropout_key)
    nll_sum, count, correct = losses.chunked_cross_entropy_and_hits(h_BTD, model.logits, batch["targets"], mask_BT,
                                                                    chunk)
  else:
    # One max over the vocabulary serves the softmax and the accuracy (results/perf.md).
    nll_sum, count, correct = losses.cross_entropy_and_hits(model(batch["inputs"], dropout_key=dropout_key),
                                                            batch["targets"], mask_BT)
  return nll_sum / jnp.maximum(count, 1.0), (nll_sum, correct, count)


def train_step(state: training.TrainState, batch, rng):
  """One AdamW step on the mean next-token NLL. Dropout keys are fold_in(rng, step)."""
  dropout_key = training.step_rng(rng, state.step)
  grad_fn = jax.value_and_grad(lm_loss, has_aux=True)
  (loss, (_, correct, count)), grads = grad_fn(state.params, state.graphdef, batch, dropout_key)
  new_state = state.apply_gradients(grads)
  metrics = {"loss": loss, "accuracy": correct / jnp.maximum(count, 1.0), "grad_norm": training.tree_l2_norm(grads)}
  return new_state, metrics


def eval_step(state: training.TrainState, batch):
  """Sums for exact corpus-level perplexity and accuracy: {nll_sum, correct, count}."""
  _, (nll_sum, correct, count) = lm_loss(state.params, state.graphdef, batch, None)
  return {"nll_sum": nll_sum, "correct": correct, "count": count}


def summarize_eval(totals) -> dict[str, float]:
  """Perplexity = exp(total NLL / tokens); accuracy = correct / tokens."""
  count = max(float(totals["count"]), 1.0)
  nll = float(totals["nll_sum"]) / count
  return {"nll": nll, "perplexity": float(jnp.exp(nll)), "accuracy": float(totals["correct"]) / count,
          "tokens": int(totals["count"])}
