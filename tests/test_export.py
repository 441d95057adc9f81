"""Export to Hugging Face format: tiny GAN (with its LM pre-training) and GAN-BERT runs of the real CLI, exported
and loaded by transformers.

Parity (fp32, <= 1e-4): GPT2LMHeadModel's logits against ours from scanned and unrolled checkpoints, G's logits
with its z input, and the exported GAN-BERT head's probabilities against `jaxtextgan.predict`. Round trip:
`load_gpt2(export(x))` is x. Bad input and the Gopher options give one `error:` line.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from cli_helpers import REPO, corpus
from jaxtextgan import checkpoint, export, predict
from jaxtextgan import tokenizers as tok
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2, hf_bert, hf_gpt2
from jaxtextgan.models import generator as gen_lib

torch = pytest.importorskip("torch", reason="torch is a test extra: pip install -e .[test]")
transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e .[test]")

TOPICS = {"sport": ["the team won the match", "a goal in the final minute"],
          "tech": ["the phone has a new chip", "software update for the phone"],
          "food": ["the soup needs more salt", "bread and soup for dinner"]}
TEXT = "the cat sat on the mat\na dog ran in the zoo"


def write_tiny_bert(path: pathlib.Path, words, d=16, heads=2, ff=24, max_pos=24) -> pathlib.Path:
  """A random one-layer BERT in Hugging Face layout, with pooler."""
  path.mkdir(parents=True)
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
  (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
  (path / "config.json").write_text(json.dumps(dict(
    model_type="bert", vocab_size=len(vocab), hidden_size=d, num_hidden_layers=1, num_attention_heads=heads,
    intermediate_size=ff, max_position_embeddings=max_pos, type_vocab_size=2, hidden_act="gelu")))
  rng = np.random.default_rng(0)
  normal = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float32)
  w = {"embeddings.word_embeddings.weight": normal(len(vocab), d), "embeddings.position_embeddings.weight":
       normal(max_pos, d), "embeddings.token_type_embeddings.weight": normal(2, d),
       "embeddings.LayerNorm.weight": 1 + normal(d), "embeddings.LayerNorm.bias": normal(d),
       "pooler.dense.weight": normal(d, d), "pooler.dense.bias": normal(d)}
  p = "encoder.layer.0."
  for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
    w[p + name + ".weight"], w[p + name + ".bias"] = normal(d, d), normal(d)
  w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"] = normal(ff, d), normal(ff)
  w[p + "output.dense.weight"], w[p + "output.dense.bias"] = normal(d, ff), normal(d)
  for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
    w[p + norm + ".weight"], w[p + norm + ".bias"] = 1 + normal(d), normal(d)
  save_file(w, str(path / "model.safetensors"))
  return path


def _flags(values: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in values.items()]


class Runs:
  """Tiny runs through `python -m jaxtextgan.main`, started together; `run(name)` waits for one and fails the
  test that needs it (only that test) if it failed."""

  def __init__(self, root: pathlib.Path, commands: dict):
    self.root = root
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    self.procs = {name: subprocess.Popen([sys.executable, "-m", "jaxtextgan.main", f"--config=configs/{config}.py",
                                          f"--workdir={root / name}", *flags], cwd=REPO, env=env, text=True,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                  for name, (config, flags) in commands.items()}
    self.errors = {}

  def __call__(self, name: str) -> pathlib.Path:
    proc = self.procs[name]
    if proc.returncode is None:
      self.errors[name] = proc.communicate(timeout=600)[1]
    assert proc.returncode == 0, f"the {name} run failed:\n{self.errors[name][-3000:]}"
    return self.root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """GAN (G unrolled and untied; 2 MLE steps, whose pretrain/ sub-run is an LM workdir, then 1 GAN step; word
  level) and GAN-BERT (2 steps). Large learning rates move the weights the checks depend on (G's z projection, D)
  well off their initial values."""
  tmp = tmp_path_factory.mktemp("export_runs")
  files = corpus(tmp)
  gan = _flags({"data.source": "text", "data.train_file": files["train"], "data.valid_file": files["valid"],
                "data.test_file": files["test"], "data.seq_len": 8, "data.batch_size": 4, "model.n_layer": 2,
                "model.d_model": 16, "model.n_head": 2, "model.d_ff": 32, "model.max_len": 16,
                "model.scan_layers": False, "model.tie_embeddings": False, "generator.length": 6,
                "generator.latent_dim": 4, "discriminator.filters": 4, "discriminator.widths": "(2,)",
                "pretrain.steps": 2, "pretrain.checkpoint_every": 2, "gan.steps": 1, "gan.batch_size": 4,
                "gan.d_warmup_steps": 0, "gan.checkpoint_every": 1, "gan.fast_compile": True, "g_optimizer.lr": 0.3,
                "eval.batch_size": 4, "eval.nll_test": False, "sample.num": 2})
  words = [w for texts in TOPICS.values() for t in texts for w in t.split()]
  encoder = write_tiny_bert(tmp / "tiny_bert", words)
  rows = [(t, y) for y, texts in TOPICS.items() for t in texts]
  (tmp / "train.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows) + "\n")
  ganbert = _flags({"data.source": "files", "data.train_file": tmp / "train.csv", "data.test_file": tmp / "train.csv",
                    "data.max_len": 12, "data.batch_size": 4, "model.encoder_dir": encoder, "train.steps": 4,
                    "train.epochs": 0.0, "train.tensorboard": False, "train.fast_compile": True,
                    "optimizer.lr": 0.1, "eval.batch_size": 4})
  runs = Runs(tmp, {"gan": ("gan", gan), "ganbert": ("ganbert", ganbert)})
  yield runs
  for proc in runs.procs.values():
    if proc.returncode is None:
      proc.kill()
      proc.communicate()


@pytest.fixture(scope="module")
def scanned_lm(runs):
  """An LM workdir in the other layout (scanned layers, tied embeddings), saved as a training run saves one: the
  GAN's MLE checkpoint through `gpt2.stack_layers`, without its output layer (tied to wte), written by
  `checkpoint.Checkpointer` beside a copy of the run's tokenizer."""
  src, workdir = runs("gan"), runs.root / "scanned_lm"
  meta, step = checkpoint.read_meta(src / "pretrain" / "checkpoints")
  cfg = gpt2.GPT2Config(**{**meta["model"], "scan_layers": True, "tie_embeddings": True})
  params = gpt2.stack_layers(saved_params(src / "pretrain" / "checkpoints", "params"), cfg.n_layer)
  del params["lm_head"]
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", async_save=False)
  ckpt.save(step, {"step": np.int32(step), "params": nnx.state(our_model(cfg, params), nnx.Param)},
            {**meta, "model": dataclasses.asdict(cfg)})
  ckpt.close()
  shutil.copytree(src / "tokenizer", workdir / "tokenizer")
  return workdir


def saved_params(ckpt_dir: pathlib.Path, *path) -> dict:
  """Params of a checkpoint's newest step read without any target (independent of export.restore_params)."""
  step = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  tree = ocp.StandardCheckpointer().restore(ckpt_dir / str(step) / "state")
  for key in path:
    tree = tree[key]
  unwrap = lambda t: (np.asarray(t["value"]) if isinstance(t, dict) and set(t) == {"value"} else
                      {k: unwrap(v) for k, v in t.items()} if isinstance(t, dict) else np.asarray(t))
  return unwrap(tree)


def our_model(cfg: gpt2.GPT2Config, params: dict) -> gpt2.GPT2:
  graphdef, state = nnx.split(nnx.eval_shape(lambda: gpt2.GPT2(cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def assert_same_tree(a: dict, b: dict) -> None:
  flat = lambda t: {jax.tree_util.keystr(p).replace("'", ""): np.asarray(v) for p, v in
                    jax.tree_util.tree_flatten_with_path(t)[0]}
  a, b = flat(a), flat(b)
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def hf_logits(out: pathlib.Path, **inputs) -> np.ndarray:
  model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  with torch.no_grad():
    return model(**{k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items()}).logits.numpy()


@pytest.mark.parametrize("scanned", [False, True])
def test_lm_logits_tokenizer_and_round_trip(runs, scanned_lm, tmp_path, scanned):
  """Unrolled layers, untied output (the GAN's MLE pre-training: an LM workdir whose tokenizer is its parent
  run's); scanned layers, tied (`scanned_lm`)."""
  workdir = scanned_lm if scanned else runs("gan") / "pretrain"
  out = tmp_path / "hf"
  summary = export.export(workdir, out)
  assert summary["kind"] == "lm" and {"config.json", "model.safetensors", "tokenizer.json"} <= set(summary["files"])
  cfg = gpt2.GPT2Config(**checkpoint.read_meta(workdir / "checkpoints")[0]["model"])
  assert cfg.scan_layers == cfg.tie_embeddings == scanned
  params = saved_params(workdir / "checkpoints", "params")

  ids = np.random.RandomState(0).randint(0, cfg.vocab_size, size=(2, cfg.max_len))
  ours, theirs = np.asarray(our_model(cfg, params)(ids)), hf_logits(out, input_ids=ids)
  assert np.max(np.abs(ours - theirs)) <= 1e-4

  model, back_cfg = hf_gpt2.load_gpt2(out)
  assert back_cfg == cfg
  assert_same_tree(nnx.to_pure_dict(nnx.state(model, nnx.Param)), params)

  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  ours_tok = tok.load_tokenizer(runs("gan") / "tokenizer")
  assert hf_tok(TEXT)["input_ids"] == ours_tok.encode(TEXT) and hf_tok.eos_token_id == ours_tok.eos_id
  assert tok.load_tokenizer(out).spec == ours_tok.spec


def test_gan_generator_with_its_z_input(runs, tmp_path):
  workdir, out = runs("gan"), tmp_path / "hf"
  assert export.export(workdir, out)["kind"] == "gan"
  meta = json.loads(next((workdir / "checkpoints").glob("*/meta/metadata")).read_text())
  cfg, g_meta = gpt2.GPT2Config(**meta["model"]), meta["generator"]
  g_params = saved_params(workdir / "checkpoints", "g", "params")
  model, back_cfg = hf_gpt2.load_gpt2(out)
  assert back_cfg == cfg
  assert_same_tree(nnx.to_pure_dict(nnx.state(model, nnx.Param)), g_params["lm"])

  latent = load_file(str(out / "generator_latent.safetensors"))["latent.weight"]
  np.testing.assert_array_equal(latent, g_params["latent"]["kernel"].T)
  assert np.abs(latent).max() > 0.1  # one GAN step at lr 0.3 moved W off its zero init, so z matters here

  # G's own draws: at each step its logits are the exported LM's on [wte[bos] + latent.weight @ z, y_1, ...].
  gen_cfg = gen_lib.GeneratorConfig(**{**g_meta, "forbidden_ids": (), "mlp_hidden": ()})
  graphdef, state = nnx.split(nnx.eval_shape(lambda: gen_lib.GPT2Generator(gen_cfg, cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, g_params))
  z = np.random.RandomState(2).normal(size=(3, gen_cfg.latent_dim)).astype(np.float32)
  _, ids, g_logits = nnx.merge(graphdef, state)(jnp.asarray(z), jax.random.key(0), 1.0)
  wte = load_file(str(out / "model.safetensors"))["transformer.wte.weight"]
  first = wte[gen_cfg.bos_id] + z @ latent.T
  embeds = np.concatenate([first[:, None], wte[np.asarray(ids)[:, :-1]]], axis=1)
  assert np.max(np.abs(hf_logits(out, inputs_embeds=embeds) - np.asarray(g_logits))) <= 1e-4
  hf_cfg = json.loads((out / "config.json").read_text())
  assert hf_cfg["bos_token_id"] == gen_cfg.bos_id and hf_cfg["jaxtextgan"]["generator"]["latent_dim"] == 4

  mlp_run = edited_copy(workdir, tmp_path / "mlp", **{"generator.kind": "mlp"})
  with pytest.raises(InputError, match="MLP generator"):
    export.export(mlp_run, tmp_path / "mlp_out")


def test_ganbert_probabilities_match_predict(runs, tmp_path):
  workdir, out = runs("ganbert"), tmp_path / "hf"
  summary = export.export(workdir, out)
  assert summary["kind"] == "ganbert"
  assert {"config.json", "model.safetensors", "vocab.txt", "head.safetensors", "ganbert_head.py"} <= set(
    summary["files"])
  texts = ["the team won the final", "more salt for the soup please", "a new phone chip", "zebra"]
  classifier = predict.load_classifier(workdir)
  ours = predict.classify(classifier, texts, batch_size=4)
  assert np.ptp(ours) > 0.1  # four steps at lr 0.1 moved D off its near-uniform start, so the check has teeth

  spec = importlib.util.spec_from_file_location("ganbert_head_export", out / "ganbert_head.py")
  head_module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(head_module)
  theirs = head_module.load(out)
  assert theirs.label_names == list(classifier.label_names) == ["food", "sport", "tech"]
  assert np.max(np.abs(theirs(texts) - ours)) <= 1e-4
  hf_ids = theirs.tokenizer(texts, truncation=True, max_length=classifier.max_len)["input_ids"]
  our_ids, mask = classifier.tokenizer.encode_batch(texts, classifier.max_len)
  assert hf_ids == [list(row[m.astype(bool)]) for row, m in zip(our_ids, mask)]

  encoder, _, _ = hf_bert.load_bert(out)  # the exported encoder loads back as the classifier's
  assert_same_tree(nnx.to_pure_dict(nnx.state(encoder, nnx.Param)), saved_params(workdir / "classifier",
                                                                                    "params", "encoder"))


def test_byte_level_bpe_tokenizer_files(tmp_path):
  """tokenizer.json for AutoTokenizer, and vocab.json + merges.txt for GPT2Tokenizer, give our ids."""
  ours = tok.train_bpe(300, texts=[pathlib.Path(corpus(tmp_path)["train"]).read_text()])
  export.write_tokenizer(tmp_path / "hf", ours, max_len=16)
  auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  slow = transformers.GPT2Tokenizer(str(tmp_path / "hf" / "vocab.json"), str(tmp_path / "hf" / "merges.txt"))
  assert auto(TEXT)["input_ids"] == slow(TEXT)["input_ids"] == ours.encode(TEXT)
  assert auto.eos_token == "<|endoftext|>" and auto.decode(ours.encode(TEXT)) == TEXT


def test_tokenizer_lookup(tmp_path):
  assert export.checkpoint_tokenizer(tmp_path, "trigram:v20:l8:s0") is None  # ids of the oracle, not text
  with pytest.raises(InputError, match="is not in"):
    export.checkpoint_tokenizer(tmp_path, "word:12:c00505aa5217d641")


def edited_copy(src: pathlib.Path, dest: pathlib.Path, **meta_changes) -> pathlib.Path:
  """A copy of a run's checkpoints (and tokenizer) whose newest meta is changed: {'model.norm': 'rmsnorm'}."""
  shutil.copytree(src / "checkpoints", dest / "checkpoints")
  tokenizer = next(d for d in (src / "tokenizer", src.parent / "tokenizer") if d.is_dir())
  shutil.copytree(tokenizer, dest / "tokenizer")
  meta_path = next((dest / "checkpoints").glob("*/meta/metadata"))
  meta = json.loads(meta_path.read_text())
  for dotted, value in meta_changes.items():
    *parents, last = dotted.split(".")
    node = meta
    for key in parents:
      node = node[key]
    node[last] = value
  meta_path.write_text(json.dumps(meta))
  return dest


def one_line_error(capsys, argv) -> str:
  assert export.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_gopher_options_are_refused(runs, tmp_path, capsys):
  for i, change in enumerate(({"model.norm": "rmsnorm"}, {"model.position": "relative"})):
    workdir = edited_copy(runs("gan") / "pretrain", tmp_path / f"gopher{i}", **change)
    err = one_line_error(capsys, [f"--workdir={workdir}", f"--out={tmp_path / f'out{i}'}"])
    assert list(change.values())[0] in err and "no equivalent" in err
    assert not (tmp_path / f"out{i}").exists() and not list(tmp_path.glob(".*export-tmp"))
  with pytest.raises(InputError, match="rmsnorm"):
    hf_gpt2.config_to_hf(gpt2.preset("tiny", norm="rmsnorm"))


def test_bad_inputs_give_one_line(runs, tmp_path, capsys):
  out = str(tmp_path / "out")
  (tmp_path / "empty").mkdir()
  lm = runs("gan") / "pretrain"
  cases = {
    "does not exist": tmp_path / "nope",
    "no checkpoint in": tmp_path / "empty",
    "objective 'dfine_disc'": edited_copy(lm, tmp_path / "disc", objective="dfine_disc"),
    "does not hold the model its meta records": edited_copy(lm, tmp_path / "other", **{"model.d_ff": 64}),
  }
  for expected, workdir in cases.items():
    assert expected in one_line_error(capsys, [f"--workdir={workdir}", f"--out={out}"])
  # An existing non-empty --out is left alone without --force, and replaced with it.
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "notes.txt").write_text("keep me")
  assert "--force" in one_line_error(capsys, [f"--workdir={lm}", f"--out={taken}"])
  assert (taken / "notes.txt").read_text() == "keep me"
  assert export.main([f"--workdir={lm}", f"--out={taken}", "--force"]) == 0
  assert "GPT2LMHeadModel" in capsys.readouterr().out
  assert not (taken / "notes.txt").exists() and (taken / "model.safetensors").is_file()
  err = one_line_error(capsys, [f"--workdir={lm}", f"--out={runs.root}", "--force"])
  assert "contains the workdir" in err
  assert (runs("gan") / "checkpoints").is_dir()

  # The command line itself: exit status 2 and one `error:` line.
  proc = subprocess.run([sys.executable, "-m", "jaxtextgan.export", f"--workdir={tmp_path / 'empty'}",
                         f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
    f"error: no checkpoint in {tmp_path / 'empty' / 'checkpoints'}: train the run first"], proc.stderr
