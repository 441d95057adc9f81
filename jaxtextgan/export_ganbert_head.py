"""GAN-BERT's discriminator head in PyTorch, over the `transformers.BertModel` of this directory.

`python -m jaxtextgan.export` copies this file into a GAN-BERT export as ganbert_head.py; it needs torch,
transformers and safetensors, not jaxtextgan. It computes what `python -m jaxtextgan.predict` does:

  h = pool(BERT(x))            head_config.json "pooling": 'mean' over unpadded tokens, 'cls' the [CLS] state,
                               'pooler' BERT's tanh pooler
  logits = D(h)                [Linear -> leaky-ReLU(slope)] per hidden layer, then Linear (no dropout at inference)
  p(y | x, real) = softmax(logits[:k])   GAN-BERT's last (k+1-th) logit is the fake class, left out

Usage, from the export directory or with it on sys.path:

  import ganbert_head
  classify = ganbert_head.load("HF_DIR")
  probs = classify(["a text", "another one"])   # numpy (N, k); columns are classify.label_names
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertModel


class GanBertHead(torch.nn.Module):
  """D over BERT's outputs; `forward` returns the (N, k) probabilities over the real classes."""

  def __init__(self, config: dict):
    super().__init__()
    dims = [config["hidden_size"], *config["hidden"]]
    self.hidden = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
    self.out = torch.nn.Linear(dims[-1], config["num_outputs"])
    self.slope, self.num_classes, self.pooling = config["slope"], config["num_classes"], config["pooling"]

  def pool(self, encoded, attention_mask: torch.Tensor) -> torch.Tensor:
    if self.pooling == "pooler":
      return encoded.pooler_output
    hidden = encoded.last_hidden_state
    if self.pooling == "cls":
      return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

  def forward(self, encoded, attention_mask: torch.Tensor) -> torch.Tensor:
    h = self.pool(encoded, attention_mask)
    for layer in self.hidden:
      h = torch.nn.functional.leaky_relu(layer(h), self.slope)
    return torch.softmax(self.out(h)[:, :self.num_classes].float(), dim=-1)


class Classifier:
  """Tokenizer + BertModel + GanBertHead of an export directory; call it on a list of texts."""

  def __init__(self, directory):
    directory = pathlib.Path(directory)
    config = json.loads((directory / "head_config.json").read_text(encoding="utf-8"))
    self.label_names, self.max_len = config["label_names"], config["max_len"]
    self.tokenizer = AutoTokenizer.from_pretrained(directory)
    self.encoder = BertModel.from_pretrained(directory, add_pooling_layer=config["pooler"]).eval()
    self.head = GanBertHead(config)
    self.head.load_state_dict(load_file(str(directory / "head.safetensors")))
    self.head.eval()

  @torch.no_grad()
  def __call__(self, texts) -> np.ndarray:
    batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_len,
                           return_tensors="pt")
    encoded = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return self.head(encoded, batch["attention_mask"]).numpy()


def load(directory) -> Classifier:
  return Classifier(directory)
