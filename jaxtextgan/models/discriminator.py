"""Discriminators D(x) over token sequences x given as ids (B,T) or one-hot / soft tokens (B,T,V).

Soft tokens are embedded as probs @ E (GAN seed, section 3.3), so D is differentiable in its input: G's
Gumbel-Softmax gradient flows through it, and WGAN-GP can take grad_x D(x) in the one-hot space. Each returns one
logit per sequence (B,): sigma(D) is the probability "real" of eq. (4)-(5), or the raw score is a WGAN critic.
Straight-through tokens (exactly one-hot in value) can be passed with `one_hot=True`: looked up by id, with the
gradient of the soft product (`gumbel.one_hot_gradient`), which saves the (B,T,V) x (V,D) matmul.

* `TransformerDiscriminator` (default): GPT-2 blocks (causal mask) over the embedded sequence, pooled by the mean
  over positions (so the pooled vector sees every token) or the last position, then a linear head. Its encoder
  can start as a copy of G's pre-trained LM (`inject_encoder_params`), i.e. from word features instead of random
  ones.
* `CNNDiscriminator`: parallel 1-D convolutions of several widths over the embedded sequence, ReLU, max-pool
  over time, and a linear head (Kim 2014; the discriminator of SeqGAN-style text GANs).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtextgan import gumbel
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2, layers

Array = jax.Array

KINDS = ("transformer", "cnn")
POOLINGS = ("mean", "last")


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
  """`kind` in {transformer, cnn}. The transformer uses n_layer/d_model/n_head/d_ff; the CNN d_model/widths/filters."""
  kind: str = "transformer"
  vocab_size: int = 0
  max_len: int = 64
  n_layer: int = 2
  d_model: int = 64
  n_head: int = 2
  d_ff: int = 128
  dropout: float = 0.0
  pooling: str = "mean"
  widths: tuple[int, ...] = (2, 3, 4)
  filters: int = 64
  # The transformer's encoder as a full GPT-2 config (e.g. G's LM, to start D from its weights); overrides the
  # size fields above.
  encoder: gpt2.GPT2Config | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise InputError(f"discriminator={self.kind!r} is unknown: use one of {', '.join(KINDS)}")
    if self.pooling not in POOLINGS:
      raise InputError(f"discriminator pooling={self.pooling!r} is unknown: use one of {', '.join(POOLINGS)}")

  def encoder_config(self) -> gpt2.GPT2Config:
    if self.encoder is not None:
      return self.encoder
    return gpt2.GPT2Config(vocab_size=self.vocab_size, max_len=self.max_len, n_layer=self.n_layer,
                           d_model=self.d_model, n_head=self.n_head, d_ff=self.d_ff, dropout=self.dropout)


class TransformerDiscriminator(nnx.Module):
  """logit = w . pool(GPT2Blocks(x @ E + P)) + b."""

  def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
    self.pooling = cfg.pooling
    encoder_cfg = cfg.encoder_config()
    self.encoder = gpt2.GPT2(encoder_cfg, rngs=rngs)
    self.head = layers.Dense(encoder_cfg.d_model, 1, in_axes="embed", out_axes=None, rngs=rngs)

  def __call__(self, x: Array, *, dropout_key: Array | None = None, one_hot: bool = False) -> Array:
    """`one_hot=True` promises x is exactly one-hot in value (straight-through tokens): embedded by lookup."""
    positions_T = jnp.arange(x.shape[1])
    keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    if one_hot:
      x_BTD = self.encoder.embed(jnp.argmax(x, -1), positions_T) + gumbel.one_hot_gradient(
        x, self.encoder.wte.embedding[...]).astype(self.encoder.wte.dtype)
      x_BTD = layers.dropout(x_BTD, self.encoder.cfg.dropout, keys[0])  # as GPT2.embed would
    else:
      x_BTD = self.encoder.embed(x, positions_T, keys[0])
    h_BTD, _ = self.encoder.backbone(x_BTD, positions_T, dropout_key=keys[1])
    pooled_BD = h_BTD.mean(axis=1) if self.pooling == "mean" else h_BTD[:, -1]
    return self.head(pooled_BD)[:, 0].astype(jnp.float32)


class Conv1D(nnx.Module):
  """Valid 1-D convolution over time: y_t = sum_{w<W} x_{t+w} K_w + b, (B,T,D) -> (B,T-W+1,F)."""

  def __init__(self, width: int, in_dim: int, filters: int, *, rngs: nnx.Rngs):
    self.width = width
    self.kernel = layers.param(rngs, nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                               (width, in_dim, filters), jnp.float32, (None, "embed", "mlp"))
    self.bias = layers.param(rngs, nnx.initializers.zeros, (filters,), jnp.float32, ("mlp",))

  def __call__(self, x_BTD: Array) -> Array:
    t_out = x_BTD.shape[1] - self.width + 1
    windows_BTWD = jnp.stack([x_BTD[:, w:w + t_out] for w in range(self.width)], axis=2)
    return jnp.einsum("btwd,wdf->btf", windows_BTWD, self.kernel[...]) + self.bias[...]


class CNNDiscriminator(nnx.Module):
  """logit = w . concat_W max_t ReLU(Conv_W(x @ E)) + b."""

  def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
    if not cfg.widths or min(cfg.widths) < 1 or max(cfg.widths) > cfg.max_len:
      raise InputError(f"discriminator widths={cfg.widths} are invalid: use widths in [1, max_len={cfg.max_len}]")
    self.embed = layers.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
    self.convs = nnx.List([Conv1D(w, cfg.d_model, cfg.filters, rngs=rngs) for w in cfg.widths])
    self.head = layers.Dense(cfg.filters * len(cfg.widths), 1, in_axes="mlp", out_axes=None, rngs=rngs)
    self.dropout = cfg.dropout

  def __call__(self, x: Array, *, dropout_key: Array | None = None, one_hot: bool = False) -> Array:
    """`one_hot=True` promises x is exactly one-hot in value (straight-through tokens): embedded by lookup."""
    if one_hot:
      x_BTD = self.embed(jnp.argmax(x, -1)) + gumbel.one_hot_gradient(x, self.embed.embedding[...])
    else:
      x_BTD = self.embed(x)
    pooled = [jax.nn.relu(conv(x_BTD)).max(axis=1) for conv in self.convs]
    features_BF = layers.dropout(jnp.concatenate(pooled, axis=-1), self.dropout, dropout_key)
    return self.head(features_BF)[:, 0].astype(jnp.float32)


def make_discriminator(cfg: DiscriminatorConfig, *, rngs: nnx.Rngs) -> nnx.Module:
  if cfg.vocab_size < 2:
    raise InputError(f"discriminator vocab_size={cfg.vocab_size} is invalid: it must match the tokenizer")
  if cfg.kind == "transformer":
    return TransformerDiscriminator(cfg, rngs=rngs)
  return CNNDiscriminator(cfg, rngs=rngs)


def inject_encoder_params(graphdef, params, lm_params):
  """D's params with its transformer encoder replaced by a GPT-2's (same config); pure, jit-friendly."""
  model = nnx.merge(graphdef, params)
  nnx.update(model.encoder, lm_params)
  return nnx.state(model, nnx.Param)
