"""GAN-BERT task: end-to-end train -> export -> predict on a tiny BERT, experiment report, budget, bad inputs."""

import importlib.util
import io
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import REPO, shared_path
from jaxtextgan import predict
from jaxtextgan.data import classification as cls_data
from jaxtextgan.errors import InputError
from jaxtextgan.metrics import classification_metrics
from jaxtextgan.tasks import ganbert as task

TOPICS = {
  "sport": ["the team won the match", "a goal in the final minute", "the runner broke the record",
            "fans cheered the team", "the coach praised the players"],
  "tech": ["the phone has a new chip", "software update fixes the bug", "the computer runs faster now",
           "a new chip for the phone", "the app crashed after the update"],
  "food": ["the soup needs more salt", "bake the bread for an hour", "fresh fruit for breakfast",
           "the chef cooked the fish", "bread and soup for dinner"],
}


def _config_module():
  spec = importlib.util.spec_from_file_location("ganbert_config", REPO / "configs" / "ganbert.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_tiny_bert(path: pathlib.Path, words, d=32, layers=2, heads=4, ff=48, max_pos=40) -> pathlib.Path:
  """A random BERT in Hugging Face layout (config.json, model.safetensors, vocab.txt)."""
  path.mkdir(parents=True, exist_ok=True)
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
  (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
  (path / "config.json").write_text(json.dumps(dict(
    model_type="bert", vocab_size=len(vocab), hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
    intermediate_size=ff, max_position_embeddings=max_pos, type_vocab_size=2, layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, hidden_act="gelu")), encoding="utf-8")
  rng = np.random.default_rng(0)
  normal = lambda *shape: (0.02 * rng.standard_normal(shape)).astype(np.float32)
  w = {"embeddings.word_embeddings.weight": normal(len(vocab), d),
       "embeddings.position_embeddings.weight": normal(max_pos, d),
       "embeddings.token_type_embeddings.weight": normal(2, d),
       "embeddings.LayerNorm.weight": np.ones(d, np.float32), "embeddings.LayerNorm.bias": np.zeros(d, np.float32),
       "pooler.dense.weight": normal(d, d), "pooler.dense.bias": np.zeros(d, np.float32)}
  for i in range(layers):
    p = f"encoder.layer.{i}."
    for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
      w[p + name + ".weight"], w[p + name + ".bias"] = normal(d, d), np.zeros(d, np.float32)
    w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"] = normal(ff, d), np.zeros(ff, np.float32)
    w[p + "output.dense.weight"], w[p + "output.dense.bias"] = normal(d, ff), np.zeros(d, np.float32)
    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
      w[p + norm + ".weight"], w[p + norm + ".bias"] = np.ones(d, np.float32), np.zeros(d, np.float32)
  save_file(w, str(path / "model.safetensors"))
  return path


def _write_csv(path: pathlib.Path, rows) -> pathlib.Path:
  lines = ["text,label"] + [f"{t},{y}" for t, y in rows]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("ganbert")
  words = [w for texts in TOPICS.values() for t in texts for w in t.split()]
  encoder = write_tiny_bert(root / "tiny_bert", words)
  train = [(t, y if i < 2 else "") for y, texts in TOPICS.items() for i, t in enumerate(texts[:4])]
  test = [(texts[4], y) for y, texts in TOPICS.items()] + [(texts[0], y) for y, texts in TOPICS.items()]
  return {"root": root, "encoder": encoder, "train": _write_csv(root / "train.csv", train),
          "test": _write_csv(root / "test.csv", test)}


def tiny_config(assets, **data):
  c = _config_module().get_config()
  c.data.update({**dict(source="files", train_file=str(assets["train"]), test_file=str(assets["test"]), max_len=16,
                        batch_size=8), **data})
  c.model.encoder_dir = str(assets["encoder"])
  c.train.update(dict(steps=3, epochs=0.0, log_every=1, checkpoint_every=2, tensorboard=False, fast_compile=True))
  c.eval.batch_size = 8
  c.experiment.progress = False
  return c


def test_train_export_predict_and_resume(assets, tmp_path, caplog, monkeypatch):
  """Trains with freeze_layers=1 of 2 and that layer's output cached (the other tests train the whole encoder)."""
  config = tiny_config(assets)
  config.model.freeze_layers = 1
  workdir = tmp_path / "run"
  result = task.run(config, workdir)
  assert result["step"] == 3 and result["n_labeled"] == 6 and result["n_unlabeled"] == 6
  assert result["replication"] == 1  # 6 of 12 labeled: log2(2) = 1 copy
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["accuracy"] == pytest.approx(result["accuracy"])
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"d_loss", "g_loss", "d_sup", "g_feature_matching"} <= set(rows[0])

  # The exported classifier (encoder + D, no G) labels the test texts exactly as the training run evaluated them.
  meta = json.loads(next((workdir / "classifier").glob("*/meta/metadata")).read_text())
  assert meta["label_names"] == ["food", "sport", "tech"] and meta["model"]["method"] == "ganbert"
  caplog.clear()  # training's own records (e.g. orbax waiting on an async save) are not predict's
  with caplog.at_level(logging.WARNING):
    classifier = predict.load_classifier(workdir)
  assert not caplog.records, [r.getMessage() for r in caplog.records]  # nothing a user cannot act on
  assert set(classifier.params.keys()) == {"encoder", "head"}
  # Trained on the cached output of the frozen bottom: the embeddings and layer 0 are the pre-trained ones.
  pretrained, trained = task.load_encoder(config.model, config.data.max_len).params, classifier.params["encoder"]
  np.testing.assert_array_equal(trained["embeddings"]["word"]["embedding"],
                                pretrained["embeddings"]["word"]["embedding"])
  pairs = list(zip(jax.tree.leaves(trained["layers"]), jax.tree.leaves(pretrained["layers"])))
  assert all(np.array_equal(a[0], b[0]) for a, b in pairs) and any(not np.array_equal(a[1], b[1]) for a, b in pairs)
  with monkeypatch.context() as m:
    m.chdir(tmp_path)
    assert predict.load_classifier("run").label_names == classifier.label_names  # a relative --workdir
  test_rows = [line.rsplit(",", 1) for line in assets["test"].read_text().splitlines()[1:]]
  probs = predict.classify(classifier, [t for t, _ in test_rows], batch_size=8)
  accuracy = np.mean([classifier.label_names[j] == y for j, (_, y) in zip(probs.argmax(-1), test_rows)])
  assert accuracy == pytest.approx(result["accuracy"])

  texts = tmp_path / "texts.txt"
  texts.write_text("the team won\n\nbread and soup\n", encoding="utf-8")
  out = io.StringIO()
  assert predict.main(["--workdir", str(workdir), "--input", str(texts)], stdout=out) == 0
  lines = out.getvalue().splitlines()
  assert lines[0].split("\t") == ["line", "label", "food", "sport", "tech"]
  assert [line.split("\t")[0] for line in lines[1:]] == ["1", "3"]  # the blank line is skipped
  for line in lines[1:]:
    fields = line.split("\t")
    p = np.array(fields[2:], float)
    assert p.sum() == pytest.approx(1.0, abs=1e-5) and fields[1] == ["food", "sport", "tech"][p.argmax()]
  out = io.StringIO()
  assert predict.main(["--workdir", str(workdir), "--format", "jsonl"], stdin=io.StringIO("a new chip\n"),
                      stdout=out) == 0
  record = json.loads(out.getvalue())
  assert record["text"] == "a new chip" and set(record["probabilities"]) == {"food", "sport", "tech"}

  # Running again resumes from the final checkpoint: no further step, the same result.
  again = task.run(config, workdir)
  assert again["step"] == 3 and again["accuracy"] == pytest.approx(result["accuracy"])


def test_experiment_writes_report_and_keeps_notes(assets, tmp_path):
  """Every method on the same splits and seeds; 'finetune' and the supervised-only ablation get GAN-BERT's steps,
  the release's 'baseline' its labeled passes; the report has the verdict and D's p(fake) over training."""
  config = tiny_config(assets)
  config.mode = "experiment"
  config.experiment.update(dict(seeds=(0, 1), report=str(tmp_path / "report.md"), figure=str(tmp_path / "fig.png"),
                                title="tiny", compile_cache=False, lr_cs=(0.1, 1.0),
                                methods=("ganbert", "finetune", "ganbert-sup-only", "baseline", "frozen-lr")))
  out = task.run(config, tmp_path / "exp")
  methods = {(s["method"], s["n"]) for s in out["summary"]}
  assert methods == {(m, 2) for m in ("ganbert", "finetune", "ganbert-sup-only", "baseline", "frozen-lr")}
  runs = {(r["method"], r["seed"]): r for r in out["runs"]}
  assert runs["finetune", 0]["steps"] == runs["ganbert-sup-only", 0]["steps"] == runs["ganbert", 0]["steps"] == 3
  assert runs["finetune", 0]["n_unlabeled"] == 0 and runs["ganbert-sup-only", 0]["n_unlabeled"] == 6
  assert runs["baseline", 0]["n_unlabeled"] == 0 and runs["baseline", 0]["steps"] == 2  # ceil(1 * 6 * 3 / 12)
  assert runs["frozen-lr", 1]["settings"]["C"] in (0.1, 1.0) and 0 <= runs["frozen-lr", 1]["accuracy"] <= 1
  curve = runs["ganbert", 0]["adversarial"]  # [step, p(fake) real, p(fake) G(z), L_G,fm, L_D,sup] per log
  assert [p[0] for p in curve] == [1, 2, 3] and all(0 < p[1] < 1 and 0 < p[2] < 1 and p[3] >= 0 for p in curve)
  report = (tmp_path / "report.md").read_text()
  assert "| split | 6 | GAN-BERT | 3 |" in report
  # 5 runs and 3 adversarial rows (first, middle, last logged step of GAN-BERT) per seed.
  assert report.count("| split | 0 |") == report.count("| split | 1 |") == 5 + 3
  assert "## Verdict" in report and "best accuracy:" in report and "Does the adversarial part work?" in report
  assert "C chosen by k-fold cross-validation on the labeled rows only" in report
  assert (tmp_path / "fig.png").stat().st_size > 1000
  with open(tmp_path / "report.md", "a", encoding="utf-8") as f:
    f.write("\nhand-written notes\n")
  task.run(config, tmp_path / "exp")  # every run is done: only the report is rewritten
  assert "hand-written notes" in (tmp_path / "report.md").read_text()


def test_contrastive_methods_share_one_stage_per_seed(assets, tmp_path, capsys, monkeypatch):
  """'contrastive-lr' trains the contrastive Stage; 'contrastive-ganbert' restores it and starts GAN-BERT there."""
  started_from = []
  train = task.train_and_evaluate
  monkeypatch.setattr(task, "train_and_evaluate",
                      lambda config, data, encoder, **kw: started_from.append(encoder.params) or train(
                        config, data, encoder, **kw))
  config = tiny_config(assets)
  config.mode = "experiment"
  config.experiment.update(dict(seeds=(0,), report=str(tmp_path / "report.md"), figure="", lr_cs=(0.1, 1.0),
                                methods=("contrastive-lr", "contrastive-ganbert"), contrastive_steps=3,
                                contrastive_batch_size=4))
  with pytest.raises(InputError, match="contrastive_batch_size=4 must be a positive multiple"):
    task.run(config, tmp_path / "exp")  # 8 devices
  config.experiment.contrastive_batch_size = 8
  out = task.run(config, tmp_path / "exp")
  runs = {r["method"]: r for r in out["runs"]}
  assert runs["contrastive-lr"]["settings"]["C"] in (0.1, 1.0)
  assert runs["contrastive-ganbert"]["steps"] == 3 and runs["contrastive-ganbert"]["adversarial"]
  assert runs["contrastive-lr"]["contrastive_seconds"] == runs["contrastive-ganbert"]["contrastive_seconds"] > 0
  assert capsys.readouterr().out.count("[contrastive] finished at step 3: skipped") == 1
  stage_dir = tmp_path / "exp" / "split" / "seed0" / "contrastive"
  assert json.loads((stage_dir / "done.json").read_text())["step"] == 3
  report = (tmp_path / "report.md").read_text()
  assert "contrastive encoder (JAX), then GAN-BERT" in report and "contrastive encoder (JAX) + logistic" in report
  from jaxtextgan.reports import ganbert as ganbert_report
  once = sum(r["wall_seconds"] for r in out["runs"]) - runs["contrastive-ganbert"]["contrastive_seconds"]
  assert ganbert_report.total_wall_seconds(out["runs"]) == pytest.approx(once)  # the shared Stage counted once
  assert f"Wall time: {once / 60:.1f} min summed over the 2 runs (a contrastive Stage that two rows share" in report
  # The encoder both methods read is the contrastive Stage's, not the pre-trained one.
  data = cls_data.load_data(config.data, seed=0)
  pretrained = task.load_encoder(config.model, config.data.max_len)
  tuned, _ = task.ganbert_contrastive.contrastive_encoder(config, data, pretrained, seed=0, directory=stage_dir,
                                                          mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(
                                                            1, 1, 1), ("data", "fsdp", "tensor")))
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(tuned.params), jax.tree.leaves(pretrained.params))]
  assert any(changed)
  jax.tree.map(np.testing.assert_array_equal, started_from[0], tuned.params)


def _stand_in_python(tmp_path):
  """An executable that answers the SetFit peer's protocol as SetFit's venv would, without SetFit: it checks the
  request and the offline environment, then predicts the majority training label for every test text."""
  script = tmp_path / "python"
  script.write_text(f"""#!{sys.executable}
import collections, json, os, sys
peer, request, answer = sys.argv[1:4]
assert peer.endswith("setfit_peer.py") and os.environ["HF_HUB_OFFLINE"] == "1", (peer, dict(os.environ))
req = json.load(open(request))
assert {{"model_dir", "train_texts", "train_labels", "test_texts", "steps", "batch_size", "max_len", "seed"}} <= set(req)
majority = collections.Counter(req["train_labels"]).most_common(1)[0][0]
chosen = {{"C": req["head_cs"][-1]}} if req.get("head_cs") else {{}}
assert not chosen or 2 <= req["folds"] <= len(req["train_labels"]), req
json.dump({{"predictions": [majority] * len(req["test_texts"]), **chosen}}, open(answer, "w"))
""")
  script.chmod(0o755)
  return str(script)


def test_setfit_peer_runs_offline_in_its_own_python(assets, tmp_path):
  """The protocol with SetFit's venv when SETFIT_PYTHON names it (README), else with a stand-in that answers it."""
  config = tiny_config(assets)
  python = os.environ.get("SETFIT_PYTHON") or _stand_in_python(tmp_path)
  config.experiment.update(dict(setfit_python=python, setfit_steps=4, setfit_batch_size=4))
  data = cls_data.load_data(config.data, seed=0)
  encoder = task.load_encoder(config.model, config.data.max_len)
  row = task.peers.run_peer("setfit", config, data, encoder, seed=0)
  assert row["method"] == "setfit" and row["steps"] == 4 and 0 <= row["accuracy"] <= 1
  assert "C" not in row["settings"]  # SetFit's own head: scikit-learn's C = 1
  # setfit-cv: the head's C from frozen-lr's grid, by frozen-lr's folds.
  row = task.peers.run_peer("setfit-cv", config, data, encoder, seed=0)
  assert row["method"] == "setfit-cv" and row["settings"]["C"] in config.experiment.lr_cs
  assert row["settings"]["folds"] == task.peers.cv_folds(np.asarray(data.labeled.labels))


def test_same_budget_on_the_trec_split():
  """TREC (109 of 5,452 labeled): 5 copies, 5,888 rows, 92 iterations per epoch; the baseline's 18 steps of 64 see
  each labeled example as often as GAN-BERT's 184 iterations (2 epochs) do."""
  config = _config_module().get_config()
  config.data.trec_dir = str(shared_path("data", "trec"))
  data = cls_data.load_data(config.data, seed=0)
  gan, base = task.plan(config, data, "ganbert"), task.plan(config, data, "baseline")
  assert (gan.replication, gan.n_train, gan.steps) == (5, 5888, 184)
  assert base.steps == 18 and base.labeled_passes == gan.labeled_passes == pytest.approx(10.0)
  assert base.steps * 64 >= gan.labeled_passes * 109 > (base.steps - 1) * 64
  # Issue 14: fine-tuning and the supervised-only ablation get GAN-BERT's 184 optimizer steps.
  assert task.plan(config, data, "finetune").steps == task.plan(config, data, "ganbert-sup-only").steps == 184


def test_batches_are_full_and_a_pure_function_of_the_step():
  n = 10
  enc = cls_data.Encoded(np.arange(n * 6).reshape(n, 6).astype(np.int32) % 50 + 5,
                     np.tile((np.arange(6) < 3).astype(np.int32), (n, 1)), np.arange(n, dtype=np.int32))
  batches = [cls_data.batch_at(enc, s, 4, seed=3, pad_multiple=2) for s in range(3)]
  assert all(b["labels"].shape == (4,) and b["input_ids"].shape == (4, 4) for b in batches)
  first_epoch = np.concatenate([b["labels"] for b in batches])[:n]
  assert sorted(first_epoch) == list(range(n))  # every row once; the last batch is topped up
  np.testing.assert_array_equal(cls_data.batch_at(enc, 1, 4, 3, 2)["labels"], batches[1]["labels"])
  assert not np.array_equal(cls_data.batch_at(enc, 3, 4, 3, 2)["labels"], batches[0]["labels"])  # a new permutation
  # The iterator resumes exactly from its saved state (what a checkpoint's meta records).
  it = cls_data.Batches(enc, 4, seed=3, pad_multiple=2)
  next(it), next(it)
  resumed = cls_data.Batches(enc, 4, seed=3, pad_multiple=2)
  resumed.restore(json.loads(json.dumps(it.state())))
  for _ in range(4):
    np.testing.assert_array_equal(next(resumed)["input_ids"], next(it)["input_ids"])


def test_classification_metrics_match_a_hand_count():
  labels = np.array([0, 0, 1, 1, 2, 2])
  preds = np.array([0, 1, 1, 1, 3, 2])
  m = classification_metrics(labels, preds)
  # F1: class 0 = 2/3, class 1 = 4/5, class 2 = 2/3, class 3 (predicted, never true) = 0.
  assert m["accuracy"] == pytest.approx(4 / 6)
  assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 2 / 3 + 0) / 4)


# ------------------------------------------------------------------------------------------------- bad inputs


def _one_line_error(config, workdir, match):
  with pytest.raises(InputError, match=match) as err:
    task.run(config, workdir)
  assert "\n" not in str(err.value)


def test_test_label_never_seen_in_training(assets, tmp_path):
  test = _write_csv(tmp_path / "test.csv", [("the team won", "sport"), ("a new song", "music")])
  _one_line_error(tiny_config(assets, test_file=str(test)), tmp_path / "w", "'music'.*not among the training labels")


def test_empty_labeled_set(assets, tmp_path):
  train = _write_csv(tmp_path / "train.csv", [("the team won", ""), ("bread and soup", "")])
  _one_line_error(tiny_config(assets, train_file=str(train)), tmp_path / "w", "no labeled rows")
  trec = tmp_path / "trec"
  trec.mkdir()
  for name in ("labeled", "unlabeled", "test"):
    (trec / f"{name}.tsv").write_text("fine_label utterance\n" + ("" if name == "labeled" else
                                                                  "UNK:UNK what is it ?\n" if name == "unlabeled"
                                                                  else "HUM:ind who is he ?\n"), encoding="utf-8")
  _one_line_error(tiny_config(assets, source="trec", trec_dir=str(trec)), tmp_path / "w2", "labeled set must not be")


def test_malformed_rows(assets, tmp_path):
  bad = tmp_path / "train.csv"
  bad.write_text("text,label\nthe team won,sport\nbread, soup and fish,food\n", encoding="utf-8")
  _one_line_error(tiny_config(assets, train_file=str(bad)), tmp_path / "w", "line 3 has 3 fields")
  trec = tmp_path / "trec"
  trec.mkdir()
  (trec / "labeled.tsv").write_text("fine_label utterance\nHUM:ind\n", encoding="utf-8")
  _one_line_error(tiny_config(assets, source="trec", trec_dir=str(trec)), tmp_path / "w2", "line 2 is malformed")


def test_encoder_directory_without_vocab(assets, tmp_path):
  broken = tmp_path / "bert"
  shutil.copytree(assets["encoder"], broken)
  (broken / "vocab.txt").unlink()
  config = tiny_config(assets)
  config.model.encoder_dir = str(broken)
  _one_line_error(config, tmp_path / "w", "has no vocab.txt")
  # Through the command line: one `error:` line and exit status 2.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "jaxtextgan.main", f"--config={REPO / 'configs' / 'ganbert.py'}",
                         f"--workdir={tmp_path / 'cli'}", "--config.data.source=files",
                         f"--config.data.train_file={assets['train']}", f"--config.data.test_file={assets['test']}",
                         f"--config.model.encoder_dir={broken}"], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error:") and "vocab.txt" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1


def test_predict_bad_inputs(tmp_path):
  err = io.StringIO()
  sys_stderr, sys.stderr = sys.stderr, err
  try:
    assert predict.main(["--workdir", str(tmp_path)], stdin=io.StringIO("some text\n")) == 2
    assert predict.main(["--workdir", str(tmp_path)], stdin=io.StringIO("\n  \n")) == 2
    assert predict.main(["--workdir", str(tmp_path), "--input", str(tmp_path / "missing.txt")]) == 2
  finally:
    sys.stderr = sys_stderr
  lines = err.getvalue().splitlines()
  assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
  assert "no trained classifier" in lines[0] and "no texts" in lines[1] and "does not exist" in lines[2]


def test_report_says_who_wins_and_when_it_is_partial():
  """The verdict names the best method and GAN-BERT's gap to it; a report of fewer runs than planned says so."""
  from jaxtextgan.reports import ganbert as report
  config = _config_module().get_config("trec_experiment")
  config.experiment.methods = ("ganbert", "finetune")
  rows = [{"method": m, "seed": s, "data": "d", "n_labeled": 10, "accuracy": acc + 0.01 * s, "macro_f1": acc / 2,
           "wall_seconds": 1.0, "steps": 5} for m, acc in (("ganbert", 0.40), ("finetune", 0.50)) for s in (0, 1)]
  text = report.render(config, rows, report.summarize(rows), "cmd")
  assert "Partial: 4 of the 6 planned runs" in text
  # A finished run of a method this invocation does not list (kept in runs.jsonl) is not one of the planned runs.
  other = dict(rows[0], method="frozen-lr")
  assert "Partial: 4 of the 6 planned runs" in report.render(config, rows + [other], report.summarize(rows), "cmd")
  assert ("best accuracy: fine-tune (labeled only, GAN-BERT's steps) (0.5050); GAN-BERT is 10.0 points below it"
          in text)
  config.experiment.seeds = (0, 1)
  assert "Partial" not in report.render(config, rows, report.summarize(rows), "cmd")
