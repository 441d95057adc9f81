"""The quality-diversity frontier (jaxtextgan/frontier.py, its LM plane jaxtextgan/frontier_lm.py) and G's own
likelihood at a temperature (objectives.gan.conditional_log_probs / sequence_nll)."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxtextgan import frontier, frontier_lm, losses, tokenizers
from jaxtextgan import sharding as shd
from jaxtextgan.config import gpt2_model_config
from jaxtextgan.data import corpus
from jaxtextgan.data import trigram
from jaxtextgan.errors import InputError
from jaxtextgan.models import generator as gen_lib
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import gan

V, T, Z = 12, 6, 4
LM_CFG = gpt2.GPT2Config(vocab_size=V, max_len=8, n_layer=1, d_model=16, n_head=2, d_ff=32, dropout=0.1)


def _generator(kind, latent_scale=0.3):
  cfg = gen_lib.GeneratorConfig(kind=kind, length=T, latent_dim=Z, bos_id=V - 1, forbidden_ids=(V - 1,),
                                mlp_hidden=(16,))
  graphdef, params = nnx.split(gen_lib.make_generator(cfg, LM_CFG, rngs=nnx.Rngs(0)), nnx.Param)
  if latent_scale and kind == "gpt2":  # a non-zero latent projection W, as after GAN training
    params["latent"]["kernel"][...] = latent_scale * jax.random.normal(jax.random.key(1), (Z, LM_CFG.d_model))
  return graphdef, params


@pytest.mark.parametrize("kind", ["gpt2", "mlp"])
@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_teacher_forced_log_probs_are_those_g_samples_from(kind, temperature):
  """log p_G(x_t | x_<t, z) at T, teacher-forced on G's own draws, equals the log-softmax of the logits G drew them
  from (z, temperature and the forbidden start token included)."""
  graphdef, params = _generator(kind)
  z = jax.random.normal(jax.random.key(2), (5, Z))
  _, ids, logits = nnx.merge(graphdef, params)(z, jax.random.key(3), 1.0, hard=True, temperature=temperature)
  expected = losses.token_log_probs(logits, ids)
  got = gan.conditional_log_probs(graphdef, params, ids, z, temperature)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-5)
  assert not np.any(np.asarray(ids) == V - 1)


def test_sequence_nll_of_the_mle_g_is_its_lm_nll_whatever_the_latents():
  """W = 0 (the MLE G): z has no effect, so the K-latent estimate is exact for every K, and at T = 1 it is the GPT-2's
  NLL after bos with the start token's probability mass removed (renormalised over the allowed ids)."""
  graphdef, params = _generator("gpt2", latent_scale=0.0)
  targets = jax.random.randint(jax.random.key(4), (7, T), 0, V - 1)
  one, eight = (gan.sequence_nll(graphdef, params, targets, jax.random.key(5), 1.0, k) for k in (1, 8))
  np.testing.assert_allclose(np.asarray(one), np.asarray(eight), rtol=1e-5)
  lm = nnx.merge(graphdef, params).lm
  inputs = jnp.concatenate([jnp.full((7, 1), V - 1), targets[:, :-1]], axis=1)
  logits = lm(inputs).at[..., V - 1].set(-jnp.inf)
  np.testing.assert_allclose(np.asarray(one), -np.asarray(losses.token_log_probs(logits, targets).sum(-1)),
                             rtol=1e-5)


def test_sequence_nll_marginalises_the_latent():
  """With W != 0: -log((1/K) sum_k p(x | z_k)) from the per-latent conditionals, and by Jensen never above the
  mean of -log p(x | z_k)."""
  graphdef, params = _generator("gpt2", latent_scale=2.0)
  targets = jax.random.randint(jax.random.key(4), (3, T), 0, V - 1)
  key = jax.random.key(6)
  got = np.asarray(gan.sequence_nll(graphdef, params, targets, key, 0.9, 4))
  z = jax.random.normal(key, (4, 3, Z))
  per_z = np.stack([np.asarray(gan.conditional_log_probs(graphdef, params, targets, z[k], 0.9).sum(-1))
                    for k in range(4)])
  np.testing.assert_allclose(got, -(np.logaddexp.reduce(per_z, axis=0) - np.log(4)), rtol=1e-5)
  assert np.all(got <= -per_z.mean(0) + 1e-5)


# --- comparing curves ----------------------------------------------------------------------------------------------


def _rows(name, xs, ys):
  return [{"generator": name, "temperature": t, "nll_test": x, "nll_oracle": y}
          for t, x, y in zip((0.8, 1.0, 1.2), xs, ys)]


def test_a_curve_below_the_other_is_ahead_everywhere_and_dominates():
  # The usual trade-off: where G is colder (higher NLL-test), its NLL-oracle is lower.
  rows = _rows("gan", [2.0, 3.0, 4.0], [2.0, 1.5, 1.0]) + _rows("mle", [2.0, 3.0, 4.0], [2.2, 1.7, 1.2])
  out = frontier.compare(rows, "gan", "mle", frontier.ORACLE_AXES)
  assert out["a_ahead"] == 1.0 and out["b_ahead"] == 0.0 and out["overlap"] == (2.0, 4.0)
  assert out["max_gap"] == pytest.approx(0.2) and out["b_dominated"] == 3 and out["a_dominated"] == 0
  assert "gan is ahead on 100%" in out["verdict"]


def test_crossing_curves_give_each_its_interval_and_higher_is_better_for_bleu():
  # BLEU-5 (higher is better) against Self-BLEU-5: a wins at low Self-BLEU, b at high; they cross at x = 0.5.
  rows = ([{"generator": "a", "temperature": t, "self_bleu5": x, "bleu5": y}
           for t, x, y in ((1.2, 0.2, 0.3), (0.8, 0.8, 0.5))]
          + [{"generator": "b", "temperature": t, "self_bleu5": x, "bleu5": y}
             for t, x, y in ((1.2, 0.2, 0.2), (0.8, 0.8, 0.6))])
  out = frontier.compare(rows, "a", "b", frontier.TEXT_AXES)
  whos = [w for w, _, _ in out["intervals"]]
  assert whos[0] == "a" and whos[-1] == "b"
  assert out["a_ahead"] == pytest.approx(0.5, abs=0.02) and out["b_ahead"] == pytest.approx(0.5, abs=0.02)


def test_disjoint_curves_are_not_compared():
  rows = _rows("a", [1.0, 1.1, 1.2], [1, 1, 1]) + _rows("b", [2.0, 2.1, 2.2], [1, 1, 1])
  assert frontier.compare(rows, "a", "b", frontier.ORACLE_AXES)["overlap"] is None
  with pytest.raises(InputError, match="temperatures"):
    frontier.check_temperatures((1.0, 0.0))


# --- the sweep on the trigram oracle -------------------------------------------------------------------------------


def test_sweep_scores_every_generator_at_every_temperature(tmp_path):
  oracle = trigram.TrigramLM(seed=0, vocab_size=V - 1, sentence_len=T)
  data = corpus.oracle_corpus(oracle, oracle.corpus(sizes={"train": 50, "valid": 40, "test": 30}), "trigram:test")
  graphdef, params = _generator("gpt2", latent_scale=0.0)
  gens = [frontier.Generator("a", graphdef, params, Z), frontier.Generator("b", *_generator("gpt2"), Z)]
  rows = frontier.sweep(gens, data, (0.5, 1.0, 2.0), length=T, num_samples=16, seed=0, num_z=2, batch_size=16,
                        log=None)
  assert [(r["generator"], r["temperature"]) for r in rows] == [(g, t) for g in "ab" for t in (0.5, 1.0, 2.0)]
  for r in rows:
    assert set(r) == {"generator", "temperature", "nll_test", "bleu5", "self_bleu5", "nll_oracle"}
  # G's NLL-test at T is its likelihood of the 30 test sentences (padded to 2 batches of 16, padding dropped).
  targets = jnp.asarray(data.blocks["test"][:, 1:])
  direct = float(gan.sequence_nll(graphdef, params, targets, jax.random.key(0), 1.0, 2).sum()) / (30 * T)
  assert rows[1]["nll_test"] == pytest.approx(direct, rel=1e-5)
  # A near-uniform G: the hotter, the closer its test NLL comes to log(V - 1).
  a = [r["nll_test"] for r in rows[:3]]
  assert abs(a[2] - np.log(V - 1)) < abs(a[0] - np.log(V - 1))
  frontier.plot({"seed 0": rows}, frontier.ORACLE_AXES, tmp_path / "f.png")
  assert (tmp_path / "f.png").stat().st_size > 0
  assert "| a | 0.50 |" in frontier.table(rows)


def test_hot_points_worse_on_both_axes_leave_the_frontier():
  """NLL-test is lowest near T = 1 and rises both ways: a hot point worse on both axes than T = 1 is not on the
  curve's frontier, so it cannot make the curve zig-zag in the matched comparison."""
  rows = _rows("a", [3.0, 2.8, 2.9], [2.0, 2.8, 3.1])  # T = 0.8, 1.0, 1.2
  x, y = frontier.efficient(rows, "a", frontier.ORACLE_AXES)
  np.testing.assert_array_equal(x, [2.8, 3.0])
  np.testing.assert_array_equal(y, [2.8, 2.0])


# --- the LM plane on text: LM score against reverse-LM score (jaxtextgan/frontier_lm.py) ---------------------------

L = 6  # words per oracle sentence: a row [eos, w_1..w_6] is one sentence


def _lm_block(steps, **extra):
  """config.frontier.judge / reverse_lm, tiny."""
  model = gpt2_model_config(vocab_size=0, n_layer=1, d_model=16, n_head=2, d_ff=32, max_len=8, dropout=0.0)
  return ml_collections.ConfigDict({**dict(model=model, seq_len=8, batch_size=16, steps=steps, lr=1e-2,
                                           warmup_steps=0, weight_decay=0.0, num_samples=0, temperatures=()), **extra})


@pytest.fixture(scope="module")
def text_plane():
  """A word-level text corpus of trigram-oracle sentences ("w3 w7 ...", one per line) and its LM plane: a judge
  trained 150 steps on its train stream."""
  oracle = trigram.TrigramLM(seed=0, vocab_size=10, sentence_len=L)
  splits = {name: "".join(" ".join(f"w{w}" for w in row) + "\n" for row in oracle.sample(n, np.random.default_rng(i)))
            for i, (name, n) in enumerate((("train", 300), ("valid", 30), ("test", 60)))}
  data = corpus.text_corpus(splits, tokenizers.build_tokenizer("word", corpus_text=splits["train"]), 8, None)
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  eval_cfg = ml_collections.ConfigDict(dict(batch_size=32, perplexity="blocks"))
  plane, reference = frontier_lm.plane(_lm_block(150), _lm_block(120), data, length=L, eval_cfg=eval_cfg, mesh=mesh,
                                       seed=0)
  return data, plane, reference


def test_the_judge_and_the_reverse_lm_tell_real_text_from_random_tokens(text_plane):
  """LM score: the judge's NLL of real test rows is far below its NLL of uniform-random rows. Reverse-LM score: an
  LM trained on real sentences scores the real test rows better than one trained on as many random rows."""
  data, plane, reference = text_plane
  rng = np.random.default_rng(0)
  random_NL = rng.integers(0, data.vocab_size, (200, L))
  assert reference["real_lm_score"] < plane.lm_score(random_NL) - 0.5
  assert reference["judge"]["test"]["nll"] < np.log(data.vocab_size)
  real_NL = data.sentence_starts("train", L)[:200, 1:]
  assert len(real_NL) == 200
  assert plane.reverse_lm(real_NL) < plane.reverse_lm(random_NL) - 0.5


def test_sweep_adds_the_lm_plane_to_table_plot_and_comparison(text_plane, tmp_path):
  """On text, with a plane: every row has an LM score, only the reverse-LM temperatures a reverse-LM score (each
  reverse LM in its own workdir); the table, the two-plane PNG and the matched comparison take the new plane."""
  data, plane, reference = text_plane
  plane = dataclasses.replace(plane, reverse=_lm_block(20, temperatures=(1.5,)),
                              directory=tmp_path / "reverse_lm")
  cfg = gen_lib.GeneratorConfig(kind="gpt2", length=L, latent_dim=Z, bos_id=data.bos_id, forbidden_ids=())
  lm_cfg = LM_CFG.replace(vocab_size=data.vocab_size)
  gens = [frontier.Generator(name, *nnx.split(gen_lib.make_generator(cfg, lm_cfg, rngs=nnx.Rngs(i)), nnx.Param), Z)
          for i, name in enumerate(("a", "b"))]
  rows = frontier.sweep(gens, data, (0.7, 1.5), length=L, num_samples=32, seed=0, num_z=1, batch_size=32,
                        lm_plane=plane, log=None)
  assert [("reverse_lm" in r) for r in rows] == [False, True, False, True]
  assert all(np.isfinite(r["lm_score"]) for r in rows)
  # An untrained G draws near-uniform tokens: the judge scores them worse than real text.
  assert min(r["lm_score"] for r in rows) > reference["real_lm_score"]
  assert (tmp_path / "reverse_lm" / "a_T1.5" / "done.json").is_file()
  assert frontier.planes_of(rows, frontier.TEXT_AXES) == [frontier.TEXT_AXES, frontier.LM_AXES]
  md = frontier.table(rows)
  assert "| LM score | reverse-LM score |" in md and "| a | 0.70 |" in md and md.endswith(" |")
  assert md.splitlines()[2].endswith("| – |")  # a at T = 0.7: no reverse LM
  out = frontier.compare(rows, "a", "b", frontier.LM_AXES)
  # One reverse-LM point per curve: no diversity range to match on, and the Pareto counts are out of that point.
  assert out["overlap"] is None and re.search(r"a \d/1, b \d/1$", out["verdict"]), out["verdict"]
  frontier.plot({"seed 0": rows}, [frontier.TEXT_AXES, frontier.LM_AXES], tmp_path / "f.png")
  assert (tmp_path / "f.png").stat().st_size > 0


def test_the_lm_plane_refuses_the_oracle_and_a_short_context():
  oracle = trigram.TrigramLM(seed=0, vocab_size=V - 1, sentence_len=T)
  data = corpus.oracle_corpus(oracle, oracle.corpus(sizes={"train": 50, "valid": 4, "test": 4}), "trigram:test")
  with pytest.raises(InputError, match="text_lm_scores=False"):
    frontier_lm.judge_stage(_lm_block(1), data, T, 32, None, None, 0)
  with pytest.raises(InputError, match="reverse_lm.model.max_len=8 .* at least 12"):
    frontier_lm.lm_stage("reverse_lm", _lm_block(1), np.zeros((16, 13), np.int32), V, None, 0, {})
