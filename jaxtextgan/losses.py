"""Pure loss functions. Logits are fp32; masks weight positions (1 = counted)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_log_probs(logits_BTV: Array, targets_BT: Array) -> Array:
  """log p(target) per position, via a numerically stable log-softmax."""
  logits_BTV = logits_BTV.astype(jnp.float32)
  lse_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  picked_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  return picked_BT - lse_BT


def cross_entropy(logits_BTV: Array, targets_BT: Array, mask_BT: Array | None = None) -> tuple[Array, Array]:
  """Sum over counted positions of -log p(x_t | x_<t) (GAN seed eq. 1-2), and the number of counted positions."""
  nll_BT = -token_log_probs(logits_BTV, targets_BT)
  if mask_BT is None:
    mask_BT = jnp.ones_like(nll_BT)
  mask_BT = mask_BT.astype(jnp.float32)
  return jnp.sum(nll_BT * mask_BT), jnp.sum(mask_BT)


def correct_predictions(logits_BTV: Array, targets_BT: Array, mask_BT: Array | None = None) -> Array:
  """Number of counted positions whose argmax equals the target (next-token accuracy numerator)."""
  hit_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
  if mask_BT is not None:
    hit_BT = hit_BT * mask_BT.astype(jnp.float32)
  return jnp.sum(hit_BT)


def binary_logistic(logits: Array, labels: Array) -> Array:
  """Elementwise -[y log sigmoid(l) + (1-y) log(1 - sigmoid(l))], stable for any logit."""
  return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
