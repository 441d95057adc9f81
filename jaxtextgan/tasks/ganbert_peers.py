"""The GAN-BERT experiment's peers that are not trained as a Stage (issue 14): 'frozen-lr', 'setfit', 'setfit-cv'.

* 'frozen-lr': x -> v = mean-pool(BERT(x)) / ||.||_2 with the pre-trained encoder frozen (sentence-transformers'
  recipe for MiniLM), then scikit-learn's multinomial logistic regression; its inverse regularisation C is chosen
  from `experiment.lr_cs` by stratified k-fold cross-validation on the labeled rows alone (k = min(5, the
  smallest class's size), at least 2), accuracy as the criterion.
* 'setfit': SetFit (Tunstall et al. 2022) on the same encoder directory: contrastive fine-tuning on pairs of labeled
  rows, then a logistic-regression head. It needs transformers 5 (our parity tests pin 4.x), so it runs in its own
  Python, `experiment.setfit_python`, as `benchmarks/setfit_peer.py` (JSON in, predictions out), offline.
* 'setfit-cv': SetFit with its head's C chosen as frozen-lr's (the same grid, folds and seed) instead of
  scikit-learn's C = 1, so that it is tuned as much as the logistic-regression methods.

Both return a row like `tasks.ganbert.train_and_evaluate`'s: test accuracy and macro-F1, wall time, n_L.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import tempfile
import time
import warnings

import jax
import numpy as np
from flax import nnx

from jaxtextgan.data import classification as cls_data
from jaxtextgan.errors import InputError
from jaxtextgan.metrics import classification_metrics
from jaxtextgan.models import bert

SETFIT_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "setfit_peer.py"


def embed(encoder, examples: cls_data.Examples, max_len: int, batch_size: int, pad_multiple: int) -> np.ndarray:
  """v (N, d): the frozen encoder's mean-pooled, L2-normalised sentence vectors, without dropout."""
  model = bert.BertEncoder(encoder.config, rngs=nnx.Rngs(0))
  nnx.update(model, encoder.params)
  graphdef, params = nnx.split(model, nnx.Param)

  @jax.jit
  def vectors(params, ids_BT, mask_BT):
    return nnx.merge(graphdef, params).encode(ids_BT, mask_BT, pooling="mean")

  enc = cls_data.encode_examples(examples, encoder.tokenizer, max_len)
  order, batches = cls_data.prediction_batches(enc, batch_size, pad_multiple)
  out_ND = np.zeros((len(enc), encoder.config.hidden_size), np.float32)
  for start, batch in zip(range(0, len(enc), batch_size), batches):
    idx = order[start:start + batch_size]
    out_ND[idx] = np.asarray(vectors(params, batch["input_ids"], batch["attention_mask"]))[:len(idx)]
  return out_ND / np.maximum(np.linalg.norm(out_ND, axis=1, keepdims=True), 1e-12)


def cv_folds(labels_N: np.ndarray) -> int:
  """k of the stratified k-fold CV that chooses C: min(5, the smallest class's size), at least 2, at most N."""
  return int(min(max(2, min(5, np.bincount(labels_N).min(initial=len(labels_N)) if len(labels_N) else 2)),
                 len(labels_N)))


def frozen_lr(config, data: cls_data.ClassificationData, encoder, *, seed: int) -> tuple[np.ndarray, dict]:
  """(test predictions, {'C': chosen C, 'folds': k}): C by stratified k-fold CV on the labeled rows only."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import GridSearchCV, StratifiedKFold

  args = (config.data.max_len, config.eval.batch_size, config.data.pad_multiple)
  x_train, x_test = embed(encoder, data.labeled, *args), embed(encoder, data.test, *args)
  y = np.asarray(data.labeled.labels)
  folds = cv_folds(y)
  search = GridSearchCV(LogisticRegression(max_iter=2000), {"C": list(config.experiment.lr_cs)},
                        cv=StratifiedKFold(folds, shuffle=True, random_state=seed), scoring="accuracy")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # classes smaller than k (TREC-109 has singletons): folds lack them
    search.fit(x_train, y)
  return search.predict(x_test), {"C": float(search.best_params_["C"]), "folds": folds}


def setfit(config, data: cls_data.ClassificationData, encoder, *, seed: int,
           choose_c: bool = False) -> tuple[np.ndarray, dict]:
  """(test predictions, settings): `benchmarks/setfit_peer.py` under `experiment.setfit_python`, offline; with
  `choose_c`, the head's C by frozen-lr's cross-validation on the labeled rows."""
  python = config.experiment.get("setfit_python", "")
  if not python or not pathlib.Path(python).exists():
    raise InputError(f"experiment.setfit_python={python!r} does not exist: create SetFit's venv (README)")
  settings = {"steps": int(config.experiment.setfit_steps), "batch_size": int(config.experiment.setfit_batch_size),
              "max_len": int(config.data.max_len), "seed": seed}
  if choose_c:
    settings.update(head_cs=[float(c) for c in config.experiment.lr_cs],
                    folds=cv_folds(np.asarray(data.labeled.labels)))
  with tempfile.TemporaryDirectory() as tmp:
    request, answer = pathlib.Path(tmp) / "in.json", pathlib.Path(tmp) / "out.json"
    request.write_text(json.dumps({"model_dir": str(encoder.directory), "train_texts": list(data.labeled.texts),
                                   "train_labels": [int(v) for v in data.labeled.labels],
                                   "test_texts": list(data.test.texts), **settings}), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([python, str(SETFIT_SCRIPT), str(request), str(answer)], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
      raise RuntimeError(f"SetFit failed ({python} {SETFIT_SCRIPT}):\n{done.stderr[-3000:]}")
    answer = json.loads(answer.read_text(encoding="utf-8"))
    return np.asarray(answer["predictions"]), {**settings, **({"C": answer["C"]} if "C" in answer else {})}


def run_peer(method: str, config, data: cls_data.ClassificationData, encoder, *, seed: int, mesh=None) -> dict:
  """One peer run on `data`, as an experiment row."""
  del mesh
  t0, load_start = time.perf_counter(), os.getloadavg()[0]
  run = {"frozen-lr": frozen_lr, "setfit": setfit, "setfit-cv": functools.partial(setfit, choose_c=True)}[method]
  predictions, settings = run(config, data, encoder, seed=seed)
  out = {"method": method, "seed": seed, "data": data.name, "n_labeled": len(data.labeled), "n_unlabeled": 0,
         "labeled_fraction": data.labeled_fraction, "replication": 0, "steps": settings.get("steps", 0),
         "labeled_passes": 0.0, "step": 0, "preempted": False, "settings": settings}
  out.update(classification_metrics(np.asarray(data.test.labels), predictions),
             wall_seconds=time.perf_counter() - t0, load_start=load_start, load_end=os.getloadavg()[0])
  return out
