"""Label texts with a trained GAN-BERT (or baseline) classifier: encoder + D, restored without G.

  python -m jaxtextgan.predict --workdir=DIR [--input=texts.txt] [--format=tsv|jsonl] [--batch_size=64]

One text per line from --input or stdin (blank lines are skipped). Probabilities are over the k real classes,
p(y | x, real) = softmax(D(h)[:k]) = p_y / (1 - p_fake), i.e. renormalised without GAN-BERT's fake class.
TSV: a header `line  label  <class names...>`, then one row per text; JSON lines: {"line", "text", "label",
"probabilities": {class: p}}.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
from typing import Sequence, TextIO

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxtextgan import checkpoint
from jaxtextgan import sharding as shd
from jaxtextgan.data import classification as cls_data
from jaxtextgan.errors import InputError, exit_status
from jaxtextgan.models import bert, hf_bert
from jaxtextgan.objectives import ganbert

ASSETS = "classifier_assets"  # <workdir>/classifier_assets: the tokenizer files next to <workdir>/classifier


@dataclasses.dataclass
class LoadedClassifier:
  label_names: tuple[str, ...]
  tokenizer: hf_bert.WordPieceTokenizer
  predict: object  # jitted (params, batch) -> (B, k)
  params: object
  mesh: object
  max_len: int
  pad_multiple: int
  meta: dict


def load_classifier(workdir) -> LoadedClassifier:
  """Encoder + D params and metadata from `<workdir>/classifier` (written by a 'train' run)."""
  workdir = pathlib.Path(workdir)
  directory = workdir / "classifier"
  if not directory.is_dir():
    raise InputError(f"{workdir} has no trained classifier ({directory} is missing): train one with "
                     f"`python -m jaxtextgan.main --config=configs/ganbert.py --workdir={workdir}`")
  meta, step = checkpoint.read_meta(directory)
  assets = workdir / ASSETS
  if not (assets / "vocab.txt").is_file():
    raise InputError(f"{assets / 'vocab.txt'} is missing: the workdir is incomplete, train it again")
  try:
    bert_cfg = bert.BertConfig(**meta["bert_config"])
    cfg = ganbert.GanBertConfig(**meta["model"])
    label_names = tuple(meta["label_names"])
  except (KeyError, TypeError) as err:
    raise InputError(f"{directory} has metadata this version cannot read ({err}): train the classifier again") from None
  options = hf_bert._tokenizer_options(assets)  # the checkpoint's casing and special tokens, as load_bert reads them
  options.pop("max_len", None)
  tokenizer = hf_bert.WordPieceTokenizer(assets / "vocab.txt", max_len=meta["max_len"], **options)

  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  abstract = nnx.eval_shape(lambda: ganbert.make_classifier(bert_cfg, cfg, nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  rep = shd.replicated(mesh)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), abstract_params)
  try:  # only the "state" item: its meta was read above
    restored = ocp.StandardCheckpointer().restore((directory / str(step) / "state").absolute(), {"params": target})
  except Exception as err:  # a damaged or foreign checkpoint
    raise InputError(f"{directory / str(step)} could not be restored ({type(err).__name__}): train the classifier "
                     f"again") from None
  return LoadedClassifier(label_names, tokenizer, predict_fn(graphdef, cfg.num_classes, mesh), restored["params"],
                          mesh, int(meta["max_len"]), int(meta.get("pad_multiple", 16)), meta)


@functools.lru_cache(maxsize=16)
def predict_fn(graphdef, num_classes: int, mesh):
  """jitted (D's params, batch) -> p(y | x, real) (B, k), the batch and result sharded over ('data','fsdp')."""
  _, _, _, predict_step = ganbert.make_steps(ganbert.GanBertConfig(num_classes=num_classes))
  return jax.jit(lambda params, batch: predict_step(params, graphdef, batch),
                 out_shardings=shd.batch_sharding(mesh, 2))


def predict_probabilities(predict, params, data: cls_data.Encoded, batch_size: int, mesh,
                          pad_multiple: int) -> np.ndarray:
  """(N, k) class probabilities of every row of `data`, in its order (`cls_data.prediction_batches`)."""
  order, batches = cls_data.prediction_batches(data, batch_size, pad_multiple)
  out = [np.asarray(jax.device_get(predict(params, shd.put_batch(batch, mesh)))) for batch in batches]
  probs = np.concatenate(out)[:len(data)] if out else np.zeros((0, 0), np.float32)
  result = np.empty_like(probs)
  result[order] = probs
  return result


def classify(classifier: LoadedClassifier, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
  """(N, k) probabilities over the real classes."""
  if batch_size < 1:
    raise InputError(f"--batch_size={batch_size} is invalid: use a positive batch size")
  ids, mask = classifier.tokenizer.encode_batch(list(texts), classifier.max_len)
  data = cls_data.Encoded(ids, mask, np.full(len(texts), cls_data.UNLABELED, np.int32))
  return predict_probabilities(classifier.predict, classifier.params, data, batch_size, classifier.mesh,
                               classifier.pad_multiple)


def read_texts(stream: TextIO, source: str) -> list[tuple[int, str]]:
  """(line number, text) of the non-blank lines."""
  texts = [(i, line.rstrip("\r\n")) for i, line in enumerate(stream, start=1) if line.strip()]
  if not texts:
    raise InputError(f"{source} has no texts: give one text per line")
  return texts


def write_predictions(out: TextIO, label_names: Sequence[str], lines: Sequence[tuple[int, str]], probs: np.ndarray,
                      fmt: str) -> None:
  best = probs.argmax(-1)
  if fmt == "tsv":
    out.write("\t".join(["line", "label", *label_names]) + "\n")
    for (number, _), j, row in zip(lines, best, probs):
      out.write("\t".join([str(number), label_names[j], *(f"{p:.6f}" for p in row)]) + "\n")
  else:
    for (number, text), j, row in zip(lines, best, probs):
      out.write(json.dumps({"line": number, "text": text, "label": label_names[j],
                            "probabilities": {n: round(float(p), 6) for n, p in zip(label_names, row)}}) + "\n")


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxtextgan.predict", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a workdir trained with configs/ganbert.py (mode 'train')")
  parser.add_argument("--input", default="-", help="text file, one text per line; '-' (default) reads stdin")
  parser.add_argument("--format", default="tsv", choices=("tsv", "jsonl"))
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args(argv)
  return exit_status(_predict, args, stdin or sys.stdin, stdout or sys.stdout)


def _predict(args, stdin: TextIO, stdout: TextIO) -> None:
  if args.input == "-":
    lines = read_texts(stdin, "stdin")
  else:
    path = pathlib.Path(args.input)
    if not path.is_file():
      raise InputError(f"--input={path} does not exist: pass a text file with one text per line")
    try:
      with open(path, encoding="utf-8") as f:
        lines = read_texts(f, str(path))
    except UnicodeDecodeError:
      raise InputError(f"--input={path} is not UTF-8 text: convert it to UTF-8") from None
  classifier = load_classifier(args.workdir)
  probs = classify(classifier, [t for _, t in lines], args.batch_size)
  write_predictions(stdout, classifier.label_names, lines, probs, args.format)


if __name__ == "__main__":
  sys.exit(main())
