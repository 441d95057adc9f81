"""The command line: resume in a new process, bad input as one-line errors, outputs of a run."""

import json
import pathlib

import numpy as np
import orbax.checkpoint as ocp
import pytest

from cli_helpers import cli, corpus, tiny_flags

def final_params(workdir, step):
  restored = ocp.StandardCheckpointer().restore(pathlib.Path(workdir) / "checkpoints" / str(step) / "state")
  return restored["params"]


def flat(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("straight")
  files = corpus(tmp)
  cli(tmp / "run", tiny_flags(files, steps=8))
  return tmp / "run", files


def test_resume_in_new_process_equals_straight_run(straight_run, tmp_path):
  straight_dir, files = straight_run
  cli(tmp_path / "run", tiny_flags(files, steps=4))
  second = cli(tmp_path / "run", tiny_flags(files, steps=8))
  assert "resumed from" in second.stdout and "at step 4" in second.stdout
  for a, b in zip(flat(final_params(straight_dir, 8)), flat(final_params(tmp_path / "run", 8))):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_run_writes_its_outputs(straight_run):
  workdir, _ = straight_run
  for name in ("metrics.jsonl", "samples.txt", "loss_curves.png", "results.json", "config.json",
               "tokenizer", "tensorboard"):
    assert (workdir / name).exists(), name
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"train", "valid", "test"} <= {r["split"] for r in rows}
  results = json.loads((workdir / "results.json").read_text())
  assert results["step"] == 8 and results["valid"]["perplexity"] > 1
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8]


def one_line_error(proc) -> str:
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  return lines[0]


def test_unknown_config_key(tmp_path):
  err = one_line_error(cli(tmp_path / "w", ["--config.model.d_modle=3"], check=False))
  assert "unknown config key 'model.d_modle'" in err and "model.d_model" in err


def test_missing_and_empty_corpus(tmp_path):
  files = corpus(tmp_path)
  err = one_line_error(cli(tmp_path / "w", tiny_flags({**files, "train": str(tmp_path / "nope.txt")}), check=False))
  assert "nope.txt" in err
  (tmp_path / "empty.txt").write_text("  \n")
  err = one_line_error(cli(tmp_path / "w2", tiny_flags({**files, "train": str(tmp_path / "empty.txt")}), check=False))
  assert "empty.txt" in err and "empty" in err


def test_non_utf8_corpus(tmp_path):
  files = corpus(tmp_path)
  (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 50)
  err = one_line_error(cli(tmp_path / "w", tiny_flags({**files, "train": str(tmp_path / "latin1.txt")}), check=False))
  assert "latin1.txt" in err and "UTF-8" in err


def test_sequence_longer_than_max_len(tmp_path):
  files = corpus(tmp_path)
  err = one_line_error(cli(tmp_path / "w", tiny_flags(files, **{"data.seq_len": 32}), check=False))
  assert "data.seq_len=32" in err and "max_len=16" in err


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  err = one_line_error(cli(blocker / "sub", [], check=False))
  assert "not writable" in err and str(blocker / "sub") in err


def test_missing_config_file(tmp_path):
  err = one_line_error(cli(tmp_path / "w", [], config="configs/nope.py", check=False))
  assert "configs/nope.py" in err


def test_corrupt_latest_checkpoint_falls_back_on_resume(tmp_path):
  files = corpus(tmp_path)
  cli(tmp_path / "run", tiny_flags(files, steps=8))
  for p in (tmp_path / "run" / "checkpoints" / "8" / "state").rglob("*"):
    if p.is_file() and p.parent.name == "d":
      p.write_bytes(b"garbage")
  proc = cli(tmp_path / "run", tiny_flags(files, steps=12, **{"train.checkpoint_every": 6}))
  assert "could not be restored" in proc.stderr and "at step 4" in proc.stdout
  assert (tmp_path / "run" / "corrupt_checkpoints" / "8").is_dir()
  assert 12 in [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
