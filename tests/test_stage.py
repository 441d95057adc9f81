"""`stage.run_stage`: done/skip, exact resume after preemption (pathlib or epath), meta refusal, multi-step iterations,
`start`, `lower`; run outputs of a gs:// workdir through epath."""

import dataclasses
import itertools
import json
import pathlib

import jax
import numpy as np
import pytest
from etils import epath

from jaxtextgan import errors, loop, stage, writers
from jaxtextgan import sharding as shd
from jaxtextgan.config import load_config
from jaxtextgan.data import lm as lm_data
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import lm
from jaxtextgan.tasks import common
from jaxtextgan.tasks import lm as lm_task
from cli_helpers import fake_bucket

CFG = gpt2.GPT2Config(vocab_size=32, max_len=16, n_layer=1, d_model=16, n_head=2, d_ff=32, dropout=0.0)
BATCH = 4
BLOCKS = np.random.RandomState(0).randint(0, 32, (64, 9)).astype(np.int32)


@pytest.fixture(scope="module")
def mesh():
  return shd.make_mesh((1, 1, 1), jax.devices()[:1])


@pytest.fixture(scope="module")
def base(mesh):
  """One Stage (one init closure and optimizer), so every test reuses the same compiled programs."""
  opt = {"lr": 1e-2, "total_steps": 6, "warmup_steps": 0, "schedule": "constant"}
  return lm_task.lm_stage(
    "tiny-lm", None, CFG, opt, BLOCKS, batch_size=BATCH, seed=3, rng_seed=4, num_steps=4,
    meta={"tokenizer": "bytes"}, log_every=1, tensorboard=False, show_progress=False,
    evaluate=lambda s: lm_task.evaluate_splits(s, {"valid": BLOCKS[:8]}, ("valid",), BATCH, mesh))


def params_of(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def assert_params_close(a, b, atol=1e-6):
  for x, y in zip(params_of(a), params_of(b), strict=True):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def stop_at(monkeypatch, k):
  """PreemptionGuard.should_stop answers True at its k-th call (after iteration k)."""
  calls = itertools.count(1)
  monkeypatch.setattr(loop.PreemptionGuard, "should_stop", lambda self: next(calls) == k)


def saved_steps(directory):
  return sorted(int(p.name) for p in (directory / "checkpoints").iterdir() if p.name.isdigit())


def test_run_writes_done_and_second_run_skips(base, mesh, tmp_path, monkeypatch):
  """done.json records the step and the evaluation; a finished stage is not trained again."""
  st = dataclasses.replace(base, directory=tmp_path / "s")
  assert not stage.is_done(st) and stage.read_done(st.directory) is None
  first = stage.run_stage(st, mesh)
  done = stage.read_done(st.directory)
  assert done["step"] == st.num_steps == first.done["step"]
  assert int(first.state.step) == st.num_steps
  assert done["eval"] == first.done["eval"]
  assert done["eval"]["valid"]["tokens"] == 8 * 8 and np.isfinite(done["eval"]["valid"]["nll"])
  assert np.isfinite(done["train"]["loss"])
  assert stage.is_done(st)
  assert not stage.is_done(dataclasses.replace(st, num_steps=st.num_steps + 1))

  def fail(**_):
    raise AssertionError("loop.run called for a finished stage")

  monkeypatch.setattr(loop, "run", fail)
  again = stage.run_stage(st, mesh)
  assert again.done == done
  assert int(again.state.step) == st.num_steps
  assert_params_close(again.state, first.state, atol=0)


@pytest.mark.parametrize("as_path", [pathlib.Path, epath.Path], ids=["pathlib", "epath"])
def test_preempted_stage_resumes_exactly(base, mesh, tmp_path, monkeypatch, as_path):
  """Stopped after iteration 2, the stage names itself and step 2; the rerun ends where a straight run does. Also
  with an epath.Path directory (what a gs:// workdir is): checkpoints, metrics and done.json go through epath."""
  tmp_path = as_path(tmp_path)
  straight = stage.run_stage(dataclasses.replace(base, directory=tmp_path / "straight"), mesh)
  st = dataclasses.replace(base, directory=tmp_path / "cut")
  stop_at(monkeypatch, 2)
  with pytest.raises(errors.Preempted) as err:
    stage.run_stage(st, mesh)
  assert "[tiny-lm]" in str(err.value) and "saved step 2" in str(err.value)
  assert err.value.step == 2 and err.value.stage == "tiny-lm"
  assert saved_steps(st.directory) == [2] and stage.read_done(st.directory) is None
  monkeypatch.undo()
  resumed = stage.run_stage(st, mesh)
  assert resumed.done["step"] == base.num_steps and int(resumed.state.step) == base.num_steps
  assert_params_close(resumed.state, straight.state)
  # The data position was restored too: the training loss of the last step is the straight run's.
  np.testing.assert_allclose(resumed.done["train"]["loss"], straight.done["train"]["loss"], rtol=1e-5)


@pytest.mark.parametrize("finished", [False, True], ids=["resume", "done"])
def test_checkpoint_of_other_meta_is_refused(base, mesh, tmp_path, monkeypatch, finished):
  """A checkpoint recorded with another tokenizer: one-line InputError naming the key; the checkpoint stays."""
  st = dataclasses.replace(base, directory=tmp_path / "s")
  if finished:
    stage.run_stage(st, mesh)
  else:
    stop_at(monkeypatch, 1)
    with pytest.raises(errors.Preempted):
      stage.run_stage(st, mesh)
    monkeypatch.undo()
  before = saved_steps(st.directory)
  assert before

  def fail(**_):
    raise AssertionError("loop.run called despite a checkpoint of another run")

  monkeypatch.setattr(loop, "run", fail)
  other = dataclasses.replace(st, meta={**st.meta, "tokenizer": "other"})
  with pytest.raises(errors.InputError) as err:
    stage.run_stage(other, mesh)
  msg = str(err.value)
  assert "\n" not in msg and "tokenizer" in msg and "'other'" in msg and "'bytes'" in msg
  assert saved_steps(st.directory) == before


def _step_a(state, batch, rng):
  new, metrics = lm.train_step(state, batch, rng)
  return new, {**metrics, "a_saw": state.step}


def _step_b(state, batch, rng):
  new, metrics = lm.train_step(state, batch, rng)
  return new, {"b_loss": metrics["loss"], "b_saw": state.step}


def test_two_steps_run_in_order_each_iteration(base, mesh, tmp_path, monkeypatch):
  """Both steps run once per iteration, A before B, metrics merged; progress counts iterations, also on resume."""
  st = dataclasses.replace(base, directory=tmp_path / "s", steps=(_step_a, _step_b), num_steps=3,
                           progress=lambda s: s.step // 2)
  stop_at(monkeypatch, 2)
  with pytest.raises(errors.Preempted) as err:
    stage.run_stage(st, mesh)
  assert err.value.step == 2
  monkeypatch.undo()
  result = stage.run_stage(st, mesh)
  assert result.done["step"] == 3 and int(result.state.step) == 6
  train = result.done["train"]
  assert {"loss", "accuracy", "grad_norm", "b_loss", "a_saw", "b_saw"} <= set(train)
  assert (train["a_saw"], train["b_saw"]) == (4, 5)
  rows = [json.loads(l) for l in (st.directory / "metrics.jsonl").read_text().splitlines() if l]
  assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]
  assert [r["b_saw"] - r["a_saw"] for r in rows if r["split"] == "train"] == [1, 1, 1]


def _doubled(calls):
  def start(state):
    calls.append(int(state.step))
    return state.replace(params=jax.tree.map(lambda x: 2 * x, state.params))
  return start


def test_start_applies_to_fresh_state_only(base, mesh, tmp_path, monkeypatch):
  """`start` shapes the fresh state (here: doubled parameters) and is not applied again on resume."""
  calls = []
  (tmp_path / "w").mkdir()
  writer = writers.MetricWriter(tmp_path / "w", tensorboard=False)
  fresh = stage.run_stage(dataclasses.replace(base, num_steps=0, evaluate=None, start=_doubled(calls),
                                              writer=writer), mesh)
  assert calls == [0]
  init = base.init(jax.random.key(base.seed))
  for a, b in zip(params_of(fresh.state), params_of(init), strict=True):
    np.testing.assert_allclose(a, 2 * b, rtol=1e-6)

  calls.clear()
  st = dataclasses.replace(base, directory=tmp_path / "s", start=_doubled(calls), evaluate=None)
  stop_at(monkeypatch, 1)
  with pytest.raises(errors.Preempted):
    stage.run_stage(st, mesh)
  monkeypatch.undo()
  assert calls == [0]
  resumed = stage.run_stage(st, mesh)
  assert calls == [0], "start was applied on resume"
  assert int(resumed.state.step) == base.num_steps
  # From doubled parameters, training ends elsewhere than from the plain initialisation.
  plain = stage.run_stage(dataclasses.replace(base, evaluate=None, writer=writer), mesh)
  assert not all(np.allclose(a, b) for a, b in zip(params_of(plain.state), params_of(resumed.state)))


def test_stage_without_directory_or_writer_trains(base, mesh):
  """The docstring's one-shot run: directory None trains without checkpoints."""
  result = stage.run_stage(dataclasses.replace(base, num_steps=1, evaluate=None), mesh)
  assert result.done["step"] == 1


def test_lower_compiles_abstract_steps(base, mesh):
  """`lower` gives the jitted steps with abstract arguments whose batch shapes are `batch_spec`."""
  assert base.batch_spec == stage.int_batch(inputs=(BATCH, 8), targets=(BATCH, 8))
  st = dataclasses.replace(base, steps=(_step_a, _step_b))
  lowered = stage.lower(st, mesh)
  assert len(lowered) == 2
  for fn, args in lowered:
    state, batch, key = args
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (v.shape, v.dtype) for k, v in st.batch_spec.items()}
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves((state, batch, key)))
    assert fn.lower(*args).compile().cost_analysis() is not None


def test_run_outputs_go_to_a_gs_workdir_through_epath(tmp_path, monkeypatch):
  """--workdir=gs://bucket/run: config.json, the tokenizer, metrics, TensorBoard's folder, samples, curves, reports,
  JSON and done.json are all written through epath (here to a fake bucket), none to a local 'gs:' folder."""
  import tensorboardX  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)  # where pathlib would put gs://bucket/run: ./gs:/bucket/run
  boards = []
  monkeypatch.setattr(tensorboardX, "SummaryWriter", lambda logdir: boards.append(logdir) or None)
  config = load_config(pathlib.Path(__file__).resolve().parents[1] / "configs" / "lm.py", {"mesh_shape": (1, 1, 1)})
  bucket = tmp_path / "bucket" / "run"
  with fake_bucket(tmp_path / "bucket"):
    run = common.start(config, "gs://bucket/run")
    assert str(run.workdir) == "gs://bucket/run" and boards == ["gs://bucket/run/tensorboard"]
    run.writer._tb = None  # pylint: disable=protected-access  # the stand-in above
    words = common.tokenizer_for(run.workdir, "word", "the cat sat\n")
    assert common.tokenizer_for(run.workdir, "word", "other text\n").spec == words.spec  # read back
    ids = lm_data.tokenize("the cat sat\n", words, cache_dir=common.cache_dir(run.workdir))
    cached = list((bucket / "cache").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npy"
    np.testing.assert_array_equal(np.load(cached[0]), ids)
    np.save(cached[0], ids + 1)  # a second tokenize of the same text is the cache's read
    np.testing.assert_array_equal(lm_data.tokenize("the cat sat\n", words, cache_dir=common.cache_dir(run.workdir)),
                                  ids + 1)
    for step, loss in ((1, 2.0), (2, 1.0)):
      run.writer.write(step, {"loss": loss})
    writers.write_samples(run.workdir / "samples.txt", ["the cat"], header="step 2")
    writers.plot_curves(run.workdir / "metrics.jsonl", run.workdir / "curves.png", [("loss", [("train", "loss")])])
    writers.write_report(run.workdir / "report.md", "# report")
    stage.write_json(run.workdir / "done.json", {"step": 2})
    assert stage.read_done(run.workdir) == {"step": 2}
    assert [r["loss"] for r in writers.read_metrics(run.workdir / "metrics.jsonl")] == [2.0, 1.0]
  assert sorted(p.name for p in bucket.iterdir()) == ["cache", "config.json", "curves.png", "done.json",
                                                      "metrics.jsonl", "report.md", "samples.txt", "tokenizer"]
  assert (bucket / "curves.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "gs:").exists()
