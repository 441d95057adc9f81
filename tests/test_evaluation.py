"""`evaluation`: exact LM sums against a NumPy reference, independent of the eval batch size, and `select`."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtextgan import evaluation
from jaxtextgan import sharding as shd
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
