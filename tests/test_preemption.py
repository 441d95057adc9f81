"""SIGTERM: the run saves at the next step boundary and exits cleanly; resuming matches an uninterrupted run."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from cli_helpers import REPO, cli, corpus, tiny_flags


def params_at(workdir, step):
  restored = ocp.StandardCheckpointer().restore(pathlib.Path(workdir) / "checkpoints" / str(step) / "state")
  return [np.asarray(x) for x in jax.tree.leaves(restored["params"])]


def test_sigterm_checkpoints_and_resume_matches(tmp_path):
  files = corpus(tmp_path)
  steps = 400
  # Cosine schedule over the full run: the interrupted and resumed halves must see the same learning rates.
  flags = tiny_flags(files, steps=steps, **{"optimizer.schedule": "cosine", "optimizer.warmup_steps": 5,
                                            "train.log_every": 1, "train.checkpoint_every": 0})
  cli(tmp_path / "straight", flags)

  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.Popen([sys.executable, "-m", "jaxtextgan.main", "--config=configs/lm.py",
                           f"--workdir={tmp_path / 'run'}", *flags], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and any(json.loads(l)["step"] >= 20 for l in metrics.read_text().splitlines() if l):
      break
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be interrupted; raise `steps`"
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "SIGTERM" in out
  saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
  assert len(saved) == 1 and 20 <= saved[0] < steps

  resumed = cli(tmp_path / "run", flags)
  assert f"at step {saved[0]}" in resumed.stdout
  for a, b in zip(params_at(tmp_path / "straight", steps), params_at(tmp_path / "run", steps)):
    np.testing.assert_allclose(a, b, atol=1e-5)
