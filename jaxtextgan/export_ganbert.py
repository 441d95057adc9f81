"""GAN-BERT's classifier (encoder + D, from `<workdir>/classifier`; G is not part of it) in Hugging Face format.

Written by `python -m jaxtextgan.export --workdir=DIR --out=HF_DIR` for a GAN-BERT (or baseline) 'train' run:
* config.json, model.safetensors: the encoder as a `transformers.BertModel` (with BERT's pooler when the
  checkpoint has one; else load it with `add_pooling_layer=False`);
* vocab.txt, tokenizer_config.json, special_tokens_map.json: its WordPiece tokenizer for `BertTokenizerFast` /
  `AutoTokenizer`, with model_max_length = the classifier's max_len (texts are truncated there, as in predict);
* head.safetensors: D's layers in torch `Linear` layout, `hidden.{i}.weight` (out, in), `hidden.{i}.bias`,
  `out.weight`, `out.bias`; its metadata and head_config.json hold the label names, the pooling, the leaky-ReLU
  slope and the number k of real classes (GAN-BERT's D has k+1 outputs, the last one "fake");
* ganbert_head.py: a PyTorch `GanBertHead` and `load(HF_DIR)(texts)`, which gives `jaxtextgan.predict`'s
  probabilities p(y | x, real) = softmax(D(h)[:k]).
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
from flax import nnx

from jaxtextgan.errors import InputError
from jaxtextgan.models import bert, hf_bert, mlp

ASSETS = "classifier_assets"  # where a GAN-BERT run keeps the encoder's tokenizer files
HEAD_TEMPLATE = pathlib.Path(__file__).with_name("export_ganbert_head.py")


class SavedClassifier(nnx.Module):
  """The parameter tree of a saved classifier: `encoder` (BERT) and `head` (D's MLP); shapes only."""

  def __init__(self, bert_cfg: bert.BertConfig, hidden: list[int], outputs: int, *, rngs: nnx.Rngs):
    self.encoder = bert.BertEncoder(bert_cfg, rngs=rngs)
    self.head = mlp.MLP(bert_cfg.hidden_size, hidden, outputs, rngs=rngs)


def _to_torch(name: str, ours: np.ndarray, to_ours) -> np.ndarray:
  """Inverse of load_bert's mapping for one weight: Linear kernels (in..., out...) -> (out, in), biases flat."""
  if name.endswith(".bias"):
    torch_w = ours.reshape(-1)
  elif "LayerNorm" in name or name.startswith("embeddings."):
    torch_w = ours
  else:
    n_in = 2 if name.endswith("attention.output.dense.weight") else 1  # (H, K, D) takes H*K inputs
    torch_w = ours.reshape(int(np.prod(ours.shape[:n_in])), -1).T
  if not np.array_equal(to_ours(torch_w), ours):
    raise AssertionError(f"the export of BERT weight {name} does not invert load_bert's mapping")
  return np.ascontiguousarray(torch_w, np.float32)


def bert_weights_to_hf(params: dict, cfg: bert.BertConfig) -> dict[str, np.ndarray]:
  """`BertModel` state dict of our encoder params (pure dict): every name load_bert reads, per layer for the
  stacked 'layers' weights."""
  weights = {}
  # load_bert's own table (HF name -> our path, HF -> ours transform), so the two directions cannot drift apart.
  for template, (path, to_ours) in hf_bert._expected_names(cfg).items():  # pylint: disable=protected-access
    value = params
    for key in path:
      value = value[key]
    value = np.asarray(value)
    if "{i}" in template:
      for i in range(cfg.num_hidden_layers):
        weights[template.format(i=i)] = _to_torch(template, value[i], to_ours)
    else:
      weights[template] = _to_torch(template, value, to_ours)
  return weights


def bert_config_to_hf(cfg: bert.BertConfig, pad_token_id: int) -> dict:
  names = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
           "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
           "attention_probs_dropout_prob", "hidden_act")
  return {"architectures": ["BertModel"], "model_type": "bert", **{k: getattr(cfg, k) for k in names},
          "position_embedding_type": "absolute", "pad_token_id": pad_token_id, "torch_dtype": "float32"}


def write_tokenizer(assets: pathlib.Path, out: pathlib.Path, max_len: int) -> int:
  """Copies the run's tokenizer files with model_max_length = max_len; returns the [PAD] id."""
  vocab = assets / "vocab.txt"
  if not vocab.is_file():
    raise InputError(f"{vocab} is missing: the GAN-BERT workdir is incomplete; train it again")
  shutil.copyfile(vocab, out / "vocab.txt")
  config_path = assets / "tokenizer_config.json"
  config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
  # Without a tokenizer_config.json, predict uses BERT's defaults (lowercasing), as BertTokenizer does.
  config.setdefault("tokenizer_class", "BertTokenizer")
  config["model_max_length"] = max_len
  (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
  if (assets / "special_tokens_map.json").is_file():
    shutil.copyfile(assets / "special_tokens_map.json", out / "special_tokens_map.json")
  tokens = vocab.read_text(encoding="utf-8").splitlines()
  pad = config.get("pad_token") if isinstance(config.get("pad_token"), str) else "[PAD]"
  return tokens.index(pad) if pad in tokens else 0


def export_classifier(workdir: pathlib.Path, ckpt_dir: pathlib.Path, meta: dict, step: int, out: pathlib.Path,
                      restore_params, abstract_params) -> None:
  """Writes the files of the module docstring; `restore_params` / `abstract_params` are jaxtextgan.export's."""
  from safetensors.numpy import save_file
  where = ckpt_dir / str(step)
  try:
    bert_cfg = bert.BertConfig(**meta["bert_config"])
    head_cfg, label_names, max_len = meta["model"], list(meta["label_names"]), int(meta["max_len"])
    k, method = int(head_cfg["num_classes"]), head_cfg.get("method", "ganbert")
    hidden = [int(head_cfg.get("d_hidden") or bert_cfg.hidden_size)]
  except (KeyError, TypeError, ValueError) as err:
    raise InputError(f"{where} has metadata this version cannot read ({err}): train the classifier again") from None
  outputs = k + (1 if method == "ganbert" else 0)
  params = restore_params(ckpt_dir, step, abstract_params(
    lambda r: SavedClassifier(bert_cfg, hidden, outputs, rngs=r)), ("params",))

  pad_id = write_tokenizer(workdir / ASSETS, out, max_len)
  save_file(bert_weights_to_hf(params["encoder"], bert_cfg), str(out / "model.safetensors"), metadata={"format": "pt"})
  (out / "config.json").write_text(json.dumps(bert_config_to_hf(bert_cfg, pad_id), indent=2) + "\n",
                                   encoding="utf-8")

  head = params["head"]
  linear = lambda layer: (np.ascontiguousarray(np.asarray(layer["kernel"], np.float32).T),
                          np.ascontiguousarray(np.asarray(layer["bias"], np.float32)))
  head_weights = {}
  for name, layer in [*((f"hidden.{i}", head["hidden"][i]) for i in range(len(hidden))), ("out", head["out"])]:
    head_weights[f"{name}.weight"], head_weights[f"{name}.bias"] = linear(layer)
  save_file(head_weights, str(out / "head.safetensors"),
            metadata={"format": "pt", "label_names": json.dumps(label_names)})
  pooling = head_cfg.get("pooling", "mean")
  if pooling == "auto":  # as BertEncoder.sentence_vector resolves it
    pooling = "pooler" if bert_cfg.pooler else "cls"
  config = {"label_names": label_names, "num_classes": k, "num_outputs": outputs,
            "fake_class": k if method == "ganbert" else None, "method": method, "hidden_size": bert_cfg.hidden_size,
            "hidden": hidden, "slope": float(head_cfg.get("slope", 0.2)), "pooling": pooling,
            "pooler": bool(bert_cfg.pooler), "max_len": max_len,
            "source": {"objective": "ganbert", "checkpoint": str(where.absolute()), "step": step}}
  (out / "head_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
  shutil.copyfile(HEAD_TEMPLATE, out / "ganbert_head.py")
