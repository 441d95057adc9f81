"""The dfine task end to end on a tiny trigram corpus: three stages, resume/skip, and one-line input errors."""

import json
import pathlib
import shutil
import time

import numpy as np
import pytest

from jaxtextgan import tokenizers as tok
from jaxtextgan.config import load_config
from jaxtextgan.errors import InputError
from jaxtextgan.tasks import dfine as task
from cli_helpers import fake_bucket

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(tmp_path):
  """configs/dfine_trigram.py shrunk: 40 words, 5-word sentences, a 1-layer model, a few steps per stage."""
  c = load_config(REPO / "configs" / "dfine_trigram.py")
  c.progress = False
  c.data.update(dict(trigram_vocab=40, sentence_len=5, seq_len=5, train_sentences=256, valid_sentences=64,
                     test_sentences=64, batch_size=32))
  c.model.update(dict(n_layer=1, d_model=16, n_head=2, d_ff=32, max_len=8))
  c.lm.update(dict(steps=4, log_every=2, checkpoint_every=2))
  c.discriminator.update(dict(steps=3, log_every=3, checkpoint_every=0))
  c.finetune.update(dict(steps=3, log_every=3, checkpoint_every=2, probe_every=2, valid_every=2))
  c.perturb.rank = 12
  c.report.frequent = 10
  c.eval.batch_size = 64
  c.report.update(dict(markdown=str(tmp_path / "table1.md"), figure=str(tmp_path / "fig1.png")))
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """One complete run (shared by the tests below), and its wall time."""
  tmp = tmp_path_factory.mktemp("dfine")
  cfg = tiny_config(tmp)
  start = time.monotonic()
  out = task.run(cfg, tmp / "work")
  return tmp, cfg, out, time.monotonic() - start


def test_three_stages_end_to_end(finished):
  tmp, _, out, _ = finished
  work = tmp / "work"
  stages = ["stage1_lm", "stage2_disc", "stage2_disc_perturbed", "stage3_finetune", "stage3_finetune_perturbed",
            "stage3_finetune_perturbed_ce"]
  assert list(out["stages"]) == stages
  for name in stages:
    done = json.loads((work / name / "done.json").read_text())
    assert (work / name / "checkpoints" / str(done["step"])).is_dir()
  table = out["report"]["table1"]
  assert set(table) >= {"True distribution p", "Initial model", "Perturbed model", "Initial model ftd.",
                        "Perturbed model ftd."}
  for row in table.values():
    assert np.isfinite(row["ppl"]) and row["ppl"] > 1
  # The perturbed word is (almost) never predicted by the perturbed model.
  chosen = out["report"]["q_chosen_mean"]
  assert chosen["perturbed"] < 1e-6 < chosen["initial"]
  md = (tmp / "table1.md").read_text()
  assert "| Perturbed model ftd. |" in md and "Command:" in md
  assert (tmp / "fig1.png").stat().st_size > 1000


def test_rerun_skips_finished_stages_and_resumes_unfinished(finished, capsys):
  tmp, cfg, first, _ = finished
  work = tmp / "work"
  # Interrupt stage 3 after its step-2 checkpoint: drop its final checkpoint and its done record.
  stage = work / "stage3_finetune_perturbed"
  shutil.rmtree(stage / "checkpoints" / "3")
  (stage / "done.json").unlink()
  capsys.readouterr()
  start = time.monotonic()
  out = task.run(cfg, work)
  printed = capsys.readouterr().out
  for name in ("stage1_lm", "stage2_disc", "stage2_disc_perturbed", "stage3_finetune", "stage3_finetune_perturbed_ce"):
    assert f"[{name}] finished at step" in printed and out["stages"][name] == first["stages"][name]
  assert f"[{stage.name}] resumed from {stage / 'checkpoints' / '2'} at step 2" in printed
  # Resuming replays the same batches and keys, so the result equals the uninterrupted run's.
  resumed, original = out["stages"][stage.name]["eval"], first["stages"][stage.name]["eval"]
  for split in ("valid", "test"):
    for key in ("nll", "rkl"):
      assert resumed[split][key] == pytest.approx(original[split][key], rel=1e-5, abs=1e-7)
  # A third run only restores: every stage is skipped.
  task.run(cfg, work)
  assert "resumed" not in capsys.readouterr().out
  assert time.monotonic() - start < 60


def test_missing_stage1_checkpoint(tmp_path):
  cfg = tiny_config(tmp_path)
  cfg.init_lm.workdir = str(tmp_path / "no_lm")
  with pytest.raises(InputError, match=r"init_lm.workdir=.*no_lm has no stage-1 LM checkpoint") as err:
    task.run(cfg, tmp_path / "work")
  assert "\n" not in str(err.value)


def test_lm_checkpoint_of_another_architecture(finished, tmp_path):
  tmp, _, _, _ = finished
  cfg = tiny_config(tmp_path)
  cfg.init_lm.workdir = str(tmp / "work" / "stage1_lm")
  cfg.model.n_layer = 2
  with pytest.raises(InputError, match=r"another architecture \(n_layer=1 vs 2\): set config.model") as err:
    task.run(cfg, tmp_path / "work")
  assert "\n" not in str(err.value)


def test_initial_lm_from_an_lm_workdir(finished, tmp_path):
  """The stage-1 LM of a finished run is an LM workdir that another run can start from."""
  tmp, _, first, _ = finished
  cfg = tiny_config(tmp_path)
  cfg.init_lm.workdir = str(tmp / "work" / "stage1_lm")
  cfg.finetune.runs = ("initial:disc",)
  cfg.perturb.enabled = False
  cfg.report.figure = ""
  out = task.run(cfg, tmp_path / "work")
  assert "stage1_lm" not in out["stages"]
  assert out["report"]["table1"]["Initial model"] == first["report"]["table1"]["Initial model"]


def test_initial_lm_workdir_in_a_bucket(finished, tmp_path):
  """init_lm.workdir=gs://...: the LM's checkpoint and tokenizer are found and read through epath (a fake bucket
  here: a read that bypassed epath would look for a local 'gs:' folder)."""
  tmp, _, _, _ = finished
  cfg = tiny_config(tmp_path)
  local = tmp / "work" / "stage1_lm"
  cfg.init_lm.workdir = "gs://bucket/stage1_lm"
  with fake_bucket(tmp / "work"):
    ckpt_dir, step = task.init_lm_checkpoint(cfg)
  assert str(ckpt_dir) == "gs://bucket/stage1_lm/checkpoints"
  assert step == max(int(p.name) for p in (local / "checkpoints").iterdir() if p.name.isdigit())
  # A text-trained LM's workdir also holds its tokenizer, which a text run of dfine takes (this one is trigram).
  saved = tok.word_tokenizer("the cat sat on the mat .", name="words")
  saved.save(tmp_path / "bucket" / "lm" / "tokenizer")
  cfg.init_lm.workdir = "gs://bucket/lm"
  with fake_bucket(tmp_path / "bucket"):
    assert task._init_lm_tokenizer(cfg).spec == saved.spec


def test_discriminator_with_another_vocabulary(tmp_path):
  cfg = tiny_config(tmp_path)
  cfg.discriminator.init = "scratch"
  cfg.discriminator.model_overrides.vocab_size = 7
  with pytest.raises(InputError, match="discriminator vocab_size=7 differs from the LM's vocab_size=41") as err:
    task.run(cfg, tmp_path / "work")
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("field,value,message", [
  ("runs", ("initial:gan",), "finetune.runs entry 'initial:gan' is invalid"),
  ("eps", 0.0, "eps=0.0 is invalid"),
  ("loss", "ce", "finetune.loss='ce' is invalid"),
])
def test_bad_finetune_options(tmp_path, field, value, message):
  cfg = tiny_config(tmp_path)
  cfg.finetune[field] = value
  with pytest.raises(InputError, match=message):
    task.run(cfg, tmp_path / "work")


def test_unigram_bias_init_counts_every_block_and_samples_q0(tmp_path):
  """b_w = log(Q_w / P_w): P_w counted on every training block, Q_w = Σ_c q0(w|c) on every block
  (bias_init_blocks=0) or on that many blocks drawn at random, scaled to the whole split."""
  import jax
  from jaxtextgan.objectives import dfine
  from jaxtextgan.tasks import common
  cfg = tiny_config(tmp_path)
  r = common.start(cfg, tmp_path / "work")
  data = task.load_data(r)
  p = task.plan(cfg, r.mesh, data.vocab_size, data, r.workdir)
  q0 = dfine.init_state(p.models["lm"], task.opt_cfg(cfg.lm), jax.random.key(0), r.mesh)[0].params
  train = data.blocks["train"]
  counts = np.bincount(train[:, 1:].ravel(), minlength=data.vocab_size)
  rows = np.sort(np.random.default_rng([cfg.seed, 0]).choice(len(train), 50, replace=False))
  for n, blocks in ((0, train), (50, train[rows])):
    cfg.discriminator.bias_init_blocks = n
    params = task.disc_init(p, q0)
    mass = dfine.q0_mass(p.graphdefs["lm"], q0, {"inputs": blocks[:, :-1], "targets": blocks[:, 1:]})
    want = dfine.unigram_logit(np.asarray(mass) * len(train) / len(blocks), counts)
    got = dfine._logits(p.graphdefs["disc"], params, np.zeros((1, 2), np.int32))[0, 0]  # l = the bias
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
