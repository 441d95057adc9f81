"""Two local processes (gloo CPU collectives, 4 fake devices each) train on one global mesh of 8."""

import json
import os
import shutil
import socket
import subprocess
import sys

from cli_helpers import REPO, cli, corpus, tiny_flags


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def train_losses(workdir) -> dict[int, float]:
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def run_two_processes(workdir, flags):
  port = free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"}
  procs = [subprocess.Popen([sys.executable, "-m", "jaxtextgan.main", "--config=configs/lm.py", f"--workdir={workdir}",
                             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
                             *flags], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


EIGHT = {"JAX_NUM_CPU_DEVICES": "8"}


def test_two_processes_match_one_process_from_text_files(tmp_path):
  """From scratch on text files (every process reads them and keeps its rows of each global batch)."""
  files = corpus(tmp_path)
  flags = tiny_flags(files, steps=3, **{"data.batch_size": 8, "eval.batch_size": 8, "train.log_every": 1,
                                        "train.checkpoint_every": 3, "mesh_shape": "(8,1,1)"})
  cli(tmp_path / "single", flags, env=EIGHT)
  run_two_processes(tmp_path / "multi", flags)
  single, multi = train_losses(tmp_path / "single"), train_losses(tmp_path / "multi")
  assert sorted(multi) == [1, 2, 3]
  for step in (1, 2, 3):
    assert abs(single[step] - multi[step]) < 1e-5, (step, single[step], multi[step])


def test_two_processes_resume_from_shards_and_their_checkpoint_restores_in_one(tmp_path):
  """Two processes resume at step 2 from a one-process checkpoint and each reads its half of every global batch from
  the shards: their losses are those of one uninterrupted process. The checkpoint they write at step 4 restores in
  one process with 8 devices, which goes on with the losses of the uninterrupted run."""
  from jaxtextgan import prepare  # pylint: disable=import-outside-toplevel
  files = corpus(tmp_path)
  prepare.prepare(str(tmp_path / "shards"), "word", 8, train=files["train"], valid=files["valid"], shard_mb=0.001,
                  log=lambda *_: None)
  flags = lambda steps: tiny_flags(files, steps=steps, **{
    "data.source": "shards", "data.shards_dir": tmp_path / "shards", "data.batch_size": 8, "eval.batch_size": 8,
    "eval.stride": 8, "train.log_every": 1, "train.checkpoint_every": 2, "train.keep_checkpoints": 3,
    "mesh_shape": "(8,1,1)"})
  cli(tmp_path / "single", flags(5), env=EIGHT)
  # The one-process run's own step-2 checkpoint (the schedule is constant, so it is that of a 2-step run).
  shutil.copytree(tmp_path / "single" / "checkpoints" / "2", tmp_path / "multi" / "checkpoints" / "2")
  outs = run_two_processes(tmp_path / "multi", flags(4))
  assert "at step 2" in outs[0][0]
  single, multi = train_losses(tmp_path / "single"), train_losses(tmp_path / "multi")
  assert sorted(multi) == [3, 4]
  proc = cli(tmp_path / "multi", flags(5), env=EIGHT)
  assert "at step 4" in proc.stdout
  multi = train_losses(tmp_path / "multi")
  assert sorted(multi) == [3, 4, 5]
  for step in (3, 4, 5):
    assert abs(single[step] - multi[step]) < 1e-5, (step, single[step], multi[step])
