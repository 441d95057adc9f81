"""Tests for jaxtextgan.metrics against hand-computed values."""

import math
import time
from collections import Counter

import numpy as np
import pytest

from jaxtextgan import metrics
from jaxtextgan.data.trigram import TrigramLM
from jaxtextgan.errors import InputError

HYP = "the cat sat on the mat"
REF = "the cat is on the mat"


def test_bleu_single_reference_hand_values():
  # p1 = 5/6 (the×2, cat, on, mat), p2 = 3/5 (the cat, on the, the mat), p3 = 1/4 (on the mat),
  # p4 = 0 matched of 3 -> method 1 gives 0.1/3; lengths equal, so BP = 1.
  scores = metrics.bleu_scores([HYP], [REF], (2, 3, 4))
  assert scores[2] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
  assert scores[3] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
  assert scores[4] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 0.1 / 3) ** (1 / 4))
  assert metrics.bleu([HYP], [REF], 3) == pytest.approx(0.5)


def test_bleu_clips_by_the_max_count_over_references():
  # "the" appears at most twice in one reference: p1 = 2/4; "the the" at most once: p2 = 1/3.
  # Closest reference length to 4 is 3 < 4, so BP = 1.
  score = metrics.bleu(["the the the the"], ["the cat", "the the dog"], 2)
  assert score == pytest.approx(math.sqrt(2 / 4 * 1 / 3))


def test_bleu_brevity_penalty_and_closest_length_tie():
  # All n-grams match; c = 2 against r = 4: BP = exp(1 - 4/2).
  assert metrics.bleu(["the cat"], ["the cat sat on"], 2) == pytest.approx(math.exp(-1))
  # |h| = 3 is equally far from 2 and 4; NLTK takes the shorter, so BP = 1 (not exp(1 - 4/3)).
  assert metrics.bleu(["a b c"], ["a b", "a b c d"], 2) == pytest.approx(1.0)


def test_bleu_averages_over_hypotheses_and_zero_unigram_rule():
  # The second hypothesis matches no unigram: NLTK returns 0 for it (no smoothing applies).
  score = metrics.bleu([HYP, "x y z w v u"], [REF], 2)
  assert score == pytest.approx(math.sqrt(0.5) / 2)
  # Integer token lists behave like strings.
  assert metrics.bleu([[1, 2, 3, 4]], [[1, 2, 3, 4]], 4) == pytest.approx(1.0)
  assert metrics.bleu(np.array([[1, 2, 3, 4]]), [(1, 2, 3, 4)], 5) == pytest.approx((0.1 / 1) ** (1 / 5))


def test_self_bleu_excludes_the_sample_itself():
  # Distinct samples: including themselves as references would give exactly 1.0.
  distinct = ["a b c", "a b d", "x y z"]
  # "a b c" vs {"a b d", "x y z"}: p1 = 2/3, p2 = 1/2, BP = 1 -> sqrt(1/3); the same for "a b d"; "x y z" -> 0.
  assert metrics.self_bleu(distinct, 2) == pytest.approx(2 * math.sqrt(1 / 3) / 3)
  assert metrics.bleu(distinct, distinct, 2) == pytest.approx(1.0)  # what counting itself would give
  assert metrics.self_bleu(["p q r s", "t u v w"], 2) == 0.0
  # A duplicate elsewhere in the set is a genuine match.
  assert metrics.self_bleu(["a b c", "a b c"], 3) == pytest.approx(1.0)


def test_self_bleu_closest_length_skips_only_the_sample_itself():
  # For "a b c d" the other lengths are {2}: c = 4 > 2, BP = 1, p1 = 2/4, p2 = 1/3.
  # For "a b" the other lengths are {4}: BP = exp(1 - 4/2), p1 = p2 = 1.
  expected = (math.sqrt(2 / 4 * 1 / 3) + math.exp(-1)) / 2
  assert metrics.self_bleu(["a b c d", "a b"], 2) == pytest.approx(expected)


def test_subsampling_is_reproducible_and_bounded():
  rng = np.random.default_rng(0)
  hyps = rng.integers(0, 20, (200, 8))
  refs = rng.integers(0, 20, (300, 8))
  a = metrics.bleu_scores(hyps, refs, max_hypotheses=50, max_references=60, seed=1)
  b = metrics.bleu_scores(hyps, refs, max_hypotheses=50, max_references=60, seed=1)
  c = metrics.bleu_scores(hyps, refs, max_hypotheses=50, max_references=60, seed=2)
  assert a == b and a != c
  # Caps above the set sizes leave the sets whole.
  assert metrics.bleu_scores(hyps, refs, max_hypotheses=10_000, max_references=10_000) == metrics.bleu_scores(hyps, refs)
  # Subsampling to one hypothesis equals scoring that hypothesis alone.
  pick = np.sort(np.random.default_rng(3).choice(200, 1, replace=False))
  assert metrics.bleu(hyps, refs, 3, max_hypotheses=1, seed=3) == pytest.approx(metrics.bleu(hyps[pick], refs, 3))
  s1 = metrics.self_bleu_scores(hyps, max_hypotheses=40, max_references=100, seed=4)
  assert s1 == metrics.self_bleu_scores(hyps, max_hypotheses=40, max_references=100, seed=4)


def test_bleu_500_by_500_is_fast():
  rng = np.random.default_rng(0)
  # Zipf-like tokens so that many n-grams match, as in real text.
  hyps = [[str(t) for t in rng.zipf(1.3, 30) % 5000] for _ in range(500)]
  refs = [[str(t) for t in rng.zipf(1.3, 30) % 5000] for _ in range(500)]
  start = time.perf_counter()
  scores = metrics.bleu_scores(hyps, refs, (2, 3, 4, 5))
  self_scores = metrics.self_bleu_scores(hyps, (2, 3, 4, 5))
  elapsed = time.perf_counter() - start
  assert elapsed < 10.0
  assert 1 > scores[2] > scores[3] > scores[4] > scores[5] > 0
  assert 1 > self_scores[2] > self_scores[5] > 0


def test_distinct_n_hand_values():
  samples = [[1, 2, 3], [1, 2, 4]]
  assert metrics.distinct_n(samples, 1) == pytest.approx(4 / 6)  # {1, 2, 3, 4} of 6 unigrams
  assert metrics.distinct_n(samples, 2) == pytest.approx(3 / 4)  # (1,2) twice, (2,3), (2,4)
  assert metrics.distinct_n(samples, 4) == 0.0  # no 4-grams at all
  assert metrics.distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)


def test_tokenize_and_mixed_inputs():
  assert metrics.tokenize("  the  cat\nsat ") == ["the", "cat", "sat"]
  assert metrics.as_token_lists(["a b", ("c", "d"), np.array([1, 2])]) == [("a", "b"), ("c", "d"), (1, 2)]
  with pytest.raises(InputError, match="hypotheses"):
    metrics.bleu("the cat", ["the cat"])
  with pytest.raises(InputError, match="references"):
    metrics.bleu(["the cat"], [])
  with pytest.raises(InputError, match="max_hypotheses"):
    metrics.bleu(["the cat"], ["the cat"], max_hypotheses=0)
  with pytest.raises(InputError, match="samples"):
    metrics.self_bleu(["only one"])


def test_nll_oracle_and_nll_test():
  half = lambda x: np.full(np.shape(x), math.log(0.5))
  assert metrics.nll_oracle(np.zeros((3, 4), int), half) == pytest.approx(math.log(2))
  # Ragged sequences: the log-prob function may return one array per sequence; the mean is per token.
  ragged = lambda seqs: [np.log(np.full(len(s), 0.25 if len(s) == 1 else 0.5)) for s in seqs]
  assert metrics.nll_test(ragged, [[1], [1, 2, 3]]) == pytest.approx((math.log(4) + 3 * math.log(2)) / 4)
  with pytest.raises(InputError, match="log-probabilities"):
    metrics.nll_test(lambda x: np.ones(3), [[1, 2, 3]])


def test_nll_oracle_with_the_trigram_oracle():
  lm = TrigramLM(seed=2, vocab_size=100, sentence_len=6)
  samples = lm.sample(500, 0)
  assert metrics.nll_oracle(samples, lm.log_prob) == pytest.approx(math.log(lm.true_perplexity(samples)))
  # Degenerate samples (the rarest word repeated) are far less likely under the oracle than its own samples
  # (measured: 5.0 vs 3.6 nats per token).
  assert metrics.nll_oracle(np.full((500, 6), 99), lm.log_prob) > metrics.nll_oracle(samples, lm.log_prob) + 1


def unigram_train_fn(vocab_size, add=1.0):
  """A count-based add-k unigram LM: q(w) = (c(w) + k) / (N + kV)."""
  def train(samples):
    counts = Counter(t for s in samples for t in s)
    total = sum(counts.values()) + add * vocab_size
    return lambda seqs: [np.log([(counts[t] + add) / total for t in s]) for s in seqs]
  return train


def bigram_train_fn(vocab_size, add=0.1):
  """A count-based add-k bigram LM with a start symbol: q(w | v) = (c(v, w) + k) / (c(v) + kV)."""
  def train(samples):
    pairs = Counter((v, w) for s in samples for v, w in zip((-1, *s[:-1]), s))
    left = Counter(v for s in samples for v in (-1, *s[:-1]))
    q = lambda v, w: (pairs[v, w] + add) / (left[v] + add * vocab_size)
    return lambda seqs: [np.log([q(v, w) for v, w in zip((-1, *s[:-1]), s)]) for s in seqs]
  return train


def test_reverse_perplexity_hand_value():
  # Add-one counts over V = 3 from [[0, 0, 1], [0, 2]]: q = (4, 2, 2) / 8.
  # Real text [[0, 1], [2, 0]]: mean NLL = (ln 2 + ln 4 + ln 4 + ln 2) / 4 = 1.5 ln 2, so ppl = 2^1.5.
  value = metrics.reverse_perplexity(unigram_train_fn(3), [[0, 0, 1], [0, 2]], [[0, 1], [2, 0]])
  assert value == pytest.approx(2 ** 1.5)


def test_reverse_perplexity_penalises_a_collapsed_generator():
  lm = TrigramLM(seed=0, vocab_size=30, sentence_len=8)
  real = lm.sample(2000, 1).tolist()
  diverse = lm.sample(2000, 2).tolist()
  collapsed = [real[0]] * 2000  # one real sentence repeated: high BLEU, no diversity
  train = bigram_train_fn(30)
  good, bad = (metrics.reverse_perplexity(train, s, real) for s in (diverse, collapsed))
  assert good < lm.true_perplexity(np.array(real)) * 1.5 and bad > 3 * good
  with pytest.raises(InputError, match="train_fn"):
    metrics.reverse_perplexity(lambda s: 3, diverse, real)


def test_sequence_metrics_keys_and_values():
  hyps = ["a b c", "a b d", "x y z"]
  refs = ["a b c", "q r s"]
  out = metrics.sequence_metrics(hyps, refs)
  assert set(out) == {"bleu2", "bleu3", "bleu4", "bleu5", "self_bleu2", "self_bleu3", "self_bleu4", "self_bleu5",
                      "distinct1", "distinct2", "distinct3", "length"}
  assert out["self_bleu2"] == pytest.approx(metrics.self_bleu(hyps, 2))
  assert out["bleu2"] == pytest.approx(metrics.bleu(hyps, refs, 2))
  assert out["distinct1"] == pytest.approx(7 / 9) and out["distinct3"] == 1.0 and out["length"] == 3.0


def test_self_bleu_pool_does_not_depend_on_bleus_reference_cap():
  """max_references caps BLEU's references only; Self-BLEU's pool is every other sample unless
  max_self_references caps it."""
  rng = np.random.default_rng(0)
  hyps = [[int(w) for w in rng.integers(0, 6, size=5)] for _ in range(40)]
  refs = [[int(w) for w in rng.integers(0, 6, size=5)] for _ in range(40)]
  capped = metrics.sequence_metrics(hyps, refs, max_references=5, seed=1)
  full = metrics.sequence_metrics(hyps, refs, seed=1)
  assert capped["self_bleu4"] == pytest.approx(metrics.self_bleu(hyps, 4)) == pytest.approx(full["self_bleu4"])
  assert capped["bleu4"] == pytest.approx(metrics.bleu(hyps, refs, 4, max_references=5, seed=1))
  pooled = metrics.sequence_metrics(hyps, refs, max_self_references=5, seed=1)
  assert pooled["self_bleu4"] == pytest.approx(metrics.self_bleu(hyps, 4, max_references=5, seed=1))
  assert pooled["self_bleu4"] != pytest.approx(full["self_bleu4"])
