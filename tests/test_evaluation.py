"""`evaluation`: exact LM sums against a NumPy reference, independent of the eval batch size, and `select`; sliding-
window perplexity against token-by-token log-probs with each token's own left context."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtextgan import evaluation
from jaxtextgan import sharding as shd
from jaxtextgan.data import corpus
from jaxtextgan.data import lm as lm_data
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2

CFG = gpt2.GPT2Config(vocab_size=32, max_len=16, n_layer=1, d_model=16, n_head=2, d_ff=32, dropout=0.0)
BLOCKS = np.random.RandomState(1).randint(0, 32, (10, 9)).astype(np.int32)


@pytest.fixture(scope="module")
def mesh():
  return shd.make_mesh((1, 1, 1), jax.devices()[:1])


@pytest.fixture(scope="module")
def model():
  return gpt2.GPT2(CFG, rngs=nnx.Rngs(params=jax.random.key(0)))


def reference(model):
  """nll, accuracy and token count over every target of every block, in float64 NumPy."""
  logits = np.asarray(model(BLOCKS[:, :-1]), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  targets = BLOCKS[:, 1:]
  nll = -np.take_along_axis(logp, targets[..., None], -1).sum()
  correct = (logits.argmax(-1) == targets).sum()
  return nll / targets.size, correct / targets.size, targets.size


@pytest.mark.parametrize("batch_size", [3, 8, 10])
def test_lm_metrics_match_numpy(model, mesh, batch_size):
  """Every block counts once whatever the batch size (3 and 8 pad the last batch)."""
  graphdef, params = nnx.split(model, nnx.Param)
  nll, acc, count = reference(model)
  got = evaluation.lm_metrics(graphdef, params, BLOCKS, batch_size, mesh)
  assert got["tokens"] == count == 80
  np.testing.assert_allclose(got["nll"], nll, rtol=1e-5)
  np.testing.assert_allclose(got["perplexity"], np.exp(nll), rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], acc, atol=1e-12)


def test_reduce_sums_is_exact(mesh):
  """Sums over batches of a jitted function, in float64 on the host."""
  fn = jax.jit(lambda scale, b: {"total": (b["x"] * scale).sum(), "rows": b["x"].shape[0] * 1.0})
  xs = np.arange(12, dtype=np.float32).reshape(3, 4)
  got = evaluation.reduce_sums(fn, [{"x": xs[i:i + 1]} for i in range(3)], mesh, np.float32(2.0))
  assert got == {"total": 2.0 * xs.sum(), "rows": 3.0}
  assert evaluation.reduce_sums(fn, [], mesh, np.float32(2.0)) == {}


class Wrapper(nnx.Module):
  """A GPT-2 inside another model, as G holds its LM."""

  def __init__(self, lm):
    self.lm = lm
    self.head = nnx.Linear(CFG.d_model, 1, rngs=nnx.Rngs(5))


def _select(graphdef, params):
  return nnx.split(nnx.merge(graphdef, params).lm, nnx.Param)


def test_select_equals_direct(model, mesh):
  graphdef, params = nnx.split(model, nnx.Param)
  direct = evaluation.lm_metrics(graphdef, params, BLOCKS, 4, mesh)
  wg, wp = nnx.split(Wrapper(nnx.clone(model)), nnx.Param)
  wrapped = evaluation.lm_metrics(wg, wp, BLOCKS, 4, mesh, select=_select)
  assert wrapped.keys() == direct.keys()
  for k in direct:
    np.testing.assert_allclose(wrapped[k], direct[k], rtol=1e-6)


# --- sliding-window perplexity ---------------------------------------------------------------------------------

STREAM = np.random.RandomState(2).randint(0, 32, 43).astype(np.int32)  # N = 43: 42 targets


def context_start(t: int, window: int, stride: int) -> int:
  """Where the context of target x_t starts under the spec: the first window (start 0) scores x_1..x_W; window
  k >= 1 (start k*s) scores x_{W+(k-1)s+1}..x_{W+ks}."""
  return 0 if t <= window else -(-(t - window) // stride) * stride


def stream_reference(model, window: int, stride: int):
  """nll, accuracy and count of every target x_t, each from the model run on x_start(t)..x_{t-1} (one call per
  context start: the model is causal, so a longer run from the same start gives x_t the same context)."""
  logp, hits = {}, {}
  starts = {t: context_start(t, window, stride) for t in range(1, STREAM.size)}
  for start in sorted(set(starts.values())):
    last = max(t for t, s in starts.items() if s == start)
    assert last - start <= window
    logits = np.asarray(model(STREAM[None, start:last]), np.float64)[0]
    lp = logits - logits.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    for t, s in starts.items():
      if s == start:
        logp[t], hits[t] = lp[t - 1 - start, STREAM[t]], logits[t - 1 - start].argmax() == STREAM[t]
  n = STREAM.size - 1
  return -sum(logp.values()) / n, sum(hits.values()) / n, n


@pytest.mark.parametrize("window,stride,batch_size", [(8, 1, 4), (8, 3, 5), (8, 8, 16), (6, 4, 3), (16, 5, 2)])
def test_sliding_matches_token_by_token_reference(model, mesh, window, stride, batch_size):
  """Every token once, with the context the spec gives it; 42 targets are not divisible by strides 3, 4, 5, 8."""
  graphdef, params = nnx.split(model, nnx.Param)
  nll, acc, count = stream_reference(model, window, stride)
  got = evaluation.perplexity(graphdef, params, {"test": lm_data.LMBlocks(STREAM, window)}, "test",
                              dict(batch_size=batch_size, perplexity="sliding", stride=stride), mesh)
  assert got["tokens"] == count == 42 and (got["window"], got["stride"]) == (window, stride)
  np.testing.assert_allclose(got["nll"], nll, rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], acc, atol=1e-12)


def test_sliding_windows_score_each_target_once():
  for n_tok in (2, 5, 9, 10, 11, 43):
    for window, stride in ((8, 1), (8, 3), (8, 8)):
      rows, mask = evaluation.sliding_windows(np.arange(n_tok), window, stride)
      scored = (rows[:, 1:][mask > 0])
      np.testing.assert_array_equal(np.sort(scored), np.arange(1, n_tok))
      # every scored target is the token at its stream position: the rows are windows of the stream
      assert all(np.array_equal(r[:min(window + 1, n_tok - i * stride)], np.arange(i * stride, n_tok)[:window + 1])
                 for i, r in enumerate(rows))


def test_window_batches_split_across_processes(monkeypatch):
  """Two processes take complementary rows of every global batch: together, the single-process batches."""
  full = list(evaluation.window_batches(STREAM, 8, 3, 4))
  parts = []
  for p in range(2):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    parts.append(list(evaluation.window_batches(STREAM, 8, 3, 4)))
  assert len(parts[0]) == len(parts[1]) == len(full)
  for f, a, b in zip(full, *parts):
    for k in f:
      np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), f[k])


def test_block_method_and_corpus(model, mesh):
  """'blocks' equals lm_metrics on the blocks; a trigram Corpus (independent sentences) always uses its blocks."""
  graphdef, params = nnx.split(model, nnx.Param)
  data = {"test": lm_data.LMBlocks(STREAM, 8)}
  got = evaluation.perplexity(graphdef, params, data, "test", dict(batch_size=4, perplexity="blocks"), mesh)
  want = evaluation.lm_metrics(graphdef, params, data["test"].blocks, 4, mesh)
  assert got == want and got["stride"] == 0 and got["tokens"] == 4 * 8
  trigram = corpus.Corpus(blocks={"test": BLOCKS}, vocab_size=32, tokenizer_spec="", trigram=object(),
                          streams={"test": BLOCKS.ravel()})
  assert evaluation.batches(trigram, "test", 4)[1] == {"window": 8, "stride": 0}
  text = corpus.Corpus(blocks={"test": BLOCKS}, vocab_size=32, tokenizer_spec="", streams={"test": BLOCKS.ravel()})
  assert evaluation.batches(text, "test", 4)[1] == {"window": 8, "stride": 4}
  with pytest.raises(InputError, match="eval.stride"):
    evaluation.perplexity(graphdef, params, data, "test", dict(batch_size=4, stride=9), mesh)
