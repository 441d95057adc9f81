"""Synthetic trigram language of "LM fine-tuning with a discriminator", Appendix A.

The appendix defines, for paper word indices i, j, k in {1..1000},

  p(i, j, k) ∝ α(j) · β(i, j) · β(k, j)                                     (A.1)
  α(j) = (1/50) · log(j + 1) / log 51   for j <= 50,   1/j otherwise        (A.2)
  β(i, j) = (i · (|i - j + ξ| + 1))^(-γ),   γ = 0.75                        (A.3)

with ξ uniform on {0, ..., 5}, drawn independently for each triple (i, j, k); the triple's one ξ enters both β
factors of (A.1). Sentences are 10 words after one start token; train/valid/test hold 80k/10k/10k sentences.

Sentence start. The appendix does not say how the start token S enters (A.1). Here S is paper index 0 (the
words are the natural numbers 1..1000) and a sentence S w1 .. w10 is the chain of trigrams (S, w1, w2),
(w1, w2, w3), ...:

  p(w1 | S)              = Σ_k p(S, w1, k) / Σ_jk p(S, j, k)  ∝ α(w1) · Z(S, w1)
  p(w_t | w_{t-2}, w_{t-1}) = p(k | i, j) = f(i, j, k) / Z(i, j)      (t >= 2, with w_0 = S)
  f(i, j, k) = (|i - j + ξ_ijk| + 1)^(-γ) · β(k, j; ξ_ijk),   Z(i, j) = Σ_k f(i, j, k)

f is (A.1) divided by α(j) · i^(-γ), factors that do not depend on k and so cancel in p(k | i, j). That makes
i = 0 well defined: β(0, j) is infinite only through the constant 0^(-γ). This reading reproduces the paper's
statistics at seed 0 (top 50 words 70.1% of the training corpus vs 70.5%, next 100 14.9% vs 14.7%, exact
per-token perplexity 78.6 and test-split 77.1 vs 78.14, rare/frequent perplexity 742/29.9 vs 767/29.7), which
the other readings tried do not: drawing (w1, w2, w3) from the joint (A.1) gives 64.7% and perplexity 97.

Representation. A dense table over 1001 × 1000 × 1000 triples (4 GB) is not stored. ξ is a deterministic hash
of (seed, i, j, k) (murmur3's 32-bit finaliser, `TrigramLM.xi`), so any probability is recomputed exactly on
demand. Z, a (V + 1) × V float64 matrix, costs 10⁹ hashed terms (several seconds in a jitted JAX kernel) and is
cached per (seed, V, γ). After that a per-token log p costs one hash, a conditional row O(V), and sampling
O(1) per word by rejection from the envelope f(i, j, k) <= M(i, j) · E(j, k), M = max_ξ (|i - j + ξ| + 1)^(-γ),
E = max_ξ β(k, j; ξ).

Token ids: word id w in [0, V) is paper index w + 1; the start token is id V (paper index 0), so an LM over
V + 1 tokens and `conditional(...)[..., w]` index words identically.

Frequent and rare words (paper §4.1, Table 1): words ranked by training-corpus frequency; the top 50 are
"frequent", the rest "rare". Perplexity is also reported on frequent-target and rare-target positions separately.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxtextgan.data import word_stats
from jaxtextgan.errors import InputError

SENTENCE_LEN = 10
VOCAB_SIZE = 1000
GAMMA = 0.75
ALPHA_CUT = 50
N_XI = 6  # ξ ∈ {0, ..., 5}
SPLIT_SIZES = {"train": 80_000, "valid": 10_000, "test": 10_000}

# murmur3 fmix32 multipliers and two odd Weyl increments.
_M1 = np.uint32(0x85EBCA6B)
_M2 = np.uint32(0xC2B2AE35)
_W1 = np.uint32(0x9E3779B9)
_W2 = np.uint32(0x7F4A7C15)
_S16 = np.uint32(16)
_S13 = np.uint32(13)
_MASK = 0xFFFFFFFF

_Z_CHUNK_CONTEXTS = 16_000  # contexts per kernel call: 16M float32 terms at V = 1000
_ROW_CHUNK_CONTEXTS = 2_048


def _fmix32(h):
  """murmur3's 32-bit finaliser on uint32 arrays (NumPy or JAX): a bijection with full avalanche."""
  h = h ^ (h >> _S16)
  h = h * _M1
  h = h ^ (h >> _S13)
  h = h * _M2
  return h ^ (h >> _S16)


def _fmix32_int(h: int) -> int:
  h &= _MASK
  h ^= h >> 16
  h = (h * 0x85EBCA6B) & _MASK
  h ^= h >> 13
  h = (h * 0xC2B2AE35) & _MASK
  return h ^ (h >> 16)


def _seed_key(seed: int) -> int:
  """32-bit hash key from a non-negative integer seed (all of its bits)."""
  key = _fmix32_int(0x5851F42D)
  while True:
    key = _fmix32_int(key ^ _fmix32_int(seed & _MASK))
    seed >>= 32
    if seed == 0:
      return key


def _context_hash(key, i, j):
  return _fmix32(_fmix32(key ^ i.astype(np.uint32)) + j.astype(np.uint32) * _W1)


def _xi_from_context(h_ij, k):
  """ξ ∈ {0..5} from a context hash (uint32) and word ids k; shared by the NumPy and JAX paths (bit-exact)."""
  return _fmix32(h_ij + k.astype(np.uint32) * _W2) % np.uint32(N_XI)


def alpha(n, cut: int = ALPHA_CUT) -> np.ndarray:
  """α(n) of (A.2) for paper indices n >= 1: log(n + 1) / (cut · log(cut + 1)) for n <= cut, else 1/n."""
  n = np.asarray(n, np.float64)
  return np.where(n <= cut, np.log(n + 1.0) / (cut * math.log(cut + 1.0)), 1.0 / n)


def log_beta(n_a, n_j, xi, gamma: float = GAMMA) -> np.ndarray:
  """log β of (A.3): -γ · (log n_a + log(|n_a - n_j + ξ| + 1)), paper indices n >= 1."""
  n_a = np.asarray(n_a, np.float64)
  n_j = np.asarray(n_j, np.float64)
  return -gamma * (np.log(n_a) + np.log(np.abs(n_a - n_j + xi) + 1.0))


def _power_tables(vocab_size: int, gamma: float):
  """n^-γ for n = 1..V and (m + 1)^-γ for m = 0..V+5, float32 device arrays."""
  npow = np.arange(1, vocab_size + 1, dtype=np.float64) ** -gamma
  dpow = np.arange(1, vocab_size + N_XI + 1, dtype=np.float64) ** -gamma
  return jnp.asarray(npow, jnp.float32), jnp.asarray(dpow, jnp.float32)


@functools.partial(jax.jit, static_argnames=("vocab_size",))
def _rows_kernel(i, j, key, npow, dpow, vocab_size: int):
  """Rows f(i, j, ·) for token-id contexts i (word or start), j (word), both (B,): float32 (B, V)."""
  k = jnp.arange(vocab_size, dtype=jnp.int32)
  xi = _xi_from_context(_context_hash(key, i, j)[:, None], k[None, :]).astype(jnp.int32)
  n_i = jnp.where(i == vocab_size, 0, i + 1)  # the start token is paper index 0
  # (|i - j + ξ| + 1)^-γ for the 6 values of ξ, then picked per k: selects beat a gather here.
  b_i = dpow[jnp.abs(n_i[:, None] - (j[:, None] + 1) + jnp.arange(N_XI))]
  b_sel = b_i[:, :1]
  for x in range(1, N_XI):
    b_sel = jnp.where(xi == x, b_i[:, x:x + 1], b_sel)
  return b_sel * npow[None, :] * dpow[jnp.abs(k[None, :] - j[:, None] + xi)]


@functools.partial(jax.jit, static_argnames=("vocab_size",))
def _normaliser_kernel(i, key, npow, dpow, vocab_size: int):
  """Z(i, j) for contexts i (c,) × every word j: float32 (c, V)."""
  c = i.shape[0]
  j = jnp.tile(jnp.arange(vocab_size, dtype=jnp.int32), c)
  return _rows_kernel(jnp.repeat(i, vocab_size), j, key, npow, dpow, vocab_size).sum(-1).reshape(c, vocab_size)


@functools.partial(jax.jit, static_argnames=("vocab_size",))
def _propagate_kernel(i, weight, key, npow, dpow, vocab_size: int):
  """Contexts i (c,) × every word j with weights w (c, V) = π(i, j) / Z(i, j).

  Returns Σ_i w(i, j) f(i, j, k) as (V, V) (the next pair law) and Σ_k f log f as (c, V) (for row entropies).
  """
  c = i.shape[0]
  j = jnp.tile(jnp.arange(vocab_size, dtype=jnp.int32), c)
  f = _rows_kernel(jnp.repeat(i, vocab_size), j, key, npow, dpow, vocab_size).reshape(c, vocab_size, vocab_size)
  return jnp.einsum("cj,cjk->jk", weight, f), jnp.sum(f * jnp.log(f), axis=-1)


def _context_chunks(vocab_size: int):
  """Chunks of context rows i in [0, V] (V = start), padded to one size so each kernel compiles once."""
  per_chunk = min(vocab_size + 1, max(1, _Z_CHUNK_CONTEXTS // vocab_size))
  for lo in range(0, vocab_size + 1, per_chunk):
    rows = min(per_chunk, vocab_size + 1 - lo)
    yield lo, rows, np.minimum(np.arange(lo, lo + per_chunk), vocab_size)


@functools.lru_cache(maxsize=4)
def _normaliser(key: int, vocab_size: int, gamma: float) -> np.ndarray:
  """Z(i, j) = Σ_k f(i, j, k) for i in [0, V] (row V = start) and words j: float64 (V + 1, V)."""
  npow, dpow = _power_tables(vocab_size, gamma)
  out = np.empty((vocab_size + 1, vocab_size), np.float64)
  for lo, rows, i in _context_chunks(vocab_size):
    sums = _normaliser_kernel(jnp.asarray(i, jnp.int32), jnp.uint32(key), npow, dpow, vocab_size)
    out[lo:lo + rows] = np.asarray(sums, np.float64)[:rows]
  out.setflags(write=False)
  return out


def _as_generator(rng) -> np.random.Generator:
  if isinstance(rng, np.random.Generator):
    return rng
  if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
    return np.random.default_rng(rng)
  raise InputError(f"rng: expected a numpy Generator or an integer seed, got {type(rng).__name__}")


def _check_count(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise InputError(f"{name}: expected a non-negative integer, got {value!r}")
  return int(value)


def _flat_cdf(weights: np.ndarray) -> np.ndarray:
  """Row-wise CDFs of a positive (R, V) matrix, row r shifted to (r, r + 1] and flattened for one searchsorted."""
  cdf = np.cumsum(weights, axis=1)
  cdf /= cdf[:, -1:]
  cdf[:, -1] = 1.0
  return (cdf + np.arange(weights.shape[0])[:, None]).ravel()


def _draw_rows(flat_cdf: np.ndarray, rows: np.ndarray, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
  """One inverse-CDF draw from each requested row of a `_flat_cdf` table."""
  idx = np.searchsorted(flat_cdf, rows + rng.random(rows.shape), side="right")
  return np.clip(idx - rows * vocab_size, 0, vocab_size - 1)


class TrigramLM:
  """The Appendix A trigram distribution p over sentences S w1 .. wL (see the module docstring).

  Args:
    seed: selects ξ (the hash key): instances with one seed define the same distribution.
    vocab_size: V words (ids 0..V-1); the start token is id V.
    sentence_len: L, words per sentence after the start token.
    gamma: γ of (A.3).
    alpha_cut: the 50 of (A.2).
  """

  def __init__(self, seed: int = 0, vocab_size: int = VOCAB_SIZE, sentence_len: int = SENTENCE_LEN,
               gamma: float = GAMMA, alpha_cut: int = ALPHA_CUT):
    self.seed = _check_count(seed, "seed")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or not 2 <= vocab_size <= 1 << 16:
      raise InputError(f"vocab_size: expected an integer in [2, 65536], got {vocab_size!r}")
    if _check_count(sentence_len, "sentence_len") < 1:
      raise InputError(f"sentence_len: expected a positive integer, got {sentence_len!r}")
    if not (isinstance(gamma, (int, float)) and gamma > 0):
      raise InputError(f"gamma: expected a positive number, got {gamma!r}")
    if _check_count(alpha_cut, "alpha_cut") < 1:
      raise InputError(f"alpha_cut: expected a positive integer, got {alpha_cut!r}")
    self.vocab_size = int(vocab_size)
    self.sentence_len = int(sentence_len)
    self.gamma = float(gamma)
    self.alpha_cut = int(alpha_cut)
    self.start_id = self.vocab_size
    self._key = _seed_key(self.seed)
    self._npow, self._dpow = _power_tables(self.vocab_size, self.gamma)

  def __repr__(self) -> str:
    return (f"TrigramLM(seed={self.seed}, vocab_size={self.vocab_size}, sentence_len={self.sentence_len}, "
            f"gamma={self.gamma}, alpha_cut={self.alpha_cut})")

  # ---- exact quantities -------------------------------------------------------------------------------------

  def paper_index(self, tokens) -> np.ndarray:
    """Paper index n of token ids: w + 1 for words, 0 for the start token."""
    t = np.asarray(tokens, np.int64)
    return np.where(t == self.start_id, 0, t + 1)

  def xi(self, i, j, k) -> np.ndarray:
    """ξ_ijk ∈ {0..5} for token ids (broadcast): a hash of (seed, i, j, k), uniform and independent across triples."""
    i, j, k = (np.asarray(a) for a in (i, j, k))
    shape = np.broadcast_shapes(i.shape, j.shape, k.shape)
    i, j, k = (np.broadcast_to(np.atleast_1d(a).astype(np.uint32), shape or (1,)) for a in (i, j, k))
    return _xi_from_context(_context_hash(np.uint32(self._key), i, j), k).astype(np.int64).reshape(shape)

  def log_f(self, i, j, k) -> np.ndarray:
    """log f(i, j, k) = -γ log(|i - j + ξ| + 1) + log β(k, j; ξ): (A.1) over α(j) i^-γ; token ids, float64."""
    xi = self.xi(i, j, k)
    n_i, n_j = self.paper_index(i), self.paper_index(j)
    n_k = np.asarray(k, np.float64) + 1.0
    return -self.gamma * np.log(np.abs(n_i - n_j + xi) + 1.0) + log_beta(n_k, n_j, xi, self.gamma)

  @functools.cached_property
  def normaliser(self) -> np.ndarray:
    """Z(i, j) = Σ_k f(i, j, k): float64 (V + 1, V), row V the start; computed once per (seed, V, γ)."""
    return _normaliser(self._key, self.vocab_size, self.gamma)

  @functools.cached_property
  def first_word_log_probs(self) -> np.ndarray:
    """log p(w1 | S) ∝ log α(w1) + log Z(S, w1), shape (V,)."""
    weight = np.log(alpha(np.arange(1, self.vocab_size + 1), self.alpha_cut)) + np.log(self.normaliser[-1])
    return weight - np.logaddexp.reduce(weight)

  def contexts(self, sentences) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) token-id contexts of every position of `sentences` (..., L): ([S, S, w1..], [S, w1, w2..]).

    `conditional(*contexts(x))[..., t, x[..., t]] == exp(log_prob(x)[..., t])`; (S, S) stands for "only S seen".
    """
    x = self._check_words(sentences, "sentences")
    s = np.full(x.shape[:-1] + (1,), self.start_id, np.int64)
    cj = np.concatenate([s, x[..., :-1]], axis=-1)
    ci = np.concatenate([s, cj[..., :-1]], axis=-1)
    return ci, cj

  def log_prob(self, sentences) -> np.ndarray:
    """Per-token log p(w_t | S, w_1..w_{t-1}) of word-id sentences (..., L): float64 (..., L)."""
    x = self._check_words(sentences, "sentences")
    if x.ndim == 0 or x.shape[-1] == 0:
      raise InputError(f"sentences: expected shape (..., L) with L >= 1, got {x.shape}")
    ci, cj = self.contexts(x)
    out = np.empty(x.shape, np.float64)
    out[..., 0] = self.first_word_log_probs[x[..., 0]]
    i, j, k = ci[..., 1:], cj[..., 1:], x[..., 1:]
    out[..., 1:] = self.log_f(i, j, k) - np.log(self.normaliser[i, j])
    return out

  def true_perplexity(self, sentences) -> float:
    """exp(-mean_t log p(w_t | context)) over every token of `sentences` (Table 1's "True distribution p")."""
    return float(np.exp(-self.log_prob(sentences).mean()))

  def conditional(self, context_i, context_j) -> np.ndarray:
    """p(· | i, j) over the V words for token-id contexts (broadcast): float64 (..., V).

    (S, S) gives p(w1 | S); (S, w) and (w, w') give f(i, j, ·) / Z(i, j). A word followed by S never occurs
    and is an error.
    """
    ci, cj = (self._check_tokens(c, n) for c, n in ((context_i, "context_i"), (context_j, "context_j")))
    ci, cj = np.broadcast_arrays(ci, cj)
    shape = ci.shape
    ci, cj = ci.ravel(), cj.ravel()
    start = self.start_id
    self._check_context_order(ci, cj)
    out = np.empty((ci.size, self.vocab_size), np.float64)
    first = cj == start
    out[first] = np.exp(self.first_word_log_probs)
    rest = np.flatnonzero(~first)
    for lo in range(0, rest.size, _ROW_CHUNK_CONTEXTS):
      sel = rest[lo:lo + _ROW_CHUNK_CONTEXTS]
      pad = np.resize(sel, _ROW_CHUNK_CONTEXTS)  # one shape, one compilation
      rows = np.asarray(_rows_kernel(jnp.asarray(ci[pad], jnp.int32), jnp.asarray(cj[pad], jnp.int32),
                                     jnp.uint32(self._key), self._npow, self._dpow, self.vocab_size), np.float64)
      rows = rows[:sel.size]
      out[sel] = rows / rows.sum(-1, keepdims=True)
    return out.reshape(shape + (self.vocab_size,))

  def exact_perplexity(self) -> float:
    """exp(H / L): the population per-token perplexity, H the exact entropy of a whole sentence.

    H = H(w1 | S) + Σ_{t>=2} Σ_ij π_t(i, j) H(p(· | i, j)), with π_t the exact law of (w_{t-2}, w_{t-1})
    (π_2(S, w) = p(w | S)) propagated by π_{t+1}(j, k) = Σ_i π_t(i, j) p(k | i, j). Costs L - 1 passes over
    all V³ triples (1-3 minutes at V = 1000 on two cores; 78.6 for seed 0); quick for small V.
    """
    v = self.vocab_size
    log_first = self.first_word_log_probs
    entropy = -np.sum(np.exp(log_first) * log_first)
    pi = np.zeros((v + 1, v), np.float64)
    pi[v] = np.exp(log_first)
    z = self.normaliser
    for _ in range(self.sentence_len - 1):
      nxt = np.zeros((v + 1, v), np.float64)
      for lo, rows, i in _context_chunks(v):
        w = np.zeros((i.size, v), np.float64)  # padded rows get weight 0
        w[:rows] = pi[lo:lo + rows] / z[lo:lo + rows]
        if not w.any():
          continue
        mass, flogf = _propagate_kernel(jnp.asarray(i, jnp.int32), jnp.asarray(w, jnp.float32),
                                        jnp.uint32(self._key), self._npow, self._dpow, v)
        nxt[:v] += np.asarray(mass, np.float64)
        # H(p(· | i, j)) = log Z - Σ_k f log f / Z.
        zc = z[lo:lo + rows]
        entropy += np.sum(pi[lo:lo + rows] * (np.log(zc) - np.asarray(flogf, np.float64)[:rows] / zc))
      pi = nxt / nxt.sum()
    return float(np.exp(entropy / self.sentence_len))

  # ---- sampling ---------------------------------------------------------------------------------------------

  @functools.cached_property
  def _samplers(self):
    """Inverse-CDF tables for p(w1 | S) and the per-j envelope E(j, ·), plus log E (V, V)."""
    v = self.vocab_size
    n = np.arange(1, v + 1, dtype=np.float64)
    min_dist = np.min(np.abs((n[None, :] - n[:, None])[..., None] + np.arange(N_XI)), axis=-1)
    log_env = -self.gamma * (np.log(n)[None, :] + np.log(min_dist + 1.0))  # log max_ξ β(k, j; ξ) at [j, k]
    first = np.cumsum(np.exp(self.first_word_log_probs))
    return {"first": first / first[-1], "env": _flat_cdf(np.exp(log_env - log_env.max(1, keepdims=True))),
            "log_env": log_env}

  def _log_env_context(self, i, j) -> np.ndarray:
    """log M(i, j) = log max_ξ (|i - j + ξ| + 1)^-γ, token ids."""
    d = (self.paper_index(i) - self.paper_index(j))[..., None] + np.arange(N_XI)
    return -self.gamma * np.log(np.abs(d).min(-1) + 1.0)

  def sample_next(self, context_i, context_j, rng=None) -> np.ndarray:
    """One word w ~ p(· | i, j) for each token-id context (equal-length 1-D arrays): int64 array.

    (S, S) draws from p(w1 | S) by inverse CDF. Other contexts use rejection sampling: propose k ~ E(j, ·),
    accept with probability f(i, j, k) / (M(i, j) E(j, k)) <= 1, which draws exactly from f(i, j, ·) / Z(i, j).
    """
    rng = _as_generator(rng)
    ci = self._check_tokens(context_i, "context_i").ravel()
    cj = self._check_tokens(context_j, "context_j").ravel()
    if ci.shape != cj.shape:
      raise InputError(f"context_j: {cj.size} contexts but context_i has {ci.size}; pass equal lengths")
    self._check_context_order(ci, cj)
    v, tables = self.vocab_size, self._samplers
    out = np.empty(ci.shape, np.int64)
    first = np.flatnonzero(cj == self.start_id)
    out[first] = np.minimum(np.searchsorted(tables["first"], rng.random(first.size), side="right"), v - 1)
    pending = np.flatnonzero(cj != self.start_id)
    while pending.size:
      i, j = ci[pending], cj[pending]
      k = _draw_rows(tables["env"], j, v, rng)
      log_accept = self.log_f(i, j, k) - self._log_env_context(i, j) - tables["log_env"][j, k]
      accept = np.log(rng.random(pending.size)) < log_accept
      out[pending[accept]] = k[accept]
      pending = pending[~accept]
    return out

  def sample(self, n: int, rng=None) -> np.ndarray:
    """n sentences drawn from p: int32 word ids of shape (n, L), without the start token."""
    n = _check_count(n, "n")
    rng = _as_generator(rng)
    out = np.full((n, self.sentence_len + 2), self.start_id, np.int64)
    for t in range(2, self.sentence_len + 2):
      out[:, t] = self.sample_next(out[:, t - 2], out[:, t - 1], rng)
    return out[:, 2:].astype(np.int32)

  def corpus(self, seed: int | None = None, sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Train/valid/test splits sampled from p: {name: int32 (n, L)}, sizes 80k/10k/10k by default.

    Each split draws from its own child of SeedSequence(seed) (seed defaults to the LM's), so one split's size
    does not change the others.
    """
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    seed = self.seed if seed is None else _check_count(seed, "seed")
    unknown = [name for name in sizes if name not in SPLIT_SIZES]
    if unknown:
      raise InputError(f"sizes: unknown split {unknown[0]!r}; use train, valid and test")
    children = np.random.SeedSequence([seed, 0x7216]).spawn(len(SPLIT_SIZES))
    return {name: self.sample(sizes[name], np.random.default_rng(child))
            for name, child in zip(SPLIT_SIZES, children) if name in sizes}

  def lm_blocks(self, sentences) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) = ([S, w1..w_{L-1}], [w1..w_L]) for a GPT-style LM; see `lm_blocks`."""
    return lm_blocks(self._check_words(sentences, "sentences"), self.start_id)

  def frequent_ids(self, tokens, k: int = 50) -> np.ndarray:
    """The k most frequent word ids of `tokens` (the train split in the paper), most frequent first."""
    return word_stats.frequent_ids(tokens, k, self.vocab_size)

  # ---- validation -------------------------------------------------------------------------------------------

  def _check_tokens(self, x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
      raise InputError(f"{name}: expected integer token ids, got dtype {x.dtype}")
    if x.size and (x.min() < 0 or x.max() > self.start_id):
      raise InputError(f"{name}: token ids must lie in [0, {self.start_id}] (start token = {self.start_id})")
    return x.astype(np.int64)

  def _check_words(self, x, name: str) -> np.ndarray:
    x = self._check_tokens(x, name)
    if x.size and x.max() >= self.vocab_size:
      raise InputError(f"{name}: word ids must lie in [0, {self.vocab_size}); drop the start token {self.start_id}")
    return x

  def _check_context_order(self, ci: np.ndarray, cj: np.ndarray) -> None:
    if np.any((ci != self.start_id) & (cj == self.start_id)):
      raise InputError("context_j: the start token only follows itself; pass (S, S), (S, w) or (w, w')")


# ---- corpus helpers (module level: they need no distribution) ---------------------------------------------------


def lm_blocks(sentences, start_id: int) -> tuple[np.ndarray, np.ndarray]:
  """inputs = [S, w1..w_{L-1}], targets = [w1..w_L], both int32 (n, L).

  An LM's log q(targets | inputs) then lines up with `TrigramLM.log_prob(sentences)`, so log q - log p
  compares them token by token (Table 1's last column).
  """
  x = np.asarray(sentences)
  if x.ndim != 2 or x.shape[1] < 1 or x.dtype.kind not in "iu":
    raise InputError(f"sentences: expected an integer array of shape (n, L), got {x.dtype} {x.shape}")
  inputs = np.concatenate([np.full((x.shape[0], 1), start_id, x.dtype), x[:, :-1]], axis=1)
  return inputs.astype(np.int32), x.astype(np.int32)
