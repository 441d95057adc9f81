"""Synthetic trigram language of "LM fine-tuning with a discriminator", Appendix A.

The appendix defines, for paper word indices n_i, n_j, n_k in {1..1000},

  p(i, j, k) ∝ α(j) · β(i, j) · β(k, j)                                     (A.1)
  α(j) = (1/50) · log(j + 1) / log 51   for j <= 50,   1/j otherwise        (A.2)
  β(i, j) = (i · (|i - j + ξ| + 1))^(-γ),   γ = 0.75                        (A.3)

with ξ uniform on {0, ..., 5}, drawn independently for each triple (i, j, k); the triple's one ξ enters both β
factors of (A.1). Sentences are 10 words after a start token; train/valid/test hold 80k/10k/10k sentences.

Representation. A dense table over 1000³ triples (4 GB) is not stored. Instead ξ is a deterministic hash of
(seed, i, j, k) (murmur3's 32-bit finaliser, `xi`), so any probability can be recomputed exactly on demand:

  f(i, j, k)  = β(i, j; ξ_ijk) · β(k, j; ξ_ijk)          (α(j) cancels in the conditional)
  Z(i, j)     = Σ_k f(i, j, k)                           one 1000×1000 float64 matrix, computed once per seed
  p(k | i, j) = f(i, j, k) / Z(i, j)

Z costs 10⁹ hashed terms (a few seconds in a jitted JAX kernel) and is cached per (seed, vocab_size, γ). After
that a per-token log p is O(1) (one hash), a conditional row is O(V) (vectorised over k), and sampling is O(1)
per word by rejection from the envelope f ≤ M(i, j) · E(j, k), M(i, j) = max_ξ β(i, j; ξ), E(j, k) =
max_ξ β(k, j; ξ).

Sentence start. The appendix names a start token but not its conditionals. The first three words are a trigram
drawn from the joint (A.1), and later words follow p(k | i, j):

  p(w1 | S, S)  = P(i = w1)          = Σ_j α(j) Z(w1, j) / Σ_ij α(j) Z(i, j)
  p(w2 | S, w1) = P(j = w2 | i = w1) = α(w2) Z(w1, w2) / Σ_j α(j) Z(w1, j)
  p(w_t | w_{t-2}, w_{t-1}) = p(k = w_t | i = w_{t-2}, j = w_{t-1})       for t >= 3

Token ids: word id w in [0, V) is paper index n = w + 1; the start token is id V, so an LM over V + 1 tokens and
`conditional(...)[..., w]` index words identically.

Frequent and rare words (paper §4.1, Table 1): words ranked by training-corpus frequency; the top 50 are
"frequent", the rest "rare". Perplexity is also reported on frequent-target and rare-target positions separately.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

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

_Z_CHUNK_CONTEXTS = 16_000  # contexts per kernel call: 16M float32 terms, ~64 MB live
_ROW_CHUNK_CONTEXTS = 4_096


def _fmix32(h):
  """murmur3's 32-bit finaliser on uint32 arrays (NumPy or JAX); a bijection with full avalanche."""
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
  seed = int(seed)
  while True:
    key = _fmix32_int(key ^ _fmix32_int(seed & _MASK))
    seed >>= 32
    if seed == 0:
      return key


def _xi_from_context(h_ij, k):
  """ξ ∈ {0..5} for context hash h_ij (uint32) and word ids k; shared by the NumPy and JAX paths."""
  return _fmix32(h_ij + k.astype(np.uint32) * _W2) % np.uint32(N_XI)


def _context_hash(key, i, j):
  return _fmix32(_fmix32(key ^ i.astype(np.uint32)) + j.astype(np.uint32) * _W1)


def alpha(n, cut: int = ALPHA_CUT) -> np.ndarray:
  """α(n) of (A.2) for paper indices n >= 1: log(n + 1) / (cut · log(cut + 1)) for n <= cut, else 1/n."""
  n = np.asarray(n, np.float64)
  return np.where(n <= cut, np.log(n + 1.0) / (cut * math.log(cut + 1.0)), 1.0 / n)


def log_beta(n_a, n_j, xi, gamma: float = GAMMA) -> np.ndarray:
  """log β of (A.3): -γ · (log n_a + log(|n_a - n_j + ξ| + 1)), paper indices n >= 1."""
  n_a = np.asarray(n_a, np.float64)
  n_j = np.asarray(n_j, np.float64)
  return -gamma * (np.log(n_a) + np.log(np.abs(n_a - n_j + xi) + 1.0))


@functools.partial(jax.jit, static_argnames=("vocab_size",))
def _rows_kernel(i, j, key, npow, dpow, vocab_size: int):
  """Unnormalised rows f(i, j, ·) (A.1 without α) for word-id contexts i, j of shape (B,): float32 (B, V)."""
  k = jnp.arange(vocab_size, dtype=jnp.int32)
  h_ij = _context_hash(key, i, j)
  xi = _xi_from_context(h_ij[:, None], k[None, :]).astype(jnp.int32)
  # β(i, j; ξ) for the 6 values of ξ, then pick per k: selects are cheaper than a gather here.
  b_i = npow[i][:, None] * dpow[jnp.abs(i[:, None] - j[:, None] + jnp.arange(N_XI))]
  b_sel = b_i[:, :1]
  for x in range(1, N_XI):
    b_sel = jnp.where(xi == x, b_i[:, x:x + 1], b_sel)
  return b_sel * npow[None, :] * dpow[jnp.abs(k[None, :] - j[:, None] + xi)]


@functools.partial(jax.jit, static_argnames=("vocab_size",))
def _row_sums_kernel(i, j, key, npow, dpow, vocab_size: int):
  return _rows_kernel(i, j, key, npow, dpow, vocab_size).sum(-1)


@functools.partial(jax.jit, static_argnames=("vocab_size",))
def _propagate_kernel(i, weight, key, npow, dpow, vocab_size: int):
  """Contexts i (c,) × all j, weights w (c, V) = π(i, j) / Z(i, j): Σ_i w f(i, j, ·) as (V, V), Σ_k f log f (c, V)."""
  c = i.shape[0]
  j = jnp.tile(jnp.arange(vocab_size, dtype=jnp.int32), c)
  f = _rows_kernel(jnp.repeat(i, vocab_size), j, key, npow, dpow, vocab_size).reshape(c, vocab_size, vocab_size)
  flogf = jnp.sum(f * jnp.log(f), axis=-1)
  return jnp.einsum("cj,cjk->jk", weight, f), flogf


@functools.lru_cache(maxsize=4)
def _normaliser(key: int, vocab_size: int, gamma: float) -> np.ndarray:
  """Z(i, j) = Σ_k f(i, j, k) for all word contexts, float64 (V, V); cached because it costs 10⁹ terms."""
  npow, dpow = _power_tables(vocab_size, gamma)
  per_chunk = min(vocab_size, max(1, _Z_CHUNK_CONTEXTS // vocab_size))
  j = jnp.tile(jnp.arange(vocab_size, dtype=jnp.int32), per_chunk)
  out = np.empty((vocab_size, vocab_size), np.float64)
  for start in range(0, vocab_size, per_chunk):
    rows = min(per_chunk, vocab_size - start)
    # Pad the last chunk to the full size so the kernel compiles once.
    i = jnp.repeat(jnp.minimum(jnp.arange(start, start + per_chunk, dtype=jnp.int32), vocab_size - 1), vocab_size)
    sums = _row_sums_kernel(i, j, jnp.uint32(key), npow, dpow, vocab_size)
    out[start:start + rows] = np.asarray(sums, np.float64).reshape(per_chunk, vocab_size)[:rows]
  out.setflags(write=False)
  return out


def _power_tables(vocab_size: int, gamma: float):
  """n^-γ for n = 1..V and (m + 1)^-γ for m = 0..V+5, as float32 device arrays."""
  npow = np.arange(1, vocab_size + 1, dtype=np.float64) ** -gamma
  dpow = np.arange(1, vocab_size + N_XI + 1, dtype=np.float64) ** -gamma
  return jnp.asarray(npow, jnp.float32), jnp.asarray(dpow, jnp.float32)


def _as_generator(rng) -> np.random.Generator:
  if isinstance(rng, np.random.Generator):
    return rng
  if rng is None or isinstance(rng, (int, np.integer)):
    return np.random.default_rng(rng)
  raise InputError(f"rng: expected a numpy Generator or an integer seed, got {type(rng).__name__}")


def _flat_cdf(weights: np.ndarray) -> np.ndarray:
  """Row-wise CDFs of a (R, V) positive matrix, row r shifted to (r, r + 1], flattened for one searchsorted."""
  cdf = np.cumsum(weights, axis=1)
  cdf /= cdf[:, -1:]
  cdf[:, -1] = 1.0
  return (cdf + np.arange(weights.shape[0])[:, None]).ravel()


def _draw_rows(flat_cdf: np.ndarray, rows: np.ndarray, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
  """One draw from each requested row of a `_flat_cdf` table (inverse CDF)."""
  u = rng.random(rows.shape)
  idx = np.searchsorted(flat_cdf, rows + u, side="right")
  return np.clip(idx - rows * vocab_size, 0, vocab_size - 1)


class TrigramLM:
  """The Appendix A trigram distribution p over 10-word sentences (see the module docstring).

  Args:
    seed: selects ξ (the hash key); two instances with one seed define the same distribution.
    vocab_size: V words (ids 0..V-1); the start token is id V.
    sentence_len: words per sentence, excluding the start token.
    gamma: γ of (A.3).
    alpha_cut: the 50 of (A.2).
  """

  def __init__(self, seed: int = 0, vocab_size: int = VOCAB_SIZE, sentence_len: int = SENTENCE_LEN,
               gamma: float = GAMMA, alpha_cut: int = ALPHA_CUT):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise InputError(f"seed: expected a non-negative integer, got {seed!r}")
    if not isinstance(vocab_size, (int, np.integer)) or not 2 <= vocab_size <= 1 << 16:
      raise InputError(f"vocab_size: expected an integer in [2, 65536], got {vocab_size!r}")
    if not isinstance(sentence_len, (int, np.integer)) or sentence_len < 1:
      raise InputError(f"sentence_len: expected a positive integer, got {sentence_len!r}")
    if not gamma > 0:
      raise InputError(f"gamma: expected a positive number, got {gamma!r}")
    if not isinstance(alpha_cut, (int, np.integer)) or alpha_cut < 1:
      raise InputError(f"alpha_cut: expected a positive integer, got {alpha_cut!r}")
    self.seed = int(seed)
    self.vocab_size = int(vocab_size)
    self.sentence_len = int(sentence_len)
    self.gamma = float(gamma)
    self.alpha_cut = int(alpha_cut)
    self.start_id = self.vocab_size
    self._key = _seed_key(self.seed)
    self._npow, self._dpow = _power_tables(self.vocab_size, self.gamma)
    self._alpha = alpha(np.arange(1, self.vocab_size + 1), self.alpha_cut)

  def __repr__(self) -> str:
    return (f"TrigramLM(seed={self.seed}, vocab_size={self.vocab_size}, sentence_len={self.sentence_len}, "
            f"gamma={self.gamma}, alpha_cut={self.alpha_cut})")

  # ---- exact quantities -------------------------------------------------------------------------------------

  def xi(self, i, j, k) -> np.ndarray:
    """ξ_ijk ∈ {0..5} for word ids (broadcast), a hash of (seed, i, j, k): uniform and independent across triples."""
    i, j, k = (np.asarray(a) for a in (i, j, k))
    shape = np.broadcast_shapes(i.shape, j.shape, k.shape)
    i, j, k = (np.broadcast_to(np.atleast_1d(a).astype(np.uint32), shape or (1,)) for a in (i, j, k))
    return _xi_from_context(_context_hash(np.uint32(self._key), i, j), k).astype(np.int64).reshape(shape)

  def log_f(self, i, j, k) -> np.ndarray:
    """log f(i, j, k) = log β(i, j; ξ_ijk) + log β(k, j; ξ_ijk), word ids, float64: (A.1) without α(j)."""
    xi = self.xi(i, j, k)
    n_i, n_j, n_k = (np.asarray(a, np.float64) + 1.0 for a in (i, j, k))
    return log_beta(n_i, n_j, xi, self.gamma) + log_beta(n_k, n_j, xi, self.gamma)

  @functools.cached_property
  def normaliser(self) -> np.ndarray:
    """Z(i, j) = Σ_k f(i, j, k), float64 (V, V); computed on first use and cached per (seed, V, γ)."""
    return _normaliser(self._key, self.vocab_size, self.gamma)

  @functools.cached_property
  def _start_tables(self):
    """log p(w1 | S, S) of shape (V,) and log p(w2 | S, w1) of shape (V, V), from the joint (A.1)."""
    pair = self._alpha[None, :] * self.normaliser  # ∝ P(i, j)
    first = pair.sum(1)
    log_first = np.log(first) - np.log(first.sum())
    log_second = np.log(pair) - np.log(first)[:, None]
    return log_first, log_second

  def log_prob(self, sentences) -> np.ndarray:
    """Per-token log p(w_t | w_{t-2}, w_{t-1}) of word-id sentences (..., L), with S padding; float64 (..., L)."""
    x = self._check_words(sentences, "sentences")
    if x.ndim == 0 or x.shape[-1] == 0:
      raise InputError(f"sentences: expected shape (..., L) with L >= 1, got {x.shape}")
    log_first, log_second = self._start_tables
    out = np.empty(x.shape, np.float64)
    out[..., 0] = log_first[x[..., 0]]
    if x.shape[-1] > 1:
      out[..., 1] = log_second[x[..., 0], x[..., 1]]
    if x.shape[-1] > 2:
      i, j, k = x[..., :-2], x[..., 1:-1], x[..., 2:]
      out[..., 2:] = self.log_f(i, j, k) - np.log(self.normaliser[i, j])
    return out

  def true_perplexity(self, sentences) -> float:
    """exp(-mean_t log p(w_t | context)) over all tokens of `sentences`: the data's perplexity under p."""
    return float(np.exp(-self.log_prob(sentences).mean()))

  def conditional(self, context_i, context_j) -> np.ndarray:
    """p(· | i, j) over the V words for token-id contexts (broadcast; S = start_id allowed): float64 (..., V).

    (S, S) gives p(w1), (S, w) gives p(w2 | w1 = w), (w, w') the trigram row f(w, w', ·) / Z(w, w'); a word
    followed by S never occurs and is an error.
    """
    ci, cj = (self._check_tokens(c, n) for c, n in ((context_i, "context_i"), (context_j, "context_j")))
    ci, cj = np.broadcast_arrays(ci, cj)
    shape = ci.shape
    ci, cj = ci.ravel(), cj.ravel()
    start = self.start_id
    if np.any((ci != start) & (cj == start)):
      raise InputError("context_j: the start token only follows the start token; pass (S, S), (S, w) or (w, w')")
    out = np.empty((ci.size, self.vocab_size), np.float64)
    log_first, log_second = self._start_tables
    both = (ci == start) & (cj == start)
    out[both] = np.exp(log_first)
    first = (ci == start) & (cj != start)
    out[first] = np.exp(log_second[cj[first]])
    words = np.flatnonzero(ci != start)
    for lo in range(0, words.size, _ROW_CHUNK_CONTEXTS):
      sel = words[lo:lo + _ROW_CHUNK_CONTEXTS]
      pad = np.resize(sel, _ROW_CHUNK_CONTEXTS)  # fixed shape: one compilation
      rows = np.asarray(self._rows(ci[pad], cj[pad]), np.float64)[:sel.size]
      out[sel] = rows / rows.sum(-1, keepdims=True)
    return out.reshape(shape + (self.vocab_size,))

  def _rows(self, i, j):
    return _rows_kernel(jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32), jnp.uint32(self._key),
                        self._npow, self._dpow, self.vocab_size)

  def exact_perplexity(self) -> float:
    """exp(H(p) / L): the population per-token perplexity, H the exact entropy of a whole sentence.

    H = H(w1) + E H(w2 | w1) + Σ_{t>=3} Σ_ij π_t(i, j) H(p(· | i, j)), where π_t is the exact law of
    (w_{t-2}, w_{t-1}), propagated by π_{t+1}(j, k) = Σ_i π_t(i, j) p(k | i, j). Costs (L - 1) passes over all
    V³ triples (about a minute at V = 1000 on two cores); cheap for small V.
    """
    v = self.vocab_size
    log_first, log_second = self._start_tables
    p1 = np.exp(log_first)
    entropy = -np.sum(p1 * log_first)
    if self.sentence_len > 1:
      p12 = p1[:, None] * np.exp(log_second)
      entropy -= np.sum(p12 * log_second)
      pi = p12
    z = self.normaliser
    per_chunk = min(v, max(1, _Z_CHUNK_CONTEXTS // v))
    for _ in range(self.sentence_len - 2):
      nxt = np.zeros((v, v), np.float64)
      for start in range(0, v, per_chunk):
        rows = min(per_chunk, v - start)
        i_ids = np.minimum(np.arange(start, start + per_chunk), v - 1)
        w = np.zeros((per_chunk, v), np.float64)  # padded rows get weight 0
        w[:rows] = pi[start:start + rows] / z[start:start + rows]
        mass, flogf = _propagate_kernel(jnp.asarray(i_ids, jnp.int32), jnp.asarray(w, jnp.float32),
                                        jnp.uint32(self._key), self._npow, self._dpow, v)
        nxt += np.asarray(mass, np.float64)
        # H(p(·|i,j)) = log Z - Σ_k f log f / Z.
        flogf = np.asarray(flogf, np.float64)[:rows]
        zc = z[start:start + rows]
        entropy += np.sum(pi[start:start + rows] * (np.log(zc) - flogf / zc))
      pi = nxt / nxt.sum()
    return float(np.exp(entropy / self.sentence_len))

  # ---- sampling ---------------------------------------------------------------------------------------------

  @functools.cached_property
  def _samplers(self):
    """Inverse-CDF tables for p(w1), p(w2 | w1) and the per-j envelope E(j, ·), plus log E."""
    v = self.vocab_size
    log_first, log_second = self._start_tables
    n = np.arange(1, v + 1, dtype=np.float64)
    # log max_ξ β(k, j; ξ) for all (j, k).
    d = n[None, :] - n[:, None]
    min_dist = np.min(np.abs(d[..., None] + np.arange(N_XI)), axis=-1)
    log_env = -self.gamma * (np.log(n)[None, :] + np.log(min_dist + 1.0))
    return {
      "first": np.cumsum(np.exp(log_first)) / np.exp(log_first).sum(),
      "second": _flat_cdf(np.exp(log_second)),
      "env": _flat_cdf(np.exp(log_env - log_env.max(1, keepdims=True))),
      "log_env": log_env,
    }

  def _log_env_context(self, i, j) -> np.ndarray:
    """log M(i, j) = log max_ξ β(i, j; ξ)."""
    d = np.abs((i - j)[..., None] + np.arange(N_XI)).min(-1)
    return -self.gamma * (np.log(i + 1.0) + np.log(d + 1.0))

  def sample_next(self, context_i, context_j, rng=None) -> np.ndarray:
    """One word w ~ p(· | i, j) per token-id context (1-D arrays; S = start_id allowed): int64 array.

    Trigram contexts use rejection sampling: propose k ~ E(j, ·) / Σ E, accept with f(i, j, k) / (M(i, j) E(j, k)),
    which is exact because f <= M E termwise.
    """
    rng = _as_generator(rng)
    ci = self._check_tokens(context_i, "context_i").ravel()
    cj = self._check_tokens(context_j, "context_j").ravel()
    if ci.shape != cj.shape:
      raise InputError(f"context_j: shape {cj.shape} differs from context_i's {ci.shape}; pass equal lengths")
    start, v = self.start_id, self.vocab_size
    if np.any((ci != start) & (cj == start)):
      raise InputError("context_j: the start token only follows the start token; pass (S, S), (S, w) or (w, w')")
    tables = self._samplers
    out = np.empty(ci.shape, np.int64)
    both = np.flatnonzero((ci == start) & (cj == start))
    out[both] = np.minimum(np.searchsorted(tables["first"], rng.random(both.size), side="right"), v - 1)
    first = np.flatnonzero((ci == start) & (cj != start))
    out[first] = _draw_rows(tables["second"], cj[first], v, rng)
    pending = np.flatnonzero(ci != start)
    while pending.size:
      i, j = ci[pending], cj[pending]
      k = _draw_rows(tables["env"], j, v, rng)
      log_ratio = self.log_f(i, j, k) - self._log_env_context(i, j) - tables["log_env"][j, k]
      accept = np.log(rng.random(pending.size)) < log_ratio
      out[pending[accept]] = k[accept]
      pending = pending[~accept]
    return out

  def sample(self, n: int, rng=None) -> np.ndarray:
    """n sentences w ~ p, int32 of shape (n, L), word ids (no start token)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
      raise InputError(f"n: expected a non-negative integer number of sentences, got {n!r}")
    rng = _as_generator(rng)
    out = np.empty((int(n), self.sentence_len + 2), np.int64)
    out[:, :2] = self.start_id
    for t in range(2, self.sentence_len + 2):
      out[:, t] = self.sample_next(out[:, t - 2], out[:, t - 1], rng)
    return out[:, 2:].astype(np.int32)

  def corpus(self, seed: int | None = None, sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Train/valid/test splits sampled from p: {name: int32 (n, L)}; sizes default to 80k/10k/10k.

    Each split draws from its own child of SeedSequence(seed) (seed defaults to the LM's), so changing one
    split's size leaves the others unchanged.
    """
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    seed = self.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise InputError(f"seed: expected a non-negative integer corpus seed, got {seed!r}")
    children = np.random.SeedSequence([int(seed), 0x7216]).spawn(len(SPLIT_SIZES))
    extra = [name for name in sizes if name not in SPLIT_SIZES]
    if extra:
      raise InputError(f"sizes: unknown split {extra[0]!r}; use train, valid and test")
    return {name: self.sample(sizes[name], np.random.default_rng(child))
            for name, child in zip(SPLIT_SIZES, children) if name in sizes}

  def lm_blocks(self, sentences) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) = ([S, w1..w_{L-1}], [w1..w_L]) for a GPT-style LM; see `lm_blocks`."""
    return lm_blocks(self._check_words(sentences, "sentences"), self.start_id)

  def frequent_ids(self, tokens, k: int = 50) -> np.ndarray:
    """The k most frequent word ids of `tokens` (e.g. the train split), most frequent first."""
    return frequent_ids(tokens, k, self.vocab_size)

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


# ---- corpus helpers (module level: they need no distribution) ---------------------------------------------------


def lm_blocks(sentences, start_id: int) -> tuple[np.ndarray, np.ndarray]:
  """inputs = [S, w1..w_{L-1}], targets = [w1..w_L], both int32 (n, L).

  An LM's log q(targets | inputs) then sits on the same positions as `TrigramLM.log_prob(sentences)`, so
  log q - log p compares them token by token (Table 1's last column).
  """
  x = np.asarray(sentences)
  if x.ndim != 2 or x.shape[1] < 1 or x.dtype.kind not in "iu":
    raise InputError(f"sentences: expected an integer array of shape (n, L), got {x.dtype} {x.shape}")
  inputs = np.concatenate([np.full((x.shape[0], 1), start_id, x.dtype), x[:, :-1]], axis=1)
  return inputs.astype(np.int32), x.astype(np.int32)


def word_counts(tokens, vocab_size: int) -> np.ndarray:
  """Occurrences of each word id in [0, vocab_size) in `tokens` (any shape; other ids, e.g. S, ignored)."""
  x = np.asarray(tokens).ravel()
  if x.dtype.kind not in "iu":
    raise InputError(f"tokens: expected integer word ids, got dtype {x.dtype}")
  x = x[(x >= 0) & (x < vocab_size)]
  return np.bincount(x.astype(np.int64), minlength=vocab_size)


def word_ranking(tokens, vocab_size: int = VOCAB_SIZE) -> np.ndarray:
  """All word ids sorted by descending frequency in `tokens` (ties by id)."""
  counts = word_counts(tokens, vocab_size)
  return np.lexsort((np.arange(vocab_size), -counts))


def frequent_ids(tokens, k: int = 50, vocab_size: int = VOCAB_SIZE) -> np.ndarray:
  """The k most frequent word ids in `tokens` ("frequent words" of §4.1: k = 50 over the train split)."""
  if not 0 <= k <= vocab_size:
    raise InputError(f"k: expected 0 <= k <= {vocab_size}, got {k}")
  return word_ranking(tokens, vocab_size)[:k]


def rank_group_shares(tokens, groups=(50, 100), vocab_size: int = VOCAB_SIZE) -> np.ndarray:
  """Share of tokens in consecutive frequency-rank groups, plus the remainder: e.g. top 50, next 100, rest.

  The paper reports 70.5%, 14.7% and 14.8% for (50, 100) on its training corpus (Appendix A).
  """
  counts = np.sort(word_counts(tokens, vocab_size))[::-1]
  edges = np.cumsum([0, *groups])
  if edges[-1] > vocab_size:
    raise InputError(f"groups: {tuple(groups)} hold more than vocab_size={vocab_size} words")
  shares = [counts[a:b].sum() for a, b in zip(edges[:-1], edges[1:])] + [counts[edges[-1]:].sum()]
  return np.asarray(shares, np.float64) / max(counts.sum(), 1)


def split_perplexity(log_probs, targets, frequent) -> dict[str, float]:
  """Table 1 columns from per-token log-probs of `targets`: perplexity on all, frequent and rare positions.

  ppl_S = exp(-mean_{t: w_t ∈ S} log q(w_t | c_t)); ratio = rare ppl / frequent ppl.
  """
  lp = np.asarray(log_probs, np.float64)
  y = np.asarray(targets)
  if lp.shape != y.shape:
    raise InputError(f"log_probs: shape {lp.shape} differs from targets' {y.shape}; pass per-token values")
  is_freq = np.isin(y, np.asarray(frequent))
  ppl = lambda m: float(np.exp(-lp[m].mean())) if m.any() else float("nan")
  everything = np.ones(lp.shape, bool)
  out = {"ppl": ppl(everything), "frequent_ppl": ppl(is_freq), "rare_ppl": ppl(~is_freq)}
  out["ratio"] = out["rare_ppl"] / out["frequent_ppl"]
  return out


def log_ratio_stats(log_q, log_p) -> tuple[float, float]:
  """Mean and standard deviation of log q - log p over tokens (Table 1's last column)."""
  lq = np.asarray(log_q, np.float64)
  lp = np.asarray(log_p, np.float64)
  if lq.shape != lp.shape:
    raise InputError(f"log_q: shape {lq.shape} differs from log_p's {lp.shape}; pass per-token values")
  diff = lq - lp
  return float(diff.mean()), float(diff.std())


def oracle_log_prob_fn(lm: TrigramLM) -> Callable[[np.ndarray], np.ndarray]:
  """A per-token log-prob function for `metrics.nll_oracle`: sentences (n, L) -> log p (n, L)."""
  return lm.log_prob
