"""Two local processes (gloo CPU collectives, 4 fake devices each) train on one global mesh of 8."""

import json
import os
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


def test_two_processes_match_one_process_and_checkpoint_restores(tmp_path):
  files = corpus(tmp_path)
  flags = tiny_flags(files, steps=3, **{"data.batch_size": 8, "eval.batch_size": 8, "train.log_every": 1,
                                        "train.checkpoint_every": 3, "mesh_shape": "(8,1,1)"})
  cli(tmp_path / "single", flags, env={"JAX_NUM_CPU_DEVICES": "8"})

  port = free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"}
  procs = [subprocess.Popen([sys.executable, "-m", "jaxtextgan.main", "--config=configs/lm.py",
                             f"--workdir={tmp_path / 'multi'}", f"--coordinator_address=127.0.0.1:{port}",
                             "--num_processes=2", f"--process_id={i}", *flags],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]

  single, multi = train_losses(tmp_path / "single"), train_losses(tmp_path / "multi")
  assert sorted(multi) == [1, 2, 3]
  for step in (1, 2, 3):
    assert abs(single[step] - multi[step]) < 1e-5, (step, single[step], multi[step])

  # The checkpoint both processes wrote restores in one process with 8 devices and training continues.
  proc = cli(tmp_path / "multi", tiny_flags(files, steps=4, **{"data.batch_size": 8, "eval.batch_size": 8,
                                                                "mesh_shape": "(8,1,1)"}),
             env={"JAX_NUM_CPU_DEVICES": "8"})
  assert "at step 3" in proc.stdout


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


def test_two_processes_resume_from_shards_like_one_uninterrupted_process(tmp_path):
  """Two processes resume at step 2 (checkpoint of a one-process run) and each reads its half of every global batch
  from the shards: their losses are those of one uninterrupted process, so together they read the global batches."""
  from jaxtextgan import prepare  # pylint: disable=import-outside-toplevel
  files = corpus(tmp_path)
  prepare.prepare(str(tmp_path / "shards"), "word", 8, train=files["train"], valid=files["valid"], shard_mb=0.001,
                  log=lambda *_: None)
  flags = lambda steps: tiny_flags(files, steps=steps, **{
    "data.source": "shards", "data.shards_dir": tmp_path / "shards", "data.batch_size": 8, "eval.batch_size": 8,
    "eval.stride": 8, "train.log_every": 1, "train.checkpoint_every": 2, "mesh_shape": "(8,1,1)"})
  cli(tmp_path / "single", flags(4), env={"JAX_NUM_CPU_DEVICES": "8"})
  cli(tmp_path / "multi", flags(2), env={"JAX_NUM_CPU_DEVICES": "8"})
  outs = run_two_processes(tmp_path / "multi", flags(4))
  assert "at step 2" in outs[0][0]
  single, multi = train_losses(tmp_path / "single"), train_losses(tmp_path / "multi")
  assert sorted(multi) == [1, 2, 3, 4]
  for step in (3, 4):
    assert abs(single[step] - multi[step]) < 1e-5, (step, single[step], multi[step])
