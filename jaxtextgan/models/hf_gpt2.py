"""GPT-2 weights to and from a local Hugging Face directory (`config.json` + `model.safetensors`).

HF's Conv1D stores weights as (in, out); `c_attn` packs q, k, v along `out`. Our kernels are (D, H, K) for q/k/v and
(H, K, D) for the attention output. Blocks are stacked on a leading layer axis, or one tree
per block when `scan_layers=False`. `load_gpt2` imports a directory; `save_gpt2` (with `config_to_hf` and
`weights_to_hf`) writes one that `transformers.GPT2LMHeadModel.from_pretrained` loads, and that `load_gpt2` turns
back into the same config and parameters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2

# Our fields with no GPT-2 counterpart that only choose how the model runs; `config_to_hf` keeps them under
# "jaxtextgan" in config.json, so a directory we wrote loads back as the model it came from.
RUNTIME_FIELDS = ("scan_layers", "dtype", "param_dtype", "remat")


def config_from_hf(hf: dict, **overrides) -> gpt2.GPT2Config:
  """GPT2Config of a Hugging Face GPT-2 config.json (dict); `overrides` win."""
  n_embd = hf["n_embd"]
  fields = dict(vocab_size=hf["vocab_size"], max_len=hf["n_positions"], n_layer=hf["n_layer"], d_model=n_embd,
                n_head=hf["n_head"], d_ff=hf.get("n_inner") or 4 * n_embd, dropout=hf.get("resid_pdrop", 0.1),
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True))
  activation = hf.get("activation_function", "gelu_new")
  if activation not in ("gelu_new", "gelu_pytorch_tanh"):
    raise InputError(f"GPT-2 activation {activation!r} is not supported: only the tanh GELU ('gelu_new') is")
  saved = (hf.get("jaxtextgan") or {}).get("model") or {}
  fields.update({k: saved[k] for k in RUNTIME_FIELDS if k in saved})
  fields.update(overrides)
  return gpt2.GPT2Config(**fields)


def _read(directory: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
  cfg_path, weights_path = directory / "config.json", directory / "model.safetensors"
  for path in (cfg_path, weights_path):
    if not path.is_file():
      raise InputError(f"{path} is missing: a Hugging Face GPT-2 directory needs config.json and model.safetensors")
  from safetensors.numpy import load_file
  weights = load_file(str(weights_path))
  # GPT2LMHeadModel saves under 'transformer.'; GPT2Model saves bare names.
  weights = {k.removeprefix("transformer."): v for k, v in weights.items()}
  return json.loads(cfg_path.read_text()), weights


def load_gpt2(directory: str | os.PathLike, **overrides) -> tuple[gpt2.GPT2, gpt2.GPT2Config]:
  """(model, config) with the directory's weights; `overrides` change non-shape fields such as dtype or dropout."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise InputError(f"GPT-2 directory {directory} does not exist: pass a local folder saved by save_pretrained")
  hf_cfg, w = _read(directory)
  cfg = config_from_hf(hf_cfg, **overrides)
  model = nnx.eval_shape(lambda: gpt2.GPT2(cfg, rngs=nnx.Rngs(0)))
  _, state = nnx.split(model)
  flat = dict(nnx.to_flat_state(state))
  h, k, d, n = cfg.n_head, cfg.head_dim, cfg.d_model, cfg.n_layer

  def get(name):
    if name not in w:
      raise InputError(f"weight {name} is missing from {directory / 'model.safetensors'}: not a GPT-2 checkpoint")
    return w[name]

  def stack(fmt, fn=lambda a: a):
    return np.stack([fn(get(fmt.format(i))) for i in range(n)])

  values = {
    ("wte", "embedding"): get("wte.weight"),
    ("wpe",): get("wpe.weight"),
    ("norm_f", "scale"): get("ln_f.weight"),
    ("norm_f", "bias"): get("ln_f.bias"),
    ("blocks", "norm_attn", "scale"): stack("h.{}.ln_1.weight"),
    ("blocks", "norm_attn", "bias"): stack("h.{}.ln_1.bias"),
    ("blocks", "norm_mlp", "scale"): stack("h.{}.ln_2.weight"),
    ("blocks", "norm_mlp", "bias"): stack("h.{}.ln_2.bias"),
    ("blocks", "attn", "out", "kernel"): stack("h.{}.attn.c_proj.weight", lambda a: a.reshape(h, k, d)),
    ("blocks", "attn", "out", "bias"): stack("h.{}.attn.c_proj.bias"),
    ("blocks", "mlp", "fc", "kernel"): stack("h.{}.mlp.c_fc.weight"),
    ("blocks", "mlp", "fc", "bias"): stack("h.{}.mlp.c_fc.bias"),
    ("blocks", "mlp", "proj", "kernel"): stack("h.{}.mlp.c_proj.weight"),
    ("blocks", "mlp", "proj", "bias"): stack("h.{}.mlp.c_proj.bias"),
  }
  for j, name in enumerate(("query", "key", "value")):
    values[("blocks", "attn", name, "kernel")] = stack(
      "h.{}.attn.c_attn.weight", lambda a, j=j: a[:, j * d:(j + 1) * d].reshape(d, h, k))
    values[("blocks", "attn", name, "bias")] = stack(
      "h.{}.attn.c_attn.bias", lambda a, j=j: a[j * d:(j + 1) * d].reshape(h, k))
  if not cfg.tie_embeddings:
    values[("lm_head", "kernel")] = (w.get("lm_head.weight") if "lm_head.weight" in w else get("wte.weight")).T

  if not cfg.scan_layers:  # one tree per block: blocks/i/... takes layer i of the stacked weight
    values.update({("blocks", i) + path[1:]: value[i] for path, value in list(values.items())
                   if path[0] == "blocks" for i in range(n)})
  for path, var in flat.items():
    if path not in values:
      raise InputError(f"no Hugging Face weight maps to parameter {'/'.join(map(str, path))}")
    value = np.asarray(values[path])
    if value.shape != var.get_value().shape:
      raise InputError(f"weight for {'/'.join(map(str, path))} has shape {value.shape}, expected "
                       f"{var.get_value().shape}: config.json does not match model.safetensors")
    var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
  graphdef = nnx.graphdef(model)
  return nnx.merge(graphdef, nnx.from_flat_state(flat)), cfg


# ------------------------------------------------------------------------------------------------------- export


def check_exportable(cfg: gpt2.GPT2Config) -> None:
  """Raises InputError for options GPT-2 has no equivalent of: the Gopher norm/positions and an output bias."""
  unsupported = [f"{name}={value!r}" for name, value, plain in (
    ("norm", cfg.norm, "layernorm"), ("position", cfg.position, "learned"), ("output_bias", cfg.output_bias, False))
    if value != plain]
  if unsupported:
    raise InputError(f"the model uses {' and '.join(unsupported)}, which Hugging Face GPT-2 has no equivalent of: "
                     f"only models with norm='layernorm', position='learned' and output_bias=False can be exported")


def config_to_hf(cfg: gpt2.GPT2Config, *, bos_token_id: int | None = None, eos_token_id: int | None = None,
                 extra: dict | None = None) -> dict:
  """config.json of a `GPT2LMHeadModel` for `cfg`; our whole config (and `extra`) go under "jaxtextgan"."""
  check_exportable(cfg)
  return {
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
    "n_positions": cfg.max_len, "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
    "n_inner": cfg.d_ff, "activation_function": "gelu_new", "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
    "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.norm_eps, "initializer_range": 0.02,
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
    "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
    "torch_dtype": "float32", "jaxtextgan": {"model": dataclasses.asdict(cfg), **(extra or {})},
  }


def weights_to_hf(params: dict, cfg: gpt2.GPT2Config) -> dict[str, np.ndarray]:
  """`GPT2LMHeadModel` state dict (fp32 numpy) of our params, the inverse of `load_gpt2`'s mapping.

  `params` is a pure dict (`nnx.to_pure_dict`) in the layout `cfg.scan_layers` names. Mapped: wte, wpe, norm_f ->
  ln_f; per block norm_attn/norm_mlp -> ln_1/ln_2, query|key|value kernels (D, H, K) concatenated to c_attn (D, 3D),
  out (H, K, D) -> attn.c_proj (D, D), mlp fc/proj -> c_fc/c_proj; an untied lm_head (D, V) -> lm_head.weight (V, D).
  """
  check_exportable(cfg)
  if not cfg.scan_layers:
    params = gpt2.stack_layers(params, cfg.n_layer)
  d, n = cfg.d_model, cfg.n_layer
  f32 = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float32))
  blocks = params["blocks"]
  w = {"transformer.wte.weight": params["wte"]["embedding"], "transformer.wpe.weight": params["wpe"],
       "transformer.ln_f.weight": params["norm_f"]["scale"], "transformer.ln_f.bias": params["norm_f"]["bias"]}
  for i in range(n):
    block = _layer(blocks, i)
    attn, mlp = block["attn"], block["mlp"]
    qkv = ("query", "key", "value")
    w.update({
      f"transformer.h.{i}.ln_1.weight": block["norm_attn"]["scale"],
      f"transformer.h.{i}.ln_1.bias": block["norm_attn"]["bias"],
      f"transformer.h.{i}.ln_2.weight": block["norm_mlp"]["scale"],
      f"transformer.h.{i}.ln_2.bias": block["norm_mlp"]["bias"],
      f"transformer.h.{i}.attn.c_attn.weight": np.concatenate([attn[q]["kernel"].reshape(d, d) for q in qkv], 1),
      f"transformer.h.{i}.attn.c_attn.bias": np.concatenate([attn[q]["bias"].reshape(d) for q in qkv]),
      f"transformer.h.{i}.attn.c_proj.weight": attn["out"]["kernel"].reshape(d, d),
      f"transformer.h.{i}.attn.c_proj.bias": attn["out"]["bias"],
      f"transformer.h.{i}.mlp.c_fc.weight": mlp["fc"]["kernel"],
      f"transformer.h.{i}.mlp.c_fc.bias": mlp["fc"]["bias"],
      f"transformer.h.{i}.mlp.c_proj.weight": mlp["proj"]["kernel"],
      f"transformer.h.{i}.mlp.c_proj.bias": mlp["proj"]["bias"],
    })
  if not cfg.tie_embeddings:
    w["lm_head.weight"] = np.asarray(params["lm_head"]["kernel"]).T
  return {name: f32(value) for name, value in w.items()}


def _layer(tree: dict, i: int) -> dict:
  """Layer `i` of a stacked block tree, as numpy."""
  return {k: _layer(v, i) if isinstance(v, dict) else np.asarray(v)[i] for k, v in tree.items()}


def save_gpt2(directory: str | os.PathLike, params: dict, cfg: gpt2.GPT2Config, **config_kwargs) -> pathlib.Path:
  """Writes config.json and model.safetensors (fp32) of a `GPT2LMHeadModel`; `config_kwargs` go to
  `config_to_hf`."""
  from safetensors.numpy import save_file
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  hf_cfg = config_to_hf(cfg, **config_kwargs)
  weights = weights_to_hf(params, cfg)
  save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
  (directory / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n", encoding="utf-8")
  return directory
