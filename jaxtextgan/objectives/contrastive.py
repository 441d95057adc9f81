"""Contrastive fine-tuning of a sentence encoder on pairs of labeled rows, as one pure step (issue 14, item 6).

SetFit's first stage (Tunstall et al. 2022, sec. 3.1, with sentence-transformers' CosineSimilarityLoss), in JAX.
Pairs (x_a, x_b) of labeled rows carry y = 1 when their labels agree and y = 0 otherwise; with the encoder's
sentence vectors u = pool(BERT(x_a)), v = pool(BERT(x_b)) (dropout on, as in training):

  L_pair = E_(a,b) (cos(u, v) - y)^2,   cos(u, v) = u.v / (max(||u||, eps) max(||v||, eps))

minimised in the encoder's parameters by AdamW. Only the encoder is trained; what follows it (GAN-BERT's G and D,
or a logistic-regression head) starts from the result (`tasks.ganbert_contrastive`). Nothing here is jitted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtextgan import training
from jaxtextgan.models import bert

Array = jax.Array


def cosine_pair_loss(u_BD: Array, v_BD: Array, same_B: Array, eps: float = 1e-8) -> tuple[Array, dict]:
  """(mean (cos(u, v) - y)^2, metrics); `same_B` is y, 1 for pairs of one class and 0 otherwise."""
  u_BD, v_BD = u_BD.astype(jnp.float32), v_BD.astype(jnp.float32)
  norms_B = (jnp.maximum(jnp.linalg.norm(u_BD, axis=-1), eps) * jnp.maximum(jnp.linalg.norm(v_BD, axis=-1), eps))
  cos_B = jnp.sum(u_BD * v_BD, -1) / norms_B
  y_B = same_B.astype(jnp.float32)
  loss = jnp.mean(jnp.square(cos_B - y_B))
  positives = jnp.maximum(y_B.sum(), 1.0)
  negatives = jnp.maximum((1.0 - y_B).sum(), 1.0)
  return loss, {"cos_same": jnp.sum(cos_B * y_B) / positives, "cos_different": jnp.sum(cos_B * (1 - y_B)) / negatives}


def make_state_fn(bert_cfg: bert.BertConfig, opt_cfg):
  """A pure `rng -> TrainState` of a randomly initialised `BertEncoder` and AdamW (`training.make_optimizer`);
  the pre-trained weights are set afterwards, never closed over (as `objectives.ganbert.make_state_fn`)."""
  tx = training.make_optimizer(opt_cfg)[0]

  def make_state(rng):
    graphdef, params = nnx.split(bert.BertEncoder(bert_cfg, rngs=nnx.Rngs(params=rng)), nnx.Param)
    return training.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                               graphdef=graphdef, tx=tx)

  return make_state


def make_step(pooling: str = "mean"):
  """The pure `pair_step(state, batch, rng) -> (state, metrics)`.

  A batch is {'input_ids' (B, 2, T) int32, 'attention_mask' (B, 2, T) int32, 'same' (B,) int32}: pair b's two
  rows side by side, so a pair never straddles devices when the batch axis is sharded. The dropout key is
  fold_in(rng, step), so a resumed run draws the keys of an uninterrupted one.
  """

  def loss_fn(params, graphdef, batch, key):
    b, _, t = batch["input_ids"].shape
    encoder = nnx.merge(graphdef, params)
    vectors_2BD = encoder.encode(batch["input_ids"].reshape(2 * b, t), batch["attention_mask"].reshape(2 * b, t),
                                 pooling=pooling, dropout_key=key)
    vectors_B2D = vectors_2BD.reshape(b, 2, -1)
    return cosine_pair_loss(vectors_B2D[:, 0], vectors_B2D[:, 1], batch["same"])

  def pair_step(state: training.TrainState, batch, rng):
    """encoder <- AdamW(grad of L_pair). Advances `state.step`."""
    key = training.step_rng(rng, state.step)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.graphdef, batch, key)
    return state.apply_gradients(grads), {"loss": loss, "grad_norm": training.tree_l2_norm(grads), **aux}

  return pair_step
