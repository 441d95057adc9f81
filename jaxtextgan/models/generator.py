"""Generators G(z), z ~ N(0, I), that emit straight-through Gumbel-Softmax tokens (GAN seed, section 3.3).

Both return `(y_BTV, ids_BT, logits_BTV)`: y are one-hots in the forward pass whose gradient is the soft
relaxation's (eq. 6), ids = argmax(y), and the logits each token was drawn from.

* `GPT2Generator` (default): the GPT-2 decoder. z enters as the initial embedding: position 0 gets
  E[bos] + W z, so an MLE-pretrained LM starts as an LM that samples from `bos`, and z perturbs it. Each step draws
  y_t ~ GumbelSoftmax(logits_t / temperature, tau) and feeds y_t @ E back as the next input, so the gradient of a
  loss on y_t reaches E and every earlier step. Decoding runs in `lax.scan` with the GPT-2 KV cache.
* `MLPGenerator`: the seed's simplest G, an MLP z -> T x V logits and one Gumbel-Softmax per position.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtextgan import gumbel
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2, layers, mlp

Array = jax.Array

KINDS = ("gpt2", "mlp")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """`kind` in {gpt2, mlp}; `length` tokens T per sample; `forbidden_ids` are never drawn (e.g. a start token)."""
  kind: str = "gpt2"
  length: int = 20
  latent_dim: int = 64
  bos_id: int = 0
  forbidden_ids: tuple[int, ...] = ()
  mlp_hidden: tuple[int, ...] = (256,)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise InputError(f"generator={self.kind!r} is unknown: use one of {', '.join(KINDS)}")
    if self.length < 1:
      raise InputError(f"generator length={self.length} is invalid: use a positive number of tokens")
    if self.latent_dim < 1:
      raise InputError(f"latent_dim={self.latent_dim} is invalid: use a positive latent size")


def _forbid_mask(vocab_size: int, forbidden: Sequence[int]) -> Array:
  """0 for allowed tokens, a large negative number for forbidden ones (added to fp32 logits)."""
  mask = jnp.zeros((vocab_size,), jnp.float32)
  if forbidden:
    mask = mask.at[jnp.asarray(forbidden)].set(-1e9)
  return mask


class GPT2Generator(nnx.Module):
  """Autoregressive G: a GPT-2 (`self.lm`, LM-checkpoint compatible) plus a latent projection W: z -> E-space."""

  def __init__(self, cfg: GeneratorConfig, lm_cfg: gpt2.GPT2Config, *, rngs: nnx.Rngs):
    if cfg.length > lm_cfg.max_len:
      raise InputError(f"generator length={cfg.length} exceeds model.max_len={lm_cfg.max_len}: "
                       "lower the length or raise max_len")
    self.cfg = cfg
    self.lm = gpt2.GPT2(lm_cfg, rngs=rngs)
    # Zero init: at step 0 G is exactly the (pretrained) LM sampling after `bos`; W still gets gradient z^T dL/dx_0.
    self.latent = layers.Dense(cfg.latent_dim, lm_cfg.d_model, in_axes="latent", out_axes="embed", use_bias=False,
                               kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, z_BZ: Array, key: Array, tau, *, hard: bool = True, temperature=1.0):
    cfg, lm = self.cfg, self.lm
    batch, length = z_BZ.shape[0], cfg.length
    max_pos = lm.cfg.max_len - 1
    mask_V = _forbid_mask(lm.cfg.vocab_size, cfg.forbidden_ids)
    bos_B1 = jnp.full((batch, 1), cfg.bos_id, jnp.int32)
    x_B1D = lm.embed(bos_B1, jnp.zeros((1,), jnp.int32)) + self.latent(z_BZ)[:, None, :].astype(lm.wte.dtype)
    cache = lm.init_cache(batch, length)

    def step(carry, xs):
      x_B1D, cache = carry
      t, step_key = xs
      h_B1D, cache = lm.backbone(x_B1D, t[None], cache=cache, cache_index=t)
      logits_BV = lm.logits(h_B1D)[:, 0] / temperature + mask_V
      y_BV = gumbel.gumbel_softmax(logits_BV, step_key, tau, hard)
      # The next input is y_t @ E: the path by which G's loss reaches earlier steps and E. A straight-through y_t
      # is one-hot in value, so it is looked up by id and given the product's gradient (same numbers, no V x D
      # matmul forward).
      next_pos = jnp.minimum(t + 1, max_pos)[None]
      if hard:
        next_B1D = lm.embed(jnp.argmax(y_BV, -1)[:, None], next_pos) + gumbel.one_hot_gradient(
          y_BV[:, None, :], lm.wte.embedding[...]).astype(lm.wte.dtype)
      else:
        next_B1D = lm.embed(y_BV[:, None, :], next_pos)
      return (next_B1D, cache), (y_BV, logits_BV)

    steps = jnp.arange(length, dtype=jnp.int32)
    _, (y_TBV, logits_TBV) = jax.lax.scan(step, (x_B1D, cache), (steps, jax.random.split(key, length)))
    y_BTV = jnp.swapaxes(y_TBV, 0, 1)
    return y_BTV, jnp.argmax(y_BTV, axis=-1).astype(jnp.int32), jnp.swapaxes(logits_TBV, 0, 1)


class MLPGenerator(nnx.Module):
  """G(z) = GumbelSoftmax(MLP(z) reshaped to (T, V)): positions are independent given z."""

  def __init__(self, cfg: GeneratorConfig, vocab_size: int, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.vocab_size = vocab_size
    self.net = mlp.MLP(cfg.latent_dim, cfg.mlp_hidden, cfg.length * vocab_size, dropout=0.0, in_axis="latent",
                       out_axis=None, rngs=rngs)

  def __call__(self, z_BZ: Array, key: Array, tau, *, hard: bool = True, temperature=1.0):
    logits_BTV = self.net(z_BZ)[0].reshape(z_BZ.shape[0], self.cfg.length, self.vocab_size).astype(jnp.float32)
    logits_BTV = logits_BTV / temperature + _forbid_mask(self.vocab_size, self.cfg.forbidden_ids)
    y_BTV = gumbel.gumbel_softmax(logits_BTV, key, tau, hard)
    return y_BTV, jnp.argmax(y_BTV, axis=-1).astype(jnp.int32), logits_BTV


def make_generator(cfg: GeneratorConfig, lm_cfg: gpt2.GPT2Config, *, rngs: nnx.Rngs) -> nnx.Module:
  """The generator `cfg.kind` names; the MLP uses only lm_cfg.vocab_size."""
  if cfg.kind == "gpt2":
    return GPT2Generator(cfg, lm_cfg, rngs=rngs)
  return MLPGenerator(cfg, lm_cfg.vocab_size, rngs=rngs)


def inject_lm_params(graphdef, params, lm_params):
  """G's params with its GPT-2 (`lm`) replaced by `lm_params`, e.g. from an LM checkpoint; pure, jit-friendly."""
  model = nnx.merge(graphdef, params)
  nnx.update(model.lm, lm_params)
  return nnx.state(model, nnx.Param)


def lm_params(params):
  """The GPT-2 part of a GPT2Generator's params (to evaluate G as an LM)."""
  return params["lm"]
