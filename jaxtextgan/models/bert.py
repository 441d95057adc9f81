"""BERT encoder (Devlin et al. 2019) in Flax NNX; `hf_bert.load_bert` fills it from a Hugging Face directory.

GAN-BERT (Croce et al. 2020) puts its discriminator on top of a BERT sentence vector. The layers are stacked on a
leading 'layers' axis and run with `lax.scan`, as in `gpt2.py`, so compile time does not grow with depth.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtextgan.errors import InputError
from jaxtextgan.models import layers

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Activations as named in Hugging Face configs: 'gelu' is the exact erf form.
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "relu": jax.nn.relu,
}
POOLING_MODES = ("auto", "pooler", "cls", "mean")


def as_dtype(name_or_dtype) -> Any:
  if isinstance(name_or_dtype, str):
    if name_or_dtype not in _DTYPES:
      raise InputError(f"unknown dtype {name_or_dtype!r}: use one of {sorted(_DTYPES)}")
    return _DTYPES[name_or_dtype]
  return name_or_dtype


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters, named as in Hugging Face's `config.json`; `pooler` adds BERT's dense+tanh pooler."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  hidden_act: str = "gelu"
  pooler: bool = True
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  remat: bool = False

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise InputError(f"BERT hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                       f"{self.num_attention_heads}: fix the config")
    if self.hidden_act not in _ACTIVATIONS:
      raise InputError(f"BERT hidden_act={self.hidden_act!r} is not supported: use one of {sorted(_ACTIVATIONS)}")
    as_dtype(self.dtype), as_dtype(self.param_dtype)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def replace(self, **kwargs) -> "BertConfig":
    return dataclasses.replace(self, **kwargs)

  @classmethod
  def from_hf_json(cls, path, **overrides) -> "BertConfig":
    """Reads a Hugging Face BERT `config.json`; keyword overrides (dtype, remat, ...) win over the file."""
    path = pathlib.Path(path)
    if not path.is_file():
      raise InputError(f"BERT config {path} does not exist: pass a Hugging Face BERT directory with config.json")
    try:
      raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise InputError(f"BERT config {path} is not valid JSON ({e}): restore the file") from None
    model_type = raw.get("model_type", "bert")
    if model_type != "bert":
      raise InputError(f"{path} describes model_type={model_type!r}: only BERT checkpoints (model_type 'bert') "
                       f"can be loaded")
    position = raw.get("position_embedding_type", "absolute")
    if position != "absolute":
      raise InputError(f"{path} uses position_embedding_type={position!r}: only 'absolute' is supported")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in raw.items() if k in names and k not in ("dtype", "param_dtype", "remat", "pooler")}
    values.update(overrides)
    return cls(**values)


class Embeddings(nnx.Module):
  """word + position + token-type embeddings, then LayerNorm and dropout."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
    init = nnx.initializers.normal(0.02)
    self.word = layers.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.position = layers.param(rngs, init, (cfg.max_position_embeddings, cfg.hidden_size), pdtype,
                                 (None, "embed"))
    self.token_type = layers.param(rngs, init, (cfg.type_vocab_size, cfg.hidden_size), pdtype, (None, "embed"))
    self.norm = layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=pdtype, rngs=rngs)
    self.rate = cfg.hidden_dropout_prob
    self.dtype = dtype

  def __call__(self, inputs: Array, token_type_ids_BT: Array, dropout_key: Array | None) -> Array:
    t = inputs.shape[1]
    x_BTD = self.word(inputs)
    x_BTD = x_BTD + self.position[...][:t].astype(self.dtype)
    x_BTD = x_BTD + jnp.take(self.token_type[...], token_type_ids_BT, axis=0).astype(self.dtype)
    return layers.dropout(self.norm(x_BTD), self.rate, dropout_key)


class Layer(nnx.Module):
  """Post-LN Transformer encoder layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
    d, h, dh, f = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size
    dense = lambda i, o, ia, oa: layers.Dense(i, o, in_axes=ia, out_axes=oa, dtype=dtype, param_dtype=pdtype,
                                              rngs=rngs)
    self.query = dense(d, (h, dh), "embed", ("heads", "head_dim"))
    self.key = dense(d, (h, dh), "embed", ("heads", "head_dim"))
    self.value = dense(d, (h, dh), "embed", ("heads", "head_dim"))
    self.attn_out = dense((h, dh), d, ("heads", "head_dim"), "embed")
    self.attn_norm = layers.LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=pdtype, rngs=rngs)
    self.mlp_in = dense(d, f, "embed", "mlp")
    self.mlp_out = dense(f, d, "mlp", "embed")
    self.mlp_norm = layers.LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=pdtype, rngs=rngs)
    self.act = _ACTIVATIONS[cfg.hidden_act]
    self.hidden_rate = cfg.hidden_dropout_prob
    self.attn_rate = cfg.attention_probs_dropout_prob
    self.dtype = dtype

  def __call__(self, x_BTD: Array, key_mask_BS: Array, dropout_key: Array | None) -> Array:
    keys = jax.random.split(dropout_key, 3) if dropout_key is not None else (None,) * 3
    q_BTHK, k_BSHK, v_BSHK = self.query(x_BTD), self.key(x_BTD), self.value(x_BTD)
    logits_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BSHK, preferred_element_type=jnp.float32)
    logits_BHTS = logits_BHTS * (q_BTHK.shape[-1] ** -0.5)
    # Padding keys get the most negative fp32, so even an all-padding row stays finite (uniform weights).
    logits_BHTS = jnp.where(key_mask_BS[:, None, None, :], logits_BHTS, jnp.finfo(jnp.float32).min)
    probs_BHTS = jax.nn.softmax(logits_BHTS, axis=-1).astype(self.dtype)
    probs_BHTS = layers.dropout(probs_BHTS, self.attn_rate, keys[0])
    ctx_BTHK = jnp.einsum("bhts,bshk->bthk", probs_BHTS, v_BSHK)
    x_BTD = self.attn_norm(x_BTD + layers.dropout(self.attn_out(ctx_BTHK), self.hidden_rate, keys[1]))
    h_BTF = self.act(self.mlp_in(x_BTD))
    return self.mlp_norm(x_BTD + layers.dropout(self.mlp_out(h_BTF), self.hidden_rate, keys[2]))


class BertEncoder(nnx.Module):
  """hidden_BTD = BertEncoder(input_ids_BT, attention_mask_BT); `sentence_vector` pools it to (B, D)."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
    self.embeddings = Embeddings(cfg, rngs=rngs)

    self.layers = layers.stacked(lambda r: Layer(cfg, rngs=r), cfg.num_hidden_layers, rngs)
    # The pooler's output dim gets no logical name: naming both dims 'embed' would map one mesh axis twice.
    self.pooler = (layers.Dense(cfg.hidden_size, cfg.hidden_size, in_axes="embed", out_axes=None, dtype=dtype,
                                param_dtype=pdtype, rngs=rngs) if cfg.pooler else None)

  def __call__(self, input_ids_BT: Array, attention_mask_BT: Array, token_type_ids_BT: Array | None = None, *,
               dropout_key: Array | None = None) -> Array:
    """Last hidden states (B, T, D). `input_ids_BT` may also be soft one-hots (B, T, V), embedded as probs @ E."""
    cfg = self.cfg
    b, t = input_ids_BT.shape[:2]
    if t > cfg.max_position_embeddings:
      raise InputError(f"sequence length {t} exceeds BERT max_position_embeddings={cfg.max_position_embeddings}: "
                       f"truncate the inputs (e.g. max_len={cfg.max_position_embeddings})")
    if attention_mask_BT.shape != (b, t):
      raise InputError(f"attention_mask has shape {attention_mask_BT.shape}, expected {(b, t)}: pass one mask "
                       f"entry per input token")
    if token_type_ids_BT is None:
      token_type_ids_BT = jnp.zeros((b, t), jnp.int32)
    emb_key, layers_key = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    x_BTD = self.embeddings(input_ids_BT, token_type_ids_BT, emb_key)
    return self.run_layers(x_BTD, attention_mask_BT, layers_key)

  def run_layers(self, x_BTD: Array, attention_mask_BT: Array, dropout_key: Array | None = None, *,
                 start: int = 0, stop: int | None = None) -> Array:
    """Layers [start, stop) on x_BTD, the output of layer start-1 (of the embeddings for start 0), under
    `lax.scan` over the stacked parameters' rows; layer i draws the i-th of L dropout keys whatever the range."""
    cfg = self.cfg
    stop = cfg.num_hidden_layers if stop is None else stop
    use_dropout = dropout_key is not None
    key_mask_BS = attention_mask_BT.astype(bool)
    layer_keys = (jax.random.split(dropout_key, cfg.num_hidden_layers) if use_dropout
                  else jnp.zeros((cfg.num_hidden_layers,), jnp.uint32))
    graphdef, layer_state = nnx.split(self.layers)
    if (start, stop) != (0, cfg.num_hidden_layers):
      layer_state, layer_keys = jax.tree.map(lambda a: a[start:stop], (layer_state, layer_keys))

    def body(x, xs):
      state, key = xs
      return nnx.merge(graphdef, state)(x, key_mask_BS, key if use_dropout else None), None

    if cfg.remat:
      body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    x_BTD, _ = jax.lax.scan(body, x_BTD, (layer_state, layer_keys))
    return x_BTD

  def sentence_vector(self, hidden_BTD: Array, attention_mask_BT: Array, mode: str = "auto") -> Array:
    """(B, D) sentence vector from the hidden states.

    'pooler': BERT's tanh(W h_[CLS] + b) (what GAN-BERT's release feeds its discriminator); 'cls': the raw
    [CLS] state; 'mean': mean over unpadded tokens (sentence-transformers); 'auto': 'pooler' if present, else 'cls'.
    """
    if mode not in POOLING_MODES:
      raise InputError(f"pooling mode {mode!r} is unknown: use one of {list(POOLING_MODES)}")
    if mode == "auto":
      mode = "pooler" if self.pooler is not None else "cls"
    if mode == "pooler":
      if self.pooler is None:
        raise InputError("pooling mode 'pooler' needs a checkpoint with pooler weights: use 'cls' or 'mean'")
      return jnp.tanh(self.pooler(hidden_BTD[:, 0]))
    if mode == "cls":
      return hidden_BTD[:, 0]
    mask_BT1 = attention_mask_BT.astype(jnp.float32)[..., None]
    total_BD = (hidden_BTD.astype(jnp.float32) * mask_BT1).sum(1)
    # Clamp as sentence-transformers does, so an all-padding row gives zeros rather than NaN.
    return (total_BD / jnp.maximum(mask_BT1.sum(1), 1e-9)).astype(hidden_BTD.dtype)

  def encode(self, input_ids_BT: Array, attention_mask_BT: Array, token_type_ids_BT: Array | None = None, *,
             pooling: str = "auto", dropout_key: Array | None = None) -> Array:
    """Sentence vectors (B, D): `__call__` followed by `sentence_vector`."""
    hidden_BTD = self(input_ids_BT, attention_mask_BT, token_type_ids_BT, dropout_key=dropout_key)
    return self.sentence_vector(hidden_BTD, attention_mask_BT, pooling)
