"""GAN-BERT's players (Croce et al. 2020, sec. 2): the classifier (BERT encoder + MLP head D) and the generator G.

The classifier maps a text x to h = pool(BERT(x)) in R^d, then D(h) = MLP(dropout(h)) to `num_outputs` logits
(k+1 for GAN-BERT, the last one "fake"; k for the supervised baseline) and D's hidden features f(h). G maps noise
z in R^latent to a fake sentence vector in R^d. `encoder_config` reads the encoder's BertConfig without its weights.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtextgan.errors import InputError
from jaxtextgan.models import bert, layers, mlp

Array = jax.Array


class Classifier(nnx.Module):
  """BERT encoder + discriminator head: (logits (B, C), D's hidden features f (B, H)); H = `hidden` or d."""

  def __init__(self, bert_cfg: bert.BertConfig, num_outputs: int, *, hidden: int = 0, dropout: float = 0.1,
               slope: float = 0.2, pooling: str = "mean", rngs: nnx.Rngs):
    d = bert_cfg.hidden_size
    self.encoder = bert.BertEncoder(bert_cfg, rngs=rngs)
    self.head = mlp.MLP(d, [hidden or d], num_outputs, dropout=dropout, slope=slope, in_axis="embed",
                        out_axis="classes", rngs=rngs)
    self.pooling = pooling
    self.dropout = dropout

  def sentence(self, input_ids_BT: Array, attention_mask_BT: Array, dropout_key: Array | None = None) -> Array:
    """h (B, d): the pooled sentence vector the head sees."""
    return self.encoder.encode(input_ids_BT, attention_mask_BT, pooling=self.pooling, dropout_key=dropout_key)

  def frozen_features(self, input_ids_BT: Array, attention_mask_BT: Array, frozen: int) -> Array:
    """What the frozen bottom computes, without dropout: the output (B, T, d) of the embeddings and layers
    [0, frozen), or h (B, d) when every layer is frozen. It never changes during training, so it can be cached."""
    hidden_BTD = self.encoder.run_layers(self.encoder.embeddings(input_ids_BT, jnp.zeros_like(input_ids_BT), None),
                                         attention_mask_BT, stop=frozen)
    if frozen == self.encoder.cfg.num_hidden_layers:
      return self.encoder.sentence_vector(hidden_BTD, attention_mask_BT, self.pooling)
    return hidden_BTD

  def sentence_from(self, batch: dict, dropout_key: Array | None = None, frozen: int = 0) -> Array:
    """h (B, d) of a batch: from its token ids, or from `frozen` (B, T, d) or (B, d), the cached output of the
    frozen bottom `frozen` layers (`frozen_features`), through the layers above it only."""
    if "frozen" not in batch:
      return self.sentence(batch["input_ids"], batch["attention_mask"], dropout_key)
    if batch["frozen"].ndim == 2:
      return batch["frozen"]
    layers_key = jax.random.split(dropout_key)[1] if dropout_key is not None else None  # as `encoder.__call__`
    hidden_BTD = self.encoder.run_layers(batch["frozen"], batch["attention_mask"], layers_key, start=frozen)
    return self.encoder.sentence_vector(hidden_BTD, batch["attention_mask"], self.pooling)

  def discriminate(self, h_BD: Array, dropout_key: Array | None = None) -> tuple[Array, Array]:
    """D(h): input dropout (as in the release), then the MLP; returns (logits, hidden features)."""
    in_key, mlp_key = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    return self.head(layers.dropout(h_BD, self.dropout, in_key), dropout_key=mlp_key)

  def __call__(self, input_ids_BT: Array, attention_mask_BT: Array, dropout_key: Array | None = None):
    enc_key, head_key = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    return self.discriminate(self.sentence(input_ids_BT, attention_mask_BT, enc_key), head_key)


def make_generator(bert_cfg: bert.BertConfig, latent_dim: int, *, hidden: int = 0, dropout: float = 0.1,
                   slope: float = 0.2, rngs: nnx.Rngs) -> mlp.MLP:
  """G: z (latent_dim) -> Dense -> leaky-ReLU -> dropout -> Dense -> h_fake (d); `hidden` 0 means d."""
  d = bert_cfg.hidden_size
  return mlp.MLP(latent_dim, [hidden or d], d, dropout=dropout, slope=slope, in_axis="latent", out_axis="embed",
                 rngs=rngs)


def encoder_config(directory: pathlib.Path, max_len: int, dropout: float | None = None) -> bert.BertConfig:
  """The BertConfig `hf_bert.load_bert(directory, max_len=, dropout=)` builds, from config.json alone: whether the
  checkpoint has a pooler comes from the names in its safetensors header (no weights are read), else True."""
  overrides: dict[str, Any] = dict(dtype="float32", param_dtype="float32", remat=False,
                                   pooler=_has_pooler(directory))
  if dropout is not None:
    overrides.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
  cfg = bert.BertConfig.from_hf_json(directory / "config.json", **overrides)
  if not 2 <= max_len <= cfg.max_position_embeddings:
    raise InputError(f"max_len={max_len} is out of range for {directory}: use 2..{cfg.max_position_embeddings}")
  return cfg


def _has_pooler(directory: pathlib.Path) -> bool:
  single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
  if single.is_file():
    from safetensors import safe_open
    with safe_open(str(single), framework="numpy") as f:
      names = list(f.keys())
  elif index.is_file():
    names = list(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
  else:
    return True
  return any(n.endswith("pooler.dense.weight") for n in names)
