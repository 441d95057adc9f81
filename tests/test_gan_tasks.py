"""Tiny end-to-end runs of the GAN, augmentation and Table 1 tasks, resume, and bad inputs."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_helpers import cli

from jaxtextgan import checkpoint, loop
from jaxtextgan.data import trigram
from jaxtextgan.errors import InputError, Preempted
from jaxtextgan.tasks import augment as augment_task
from jaxtextgan.reports import gan as gan_report
from jaxtextgan.tasks import gan as gan_task

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(name):
  spec = importlib.util.spec_from_file_location(f"_test_{name}_config", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_gan_config(steps=120, loss="minimax"):
  """The synthetic trigram oracle with 20 words and a 1-layer G and D, from scratch (no MLE phase)."""
  c = _config("gan")
  c.mesh_shape = (1, 1, 1)
  c.data.source = "trigram"
  c.data.trigram.update(dict(vocab_size=20, sentence_len=8, train=2000, valid=200, test=200))
  c.data.batch_size = 32
  c.generator.length = 8
  c.model.update(dict(n_layer=1, d_model=32, n_head=2, d_ff=64, max_len=16))
  # The transformer critic here (configs/gan.py's default is the CNN, which tests/test_gan.py covers).
  c.discriminator.update(dict(kind="transformer", n_layer=1, d_model=32, n_head=2, d_ff=64, dropout=0.0))
  c.pretrain.steps = 0
  c.gan.update(dict(loss=loss, steps=steps, batch_size=32, d_warmup_steps=20, log_every=20, checkpoint_every=40,
                    fast_compile=True, tau=dict(kind="exponential", start=1.0, end=0.5)))
  c.g_optimizer.lr = 3e-3
  c.d_optimizer.lr = 3e-3
  c.eval.nll_test = False
  c.sample.num = 200
  return c


def _gan_params(workdir, step):
  """The GAN checkpoint at `step` as plain arrays (no target needed)."""
  manager = ocp.CheckpointManager(pathlib.Path(workdir, "checkpoints").absolute(), item_names=("state", "meta"))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  finally:
    manager.close()
  return restored["state"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """120 minimax steps on the oracle, uninterrupted."""
  workdir = tmp_path_factory.mktemp("gan_full")
  return workdir, gan_task.run(tiny_gan_config(), workdir)


def test_gan_on_the_trigram_oracle_lowers_nll_oracle(finished_run):
  workdir, results = finished_run
  before, after = results["before"]["nll_oracle"], results["after"]["nll_oracle"]
  assert after < before - 0.1, (before, after)
  for name in ("samples.txt", "samples_before.txt", "samples_after.txt", "gan_curves.png", "metrics.jsonl",
               "results.json"):
    assert (workdir / name).exists(), name
  assert list((workdir / "tensorboard").iterdir())
  for key in ("bleu2", "bleu5", "self_bleu3", "distinct2"):
    assert 0.0 <= results["after"][key] <= 1.0
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if r["split"] == "train"]
  assert {"d_loss", "g_loss", "d_real", "d_fake", "tau", "g_grad_norm", "d_grad_norm"} <= set(train[-1])
  assert train[-1]["tau"] < train[0]["tau"]
  # The critic-only warm-up ran before GAN step 0 and D separates the random G's samples from the oracle's.
  (warmup,) = [r for r in rows if r["split"] == "d_warmup"]
  assert warmup["step"] == 0 and warmup["d_real"] > warmup["d_fake"] + 0.1, warmup


def test_the_run_ends_with_a_short_frontier_of_g_before_and_after_the_gan(finished_run):
  """configs/gan.py's frontier: G before the GAN ("initial G": no MLE phase here) and after it, at 3 temperatures,
  on the oracle's planes; the point of the GAN's G at T = 1 is the 'after GAN' sample set (same key and count)."""
  workdir, results = finished_run
  f = results["frontier"]
  temps = tuple(tiny_gan_config().frontier.temperatures)
  assert [(r["generator"], r["temperature"]) for r in f["rows"]] == [
    (g, t) for g in ("initial G", "GAN G (minimax)") for t in temps]
  assert (f["x"], f["y"]) == ("nll_test", "nll_oracle") and "Pareto-dominated points" in f["comparison"]["verdict"]
  (after_at_1,) = [r for r in f["rows"] if r["generator"] == "GAN G (minimax)" and r["temperature"] == 1.0]
  assert after_at_1["nll_oracle"] == pytest.approx(results["after"]["nll_oracle"])
  (before_at_1,) = [r for r in f["rows"] if r["generator"] == "initial G" and r["temperature"] == 1.0]
  assert before_at_1["nll_oracle"] == pytest.approx(results["before"]["nll_oracle"])
  assert (workdir / "frontier.png").exists()
  assert f["comparison"]["verdict"] in gan_report.summary(results)


def test_wgan_gp_on_the_trigram_oracle_lowers_nll_oracle(tmp_path):
  """WGAN-GP end to end: critic E D(fake) - E D(real) + 10 GP, G on -E D(fake), 120 steps from a random G.
  A flipped G sign (G descending E D(fake)) sends G away from what the critic scores as real text."""
  c = tiny_gan_config(loss="wgan-gp")
  c.frontier.temperatures = ()
  results = gan_task.run(c, tmp_path)
  before, after = results["before"]["nll_oracle"], results["after"]["nll_oracle"]
  assert after < before - 0.3, (before, after)
  last = results["last_train_metrics"]
  assert np.isfinite(last["gp"]) and last["critic_grad_norm"] > 0 and "frontier" in results


def test_a_finished_run_prints_its_results_without_training(finished_run, capsys, monkeypatch):
  workdir, results = finished_run
  monkeypatch.setattr(loop, "run", lambda **kw: pytest.fail("a finished run must not train again"))
  again = gan_task.run(tiny_gan_config(), workdir)
  assert again["after"] == results["after"]
  out = capsys.readouterr().out
  assert "holds a finished run" in out and "NLL-oracle" in out and "after GAN" in out


def test_interrupted_and_resumed_run_gives_the_same_params(finished_run, tmp_path, monkeypatch):
  """60 steps, SIGTERM-style stop, then resume to 120 == 120 uninterrupted steps."""
  full_dir, _ = finished_run
  calls = {"n": 0}

  def stop_at_60(self):  # after the D warm-up's steps, at GAN step 60
    calls["n"] += 1
    return calls["n"] == tiny_gan_config().gan.d_warmup_steps + 60

  with monkeypatch.context() as patch, pytest.raises(Preempted, match=r"\[gan\] SIGTERM: saved step 60 "):
    patch.setattr(loop.PreemptionGuard, "should_stop", stop_at_60)
    gan_task.run(tiny_gan_config(), tmp_path)
  resumed = gan_task.run(tiny_gan_config(), tmp_path)
  assert resumed["finished"] and resumed["gan_steps"] == 120
  a, b = _gan_params(full_dir, 120), _gan_params(tmp_path, 120)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


# --- bad inputs ----------------------------------------------------------------------------------------------------


def _fake_lm_checkpoint(path, tokenizer_spec):
  ckpt = checkpoint.Checkpointer(path / "checkpoints", async_save=False)
  ckpt.save(5, {"params": jnp.zeros(3)}, {"tokenizer": tokenizer_spec, "model": {}, "objective": "lm"})
  ckpt.close()
  return path


@pytest.mark.parametrize("change,message", [
  (lambda c, p: c.generator.update(dict(kind="mlp", init_from=str(p))),
   "generator='mlp' conflicts with generator.init_from"),
  (lambda c, p: c.generator.update(dict(kind="mlp")) or c.pretrain.update(dict(steps=10)),
   "generator='mlp' conflicts with pretrain.steps=10"),
  (lambda c, p: c.generator.update(dict(init_from=str(p))) or c.pretrain.update(dict(steps=10)),
   "conflicts with pretrain.steps=10: G starts from that checkpoint"),
  (lambda c, p: c.sample.update(dict(num=0)), "gives an empty sample set"),
  (lambda c, p: c.gan.tau.update(dict(start=0.0)), "zero tau"),
  (lambda c, p: c.gan.update(dict(d_warmup_steps=-1)), "d_warmup_steps=-1 is negative"),
  (lambda c, p: c.gan.update(dict(batch_size=30, n_critic=1)) or c.update(dict(mesh_shape=(8, 1, 1))),
   "not divisible by the 8 data shards"),
  (lambda c, p: c.generator.update(dict(init_from=str(_fake_lm_checkpoint(p, "word:another-corpus")))),
   "tokenizer mismatch between the G checkpoint and the data"),
])
def test_bad_gan_inputs_are_one_line_input_errors(tmp_path, change, message):
  c = tiny_gan_config()
  change(c, tmp_path / "lm")
  with pytest.raises(InputError, match=message) as err:
    gan_task.run(c, tmp_path / "run")
  assert "\n" not in str(err.value)


def test_bad_augment_inputs_are_input_errors(tmp_path):
  c = _config("augment")
  c.augment.ratio = 0.0
  with pytest.raises(InputError, match="empty sample set"):
    augment_task.run(c, tmp_path / "a")
  c = _config("augment")
  c.data.source = "trigram"
  with pytest.raises(InputError, match="not supported by objective='augment'"):
    augment_task.run(c, tmp_path / "b")


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jaxtextgan.main", "--config=configs/gan.py",
                         "--config.gan.tau.end=0", f"--workdir={tmp_path}"], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and "zero tau" in lines[0]


# --- augmentation and Table 1, tiny -------------------------------------------------------------------------------


def _text_corpus(directory: pathlib.Path) -> dict:
  """Word-level train/valid/test files of oracle sentences ("w3 w17 ..."), one per line."""
  oracle = trigram.TrigramLM(seed=0, vocab_size=20, sentence_len=6)
  files = {}
  for i, (name, n) in enumerate((("train", 1200), ("valid", 100), ("test", 100))):
    rows = oracle.sample(n, np.random.default_rng(i))
    files[name] = directory / f"{name}.txt"
    files[name].write_text("".join(" ".join(f"w{w}" for w in row) + "\n" for row in rows))
  return files


def test_table1_tiny_writes_the_table_with_all_rows(tmp_path):
  # The command line in a fresh process: in a long-lived test worker, XLA:CPU's compiler has crashed (SIGSEGV) at
  # this run's GAN-step compile, while the same run passes in a new process.
  files = _text_corpus(tmp_path)
  output = tmp_path / "results" / "table1.md"
  flags = {
    "mesh_shape": "(1,1,1)", "output": output, "data.source": "text", "data.train_file": files["train"],
    "data.valid_file": files["valid"], "data.test_file": files["test"], "data.seq_len": 10, "data.batch_size": 8,
    "width.d_model": 8, "width.n_head": 2, "width.d_ff": 16, "width.max_len": 12, "width.dropout": 0.0,
    "lm12.model.n_layer": 1, "lm24.model.n_layer": 2, "lm12.train.steps": 6, "lm24.train.steps": 6,
    "train.log_every": 3, "train.checkpoint_every": 0, "eval.batch_size": 32,
    "eval.stride": 5,  # sliding-window perplexity: the stride may not exceed data.seq_len = 10
    "sample.num": 2, "sample.length": 4, "gan.discriminator.kind": "cnn", "gan.discriminator.d_model": 8,
    "gan.discriminator.widths": "(2,)", "gan.discriminator.filters": 4, "gan.discriminator.dropout": 0.0,
    "gan.gan.steps": 4, "gan.gan.batch_size": 8, "gan.gan.log_every": 2, "gan.gan.checkpoint_every": 0,
    "gan.gan.fast_compile": True, "gan.eval.nll_test": False, "gan.sample.num": 8, "augment.ratio": 0.1,
    "augment.steps": 4, "augment.sample_batch": 16, "augment.log_every": 2, "augment.splits": "('test',)"}
  cli(tmp_path / "run", [f"--config.{k}={v}" for k, v in flags.items()], config="configs/table1.py")
  text = output.read_text()
  for row in ("GPT-2 (base) | 1", "GPT-2 (deep) | 2", "GPT-2 + GAN augmentation | 2",
              "LM-sample augmentation, same temperature | 2", "without augmentation, same steps | 2"):
    assert row in text, row
  assert "Command: `python -m jaxtextgan.main --config=configs/table1.py`" in text and "Seed: 0" in text
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert len(results["rows"]) == 5 and all(np.isfinite(r["test"]["perplexity"]) for r in results["rows"])
  aug = json.loads((tmp_path / "run" / "augment24" / "results.json").read_text())
  real = aug["real_sequences"]
  assert aug["synthetic"] == round(0.1 * real)
  assert aug["arms"]["none"]["train_sequences"] == real
  assert aug["arms"]["gan"]["train_sequences"] == aug["arms"]["lm"]["train_sequences"] == real + aug["synthetic"]
  synthetic = (tmp_path / "run" / "augment24" / "synthetic_gan.txt").read_text().splitlines()
  assert len(synthetic) == aug["synthetic"] and all(w.startswith("w") or w in ("<eos>", "<unk>")
                                                    for line in synthetic for w in line.split())


# --- augmentation: synthetic blocks ------------------------------------------------------------------------------


class _PieceTokenizer:
  """Decodes id i to the piece 'p<i>' and encodes a text back, merging 'p1 p2' into one id 9 (a BPE-like merge
  that shortens a sample), so re-encoded samples have other lengths."""

  def decode(self, ids):
    return " ".join(f"p{int(i)}" for i in ids)

  def encode(self, text):
    out = [int(w[1:]) for w in text.replace("p1 p2", "p9").split()]
    return out


def test_re_encoded_samples_form_blocks_without_padding(tmp_path):
  """Samples re-encoded to other lengths are one stream [bos, s_1, bos, s_2, ...] cut into T + 1 blocks: no
  filler token is ever a target (the old rows padded a short sample with bos targets that were trained on)."""
  bos = 0
  ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [1, 2, 1, 2], [3, 3, 3, 3]], np.int32)
  blocks = augment_task.to_blocks(ids, _PieceTokenizer(), bos, tmp_path / "s.txt")
  stream = [bos, 9, 3, 4, bos, 5, 6, 7, 8, bos, 9, 9, bos, 3, 3, 3, 3]
  assert blocks.shape == (len(stream) // 5, 5)
  np.testing.assert_array_equal(blocks.ravel(), stream[:blocks.size])
  assert (tmp_path / "s.txt").read_text().splitlines()[0] == "p1 p2 p3 p4"


def test_augment_samples_both_arms_at_one_temperature():
  c = _config("augment")
  c.augment.temperature = 0.7
  gan_cfg = augment_task.gan_run_config(c, pathlib.Path("/tmp/base"))
  assert gan_cfg.gan.temperature == 0.7 and gan_cfg.frontier.temperatures == ()
