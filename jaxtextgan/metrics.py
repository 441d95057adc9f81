"""Metrics for generated text (BLEU, Self-BLEU, distinct-n, oracle/test NLL, reverse perplexity) and for a
classifier (`classification_metrics`: accuracy, macro-F1).

Pure Python/NumPy. A text set is a sequence of token sequences: each item is a list/tuple/array of hashable
tokens (ints or strings), or a string, which is split on whitespace (`tokenize`). A 2-D integer array is a set
of equal-length sequences.

BLEU follows Texygen and "Language GANs falling short" (Caccia et al.): every hypothesis is scored by NLTK's
`sentence_bleu` against the whole reference set, and the scores are averaged over hypotheses:

  p_m  = Σ_g min(c_h(g), max_r c_r(g)) / max(1, Σ_g c_h(g))       modified m-gram precision, g over h's m-grams
  BP   = 1 if |h| > r* else exp(1 - r* / |h|)                       r* the closest reference length (ties: shorter)
  BLEU-n(h) = BP · exp(Σ_{m=1..n} (1/n) log p_m)                    uniform weights

Smoothing is Chen & Cherry's method 1 (NLTK `SmoothingFunction().method1`): a precision with no matched m-gram
becomes ε / max(1, Σ_g c_h(g)), ε = 0.1. As in NLTK, a hypothesis without a single matched unigram scores 0.
max_r c_r(g) does not depend on the hypothesis, so it is tabulated once over the references.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np

from jaxtextgan.errors import InputError

Tokens = tuple[Hashable, ...]

DEFAULT_ORDERS = (2, 3, 4, 5)
EPSILON = 0.1


def tokenize(text: str) -> list[str]:
  """Whitespace tokenisation: "a  b\\nc" -> ["a", "b", "c"]."""
  if not isinstance(text, str):
    raise InputError(f"text: expected a string, got {type(text).__name__}")
  return text.split()


def as_token_lists(texts, name: str = "texts") -> list[Tokens]:
  """A text set as a list of token tuples (strings are whitespace-tokenised, arrays become Python scalars)."""
  if isinstance(texts, str):
    raise InputError(f"{name}: expected a list of sentences, got one string; wrap it in a list")
  if not isinstance(texts, (list, tuple)) and hasattr(texts, "__array__"):
    texts = np.asarray(texts)
    if texts.ndim != 2:
      raise InputError(f"{name}: expected a 2-D array of token ids (n, L), got shape {texts.shape}")
    return [tuple(row) for row in texts.tolist()]
  try:
    items = list(texts)
  except TypeError:
    raise InputError(f"{name}: expected a list of token sequences, got {type(texts).__name__}") from None
  out = []
  for item in items:
    if isinstance(item, str):
      out.append(tuple(item.split()))
    elif hasattr(item, "__array__"):  # NumPy or JAX arrays: Python scalars hash and compare reliably
      out.append(tuple(np.asarray(item).ravel().tolist()))
    else:
      try:
        out.append(tuple(item))
      except TypeError:
        raise InputError(f"{name}: each item must be a string or a token sequence, got {item!r}") from None
  return out


def ngrams(tokens: Sequence[Hashable], n: int) -> Counter:
  """Counts of the n-grams (as tuples) of one token sequence."""
  return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _check_orders(orders) -> tuple[int, ...]:
  orders = tuple(int(n) for n in np.atleast_1d(orders))
  if not orders or min(orders) < 1:
    raise InputError(f"orders: expected positive n-gram orders, got {orders}")
  return orders


def _subsample(items: list, limit: int | None, rng: np.random.Generator, name: str) -> tuple[list, np.ndarray]:
  """At most `limit` items drawn without replacement (original order kept), and their indices."""
  index = np.arange(len(items))
  if limit is not None:
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
      raise InputError(f"{name}: expected a positive integer or None, got {limit!r}")
    if limit < len(items):
      index = np.sort(rng.choice(len(items), size=int(limit), replace=False))
  return [items[i] for i in index], index


class _ReferenceTable:
  """Per-order max reference counts of every m-gram, and reference lengths, for m = 1..max_order.

  It also keeps the runner-up count and the holder of the max, so the max over all references but one is
  O(1): Self-BLEU scores each sample against the others.
  """

  def __init__(self, references: list[Tokens], max_order: int):
    self.best: list[dict] = [dict() for _ in range(max_order + 1)]  # g -> (max count, holder, runner-up)
    for r, ref in enumerate(references):
      for m in range(1, max_order + 1):
        table = self.best[m]
        for g, c in ngrams(ref, m).items():
          top, holder, second = table.get(g, (0, -1, 0))
          if c > top:
            table[g] = (c, r, top)
          elif c > second:
            table[g] = (top, holder, c)
    self.length_counts = Counter(len(ref) for ref in references)
    self.lengths = sorted(self.length_counts)

  def max_count(self, m: int, g: Tokens, skip: int) -> int:
    top, holder, second = self.best[m].get(g, (0, -1, 0))
    return second if holder == skip else top

  def closest_length(self, length: int, skip_length: int | None) -> int | None:
    """The reference length nearest `length` (ties: the shorter), one reference of `skip_length` left out."""
    lengths = self.lengths
    if skip_length is not None and self.length_counts[skip_length] == 1:
      lengths = [x for x in lengths if x != skip_length]  # rare: only when that length is unique
    if not lengths:
      return None
    pos = bisect.bisect_left(lengths, length)
    candidates = lengths[max(pos - 1, 0):pos + 1]
    return min(candidates, key=lambda x: (abs(x - length), x))


def _bleu_per_hypothesis(hypotheses: list[Tokens], table: _ReferenceTable, orders: tuple[int, ...],
                         skips: Sequence[int] | None, epsilon: float) -> dict[int, np.ndarray]:
  """BLEU-n of each hypothesis for each n in `orders` (module docstring), sharing the m-gram counts."""
  top = max(orders)
  scores = {n: np.zeros(len(hypotheses)) for n in orders}
  for h, hyp in enumerate(hypotheses):
    skip = -1 if skips is None else int(skips[h])
    log_p = []
    matched_unigram = False
    for m in range(1, top + 1):
      counts = ngrams(hyp, m)
      numerator = sum(min(c, table.max_count(m, g, skip)) for g, c in counts.items())
      denominator = max(1, sum(counts.values()))
      if m == 1:
        matched_unigram = numerator > 0
      log_p.append(math.log((numerator if numerator > 0 else epsilon) / denominator))
    if not matched_unigram or not hyp:
      continue  # NLTK returns 0 when no unigram matches; an empty hypothesis has BP = 0
    ref_len = table.closest_length(len(hyp), len(hyp) if skip >= 0 else None)
    if ref_len is None:
      continue
    log_bp = 0.0 if len(hyp) > ref_len else 1.0 - ref_len / len(hyp)
    for n in orders:
      scores[n][h] = math.exp(log_bp + sum(log_p[:n]) / n)
  return scores


def bleu_scores(hypotheses, references, orders: Iterable[int] = DEFAULT_ORDERS, *,
                max_hypotheses: int | None = None, max_references: int | None = None, seed: int = 0,
                epsilon: float = EPSILON) -> dict[int, float]:
  """{n: BLEU-n} of hypotheses against the whole reference set, averaged over hypotheses (module docstring).

  max_hypotheses / max_references subsample each set without replacement with np.random.default_rng(seed),
  so scores computed from sets of different sizes use fixed sample counts and are reproducible.
  """
  orders = _check_orders(orders)
  rng = np.random.default_rng(seed)
  hyps, _ = _subsample(as_token_lists(hypotheses, "hypotheses"), max_hypotheses, rng, "max_hypotheses")
  refs, _ = _subsample(as_token_lists(references, "references"), max_references, rng, "max_references")
  if not hyps:
    raise InputError("hypotheses: the set is empty; pass at least one sentence")
  if not refs:
    raise InputError("references: the set is empty; pass at least one sentence")
  table = _ReferenceTable(refs, max(orders))
  per_hyp = _bleu_per_hypothesis(hyps, table, orders, None, epsilon)
  return {n: float(per_hyp[n].mean()) for n in orders}


def bleu(hypotheses, references, n: int = 4, **kwargs) -> float:
  """BLEU-n of hypotheses against all references, averaged over hypotheses; see `bleu_scores`."""
  return bleu_scores(hypotheses, references, (n,), **kwargs)[n]


def self_bleu_scores(samples, orders: Iterable[int] = DEFAULT_ORDERS, *, max_hypotheses: int | None = None,
                     max_references: int | None = None, seed: int = 0,
                     epsilon: float = EPSILON) -> dict[int, float]:
  """{n: Self-BLEU-n}: BLEU-n of each sample against all OTHER samples, averaged (Zhu et al., Texygen).

  A sample is never its own reference (a copy of it elsewhere in the set still counts: duplicates are a lack of
  diversity). max_hypotheses picks the scored samples and max_references the reference pool, each subsampled
  from `samples` with np.random.default_rng(seed).
  """
  orders = _check_orders(orders)
  items = as_token_lists(samples, "samples")
  if len(items) < 2:
    raise InputError(f"samples: Self-BLEU needs at least 2 samples, got {len(items)}")
  rng = np.random.default_rng(seed)
  hyps, hyp_index = _subsample(items, max_hypotheses, rng, "max_hypotheses")
  pool, pool_index = _subsample(items, max_references, rng, "max_references")
  position = {int(p): q for q, p in enumerate(pool_index)}
  skips = [position.get(int(h), -1) for h in hyp_index]
  if len(pool) < 2:
    raise InputError(f"max_references: Self-BLEU needs a reference pool of at least 2, got {len(pool)}")
  table = _ReferenceTable(pool, max(orders))
  per_hyp = _bleu_per_hypothesis(hyps, table, orders, skips, epsilon)
  return {n: float(per_hyp[n].mean()) for n in orders}


def self_bleu(samples, n: int = 4, **kwargs) -> float:
  """Self-BLEU-n; see `self_bleu_scores`."""
  return self_bleu_scores(samples, (n,), **kwargs)[n]


def distinct_n(samples, n: int) -> float:
  """distinct-n = |unique n-grams| / |n-grams| over all samples (Li et al., 2016); 0 when there are none."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise InputError(f"n: expected a positive n-gram order, got {n!r}")
  unique: set = set()
  total = 0
  for seq in as_token_lists(samples, "samples"):
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    unique.update(grams)
    total += len(grams)
  return len(unique) / total if total else 0.0


def _token_log_probs(values: Any, name: str) -> np.ndarray:
  """Flatten per-token log-probs (an array, or a list of per-sequence arrays) to one float64 vector."""
  if isinstance(values, (list, tuple)):
    flat = np.concatenate([np.asarray(v, np.float64).ravel() for v in values]) if values else np.zeros(0)
  else:
    flat = np.asarray(values, np.float64).ravel()
  if flat.size == 0:
    raise InputError(f"{name}: returned no log-probabilities; pass non-empty sequences")
  if np.any(flat > 1e-6) or np.any(np.isnan(flat)):
    raise InputError(f"{name}: returned values that are not log-probabilities (NaN or > 0)")
  return flat


def mean_nll(log_prob_fn: Callable[[Any], Any], tokens, name: str = "log_prob_fn") -> float:
  """-mean_t log q(x_t | x_<t) over every token of `tokens`, with q given by per-token log-probs."""
  return float(-_token_log_probs(log_prob_fn(tokens), name).mean())


def nll_oracle(samples, oracle_log_prob_fn: Callable[[Any], Any]) -> float:
  """NLL-oracle (Yu et al., SeqGAN): -mean_t log p_oracle(x_t | x_<t) over generated `samples`.

  `oracle_log_prob_fn(samples)` returns per-token log-probs (an array shaped like the samples, or a list of
  per-sequence arrays), e.g. `TrigramLM.log_prob` for int arrays (n, L). Lower means more oracle-like samples.
  """
  return mean_nll(oracle_log_prob_fn, samples, "oracle_log_prob_fn")


def nll_test(log_prob_fn: Callable[[Any], Any], test_tokens) -> float:
  """NLL-test: -mean_t log q_gen(x_t | x_<t) of real test data under the generator (log perplexity)."""
  return mean_nll(log_prob_fn, test_tokens, "log_prob_fn")


def reverse_perplexity(train_fn: Callable[[Any], Callable[[Any], Any]], samples, real_eval_tokens) -> float:
  """Reverse perplexity: exp(NLL) of real text under an LM trained only on generated samples.

  train_fn(samples) trains a fresh LM and returns its per-token log-prob function; it is then applied to
  `real_eval_tokens`. Low values need samples that are both good and diverse (a collapsed generator scores high).
  """
  eval_fn = train_fn(samples)
  if not callable(eval_fn):
    raise InputError(f"train_fn: must return a per-token log-prob function, returned {type(eval_fn).__name__}")
  return float(math.exp(mean_nll(eval_fn, real_eval_tokens, "the function returned by train_fn")))


def sequence_metrics(hypotheses, references, *, bleu_orders: Iterable[int] = DEFAULT_ORDERS,
                     self_bleu_orders: Iterable[int] = DEFAULT_ORDERS, distinct_orders: Iterable[int] = (1, 2, 3),
                     max_hypotheses: int | None = None, max_references: int | None = None,
                     max_self_references: int | None = None, seed: int = 0) -> dict[str, float]:
  """{bleu2..bleu5, self_bleu2..self_bleu5, distinct1..distinct3, length} of generated `hypotheses`.

  BLEU is against `references` (held-out real text); Self-BLEU and distinct-n are over the hypotheses alone;
  `length` is their mean token count. Subsampling as in `bleu_scores` / `self_bleu_scores`, with one seed:
  `max_references` caps BLEU's reference set only, `max_self_references` Self-BLEU's pool of samples (None: every
  other sample), so a BLEU setting never changes Self-BLEU.
  """
  hyps = as_token_lists(hypotheses, "hypotheses")
  out = {f"bleu{n}": v for n, v in bleu_scores(hyps, references, bleu_orders, max_hypotheses=max_hypotheses,
                                               max_references=max_references, seed=seed).items()}
  out.update({f"self_bleu{n}": v for n, v in self_bleu_scores(hyps, self_bleu_orders, max_hypotheses=max_hypotheses,
                                                              max_references=max_self_references,
                                                              seed=seed).items()})
  out.update({f"distinct{n}": distinct_n(hyps, n) for n in _check_orders(distinct_orders)})
  out["length"] = float(np.mean([len(h) for h in hyps]))
  return out


def classification_metrics(labels, predictions) -> dict[str, float]:
  """Accuracy, and macro-F1 over the classes present in the labels or the predictions (as scikit-learn's
  f1_score(average='macro')): F1_c = 2 TP / (2 TP + FP + FN), a class with 2 TP + FP + FN = 0 counting 0."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  f1 = []
  for c in np.union1d(labels, predictions):
    tp = np.sum((predictions == c) & (labels == c))
    fp = np.sum((predictions == c) & (labels != c))
    fn = np.sum((predictions != c) & (labels == c))
    denom = 2 * tp + fp + fn
    f1.append(2 * tp / denom if denom else 0.0)
  return {"accuracy": float(np.mean(predictions == labels)) if len(labels) else 0.0,
          "macro_f1": float(np.mean(f1)) if f1 else 0.0}
