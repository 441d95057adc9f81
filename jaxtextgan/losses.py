"""Pure loss functions. Logits are fp32; masks weight positions (1 = counted)."""

from __future__ import annotations

import functools

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


def cross_entropy_and_hits(logits_BTV: Array, targets_BT: Array,
                           mask_BT: Array | None = None) -> tuple[Array, Array, Array]:
  """(`cross_entropy` sum, counted positions, correct predictions) from one max over the vocabulary.

  A position is correct when the target's logit attains the maximum: the same as argmax == target except on exact
  ties, and it reuses the softmax's max instead of a separate arg-reduction (slow and unvectorised on XLA:CPU;
  about 10% of the output layer's step time on GPT-2's 50k vocabulary).
  """
  logits_BTV = logits_BTV.astype(jnp.float32)
  # The max only shifts the exponent for stability: no gradient flows through it (as in jax.nn.logsumexp).
  max_BT = jax.lax.stop_gradient(jnp.max(logits_BTV, axis=-1))
  lse_BT = max_BT + jnp.log(jnp.sum(jnp.exp(logits_BTV - max_BT[..., None]), axis=-1))
  picked_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  mask_BT = jnp.ones_like(picked_BT) if mask_BT is None else mask_BT.astype(jnp.float32)
  hit_BT = jax.lax.stop_gradient((picked_BT >= max_BT).astype(jnp.float32))
  return jnp.sum((lse_BT - picked_BT) * mask_BT), jnp.sum(mask_BT), jnp.sum(hit_BT * mask_BT)


def chunked_cross_entropy_and_hits(h_BTD: Array, project, targets_BT: Array, mask_BT: Array | None,
                                   chunk: int) -> tuple[Array, Array, Array]:
  """`cross_entropy_and_hits(project(h_BTD), targets_BT, mask_BT)`, `chunk` positions at a time.

  Each chunk's logits (B, chunk, V) are made, reduced and dropped inside a `lax.scan` under `jax.checkpoint`, and
  made again in the backward pass, so no pass holds the (B, T, V) logits: at GPT-2's 50,257 words and T = 1024 they
  are 200 MB per sequence in fp32 (results/tpu.md). `project` maps (B, C, D) hidden states to (B, C, V) logits.
  """
  b, t, d = h_BTD.shape
  if t % chunk:
    raise ValueError(f"loss chunk {chunk} does not divide the sequence length {t}: use a divisor of {t}")
  n = t // chunk
  mask_BT = jnp.ones((b, t), jnp.float32) if mask_BT is None else mask_BT.astype(jnp.float32)
  to_chunks = lambda x: jnp.moveaxis(x.reshape((b, n, chunk) + x.shape[2:]), 1, 0)  # noqa: E731

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def one(h_BCD, targets_BC, mask_BC):
    return cross_entropy_and_hits(project(h_BCD), targets_BC, mask_BC)

  def body(totals, xs):
    return jax.tree.map(jnp.add, totals, one(*xs)), None

  zero = jnp.zeros((), jnp.float32)
  totals, _ = jax.lax.scan(body, (zero, zero, zero), (to_chunks(h_BTD), to_chunks(targets_BT), to_chunks(mask_BT)))
  return totals


def binary_logistic(logits: Array, labels: Array) -> Array:
  """Elementwise -[y log sigmoid(l) + (1-y) log(1 - sigmoid(l))], stable for any logit."""
  return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


# --- GAN losses (GAN seed eq. 4-5; WGAN-GP of the WGAN review) ---------------------------------------------------


def gan_discriminator_loss(real_logits_B: Array, fake_logits_B: Array) -> Array:
  """Eq. (4): -E[log D(x)] - E[log(1 - D(G(z)))], with D = sigmoid(logit)."""
  return (jnp.mean(binary_logistic(real_logits_B, jnp.ones_like(real_logits_B)))
          + jnp.mean(binary_logistic(fake_logits_B, jnp.zeros_like(fake_logits_B))))


def gan_generator_loss(fake_logits_B: Array) -> Array:
  """Eq. (5), the non-saturating generator loss: -E[log D(G(z))]."""
  return jnp.mean(binary_logistic(fake_logits_B, jnp.ones_like(fake_logits_B)))


def wgan_critic_loss(real_scores_B: Array, fake_scores_B: Array) -> Array:
  """E[D(fake)] - E[D(real)]: minimising it maximises the Kantorovich-Rubinstein estimate of W(P_r, P_g)."""
  return jnp.mean(fake_scores_B) - jnp.mean(real_scores_B)


def wgan_generator_loss(fake_scores_B: Array) -> Array:
  """-E[D(G(z))]."""
  return -jnp.mean(fake_scores_B)


def gradient_penalty(critic_fn, real_BTV: Array, fake_BTV: Array, eps_B: Array) -> tuple[Array, Array]:
  """E[(||grad_x D(x)||_2 - 1)^2] at x = eps real + (1 - eps) fake (Gulrajani et al. 2017), and the mean norm.

  `critic_fn` maps (B, T, V) inputs to (B,) scores with no interaction between rows, so the gradient of their sum
  gives each row's own input gradient.
  """
  eps_B11 = eps_B.astype(jnp.float32)[:, None, None]
  x_BTV = eps_B11 * real_BTV.astype(jnp.float32) + (1.0 - eps_B11) * fake_BTV.astype(jnp.float32)
  grad_BTV = jax.grad(lambda x: jnp.sum(critic_fn(x)))(x_BTV)
  # sqrt(sum + tiny): the norm's gradient stays finite where the input gradient vanishes.
  norm_B = jnp.sqrt(jnp.sum(jnp.square(grad_BTV), axis=(1, 2)) + 1e-12)
  return jnp.mean(jnp.square(norm_B - 1.0)), jnp.mean(norm_B)
