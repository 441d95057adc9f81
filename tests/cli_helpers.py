"""Helpers for tests that run the command line in subprocesses on a tiny text corpus."""

import contextlib
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = "the cat sat on the mat . a dog ran in the park . " * 40


def corpus(tmp_path) -> dict[str, str]:
  files = {}
  for split, n in (("train", 30), ("valid", 6), ("test", 6)):
    path = tmp_path / f"{split}.txt"
    path.write_text("\n".join(WORDS.split(" . ")[:n] * 3) + "\n", encoding="utf-8")
    files[split] = str(path)
  return files


def tiny_flags(files, steps=8, **extra) -> list[str]:
  flags = {
    "data.source": "text", "data.train_file": files["train"], "data.valid_file": files["valid"],
    "data.test_file": files["test"], "data.seq_len": 8, "data.batch_size": 4,
    "model.n_layer": 2, "model.d_model": 16, "model.n_head": 2, "model.d_ff": 32, "model.max_len": 16,
    "optimizer.schedule": "constant", "optimizer.warmup_steps": 0, "train.steps": steps, "train.log_every": 2,
    "train.eval_every": 0, "train.checkpoint_every": 4, "eval.batch_size": 4, "sample.num": 2, "sample.length": 5,
  }
  flags.update(extra)
  return [f"--config.{k}={v}" for k, v in flags.items()]


def cli(workdir, flags, config="configs/lm.py", check=True, env=None):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  proc = subprocess.run([sys.executable, "-m", "jaxtextgan.main", f"--config={config}", f"--workdir={workdir}",
                         *flags], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
  return proc


def tiny_gan_config(mesh_shape):
  """configs/gan.py on a 20-word trigram oracle with a 1-layer GPT-2 G and a CNN D, on `mesh_shape`."""
  from jaxtextgan.config import load_config  # here, so the subprocess helpers above import no JAX
  config = load_config(REPO / "configs" / "gan.py")
  config.mesh_shape = mesh_shape
  config.data.source = "trigram"
  config.data.trigram.update(dict(vocab_size=20, sentence_len=6, train=40, valid=8, test=8))
  config.data.batch_size = 8
  config.model.update(dict(n_layer=1, d_model=16, n_head=2, d_ff=32, max_len=8))
  config.generator.update(dict(length=6, latent_dim=8))
  config.discriminator.update(dict(kind="cnn", widths=(2, 3), filters=8))
  config.gan.update(dict(batch_size=8, n_critic=2, fast_compile=True))
  return config


@contextlib.contextmanager
def fake_bucket(root):
  """gs://bucket/... served from the folder `root` by epath's backend: what goes through epath lands there, while a
  write that bypasses epath (open, pathlib) would make a local 'gs:' folder instead."""
  from etils.epath import testing as epath_testing  # here, so the subprocess helpers above import no JAX

  def local(path):
    path = os.fspath(path)
    return os.fspath(root / path[len("gs://bucket/"):]) if path.startswith("gs://bucket/") else path

  one = lambda fn, path, *args, **kwargs: fn(local(path), *args, **kwargs)
  two = lambda fn, path, dst, *args, **kwargs: fn(local(path), local(dst), *args, **kwargs)
  names = ("exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree", "stat", "walk")
  with epath_testing.mock_epath(copy=two, rename=two, replace=two, **{name: one for name in names}):
    yield
