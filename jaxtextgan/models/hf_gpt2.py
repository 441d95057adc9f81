"""Import GPT-2 weights from a local Hugging Face directory (`config.json` + `model.safetensors`).

HF's Conv1D stores weights as (in, out); `c_attn` packs q, k, v along `out`. Our kernels are (D, H, K) for q/k/v and
(H, K, D) for the attention output. Blocks are stacked on a leading layer axis, or one tree
per block when `scan_layers=False`.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2


def config_from_hf(hf: dict, **overrides) -> gpt2.GPT2Config:
  n_embd = hf["n_embd"]
  fields = dict(vocab_size=hf["vocab_size"], max_len=hf["n_positions"], n_layer=hf["n_layer"], d_model=n_embd,
                n_head=hf["n_head"], d_ff=hf.get("n_inner") or 4 * n_embd, dropout=hf.get("resid_pdrop", 0.1),
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True))
  activation = hf.get("activation_function", "gelu_new")
  if activation not in ("gelu_new", "gelu_pytorch_tanh"):
    raise InputError(f"GPT-2 activation {activation!r} is not supported: only the tanh GELU ('gelu_new') is")
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
