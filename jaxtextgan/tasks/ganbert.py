"""`objective='ganbert'`: GAN-BERT semi-supervised classification against what a user would pick instead (seed
paper, sec. 3-4; issue 14).

`config.mode`:
* 'train': one model (`config.method`, one of TRAINED) on the configured data; resumable from
  `<workdir>/checkpoints`; evaluates on the test split, writes results.json, and exports the classifier (encoder +
  D, without G) to `<workdir>/classifier` for `python -m jaxtextgan.predict --workdir=<workdir>`.
* 'experiment': labeled fractions x seeds x methods (METHODS), the same splits and seeds for every method; writes
  `config.experiment.report` and a figure (`reports.ganbert`). Finished runs are kept in `<workdir>/runs.jsonl`,
  so an interrupted experiment continues where it stopped.

Methods. GAN-BERT trains T steps on batches of B rows drawn from N = R n_L + n_U rows (labeled rows replicated
R = log2(1/labeled_fraction) times, release: `gan_bert_replication`), T = train.steps or train.epochs * N / B.
* 'ganbert': `d_step` then `g_step` per iteration.
* 'finetune': the same encoder and a k-way head on the n_L labeled rows alone (repeated to fill batches) for the
  same T optimizer steps and the same schedule.
* 'ganbert-sup-only': the ablation: GAN-BERT's own batches and T steps, on the supervised term L_D,sup alone.
* 'baseline': the release's protocol: as many passes over each labeled row as GAN-BERT, ceil(R n_L T / N) steps.
* 'frozen-lr': mean-pooled frozen-encoder vectors and scikit-learn's logistic regression, C by k-fold CV on the
  labeled rows.
* 'setfit': SetFit on the same encoder directory, run by `benchmarks/setfit_peer.py` in its own Python
  (`experiment.setfit_python`), since it needs transformers 5.
Nothing is chosen on the test set: lr, schedule and steps are fixed in the config, C on the labeled rows.

Each trained run is one Stage (`ganbert_stage`) trained by `stage.run_stage`; `dry_run_stages` gives `--dry_run`
the same Stages.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import time
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from jaxtextgan import checkpoint, predict, stage, training, writers
from jaxtextgan.data import classification as cls_data
from jaxtextgan.errors import InputError, Preempted
from jaxtextgan.metrics import classification_metrics
from jaxtextgan.models import bert, classifier, hf_bert
from jaxtextgan.objectives import ganbert
from jaxtextgan.reports import ganbert as report
from jaxtextgan.tasks import common, ganbert_contrastive, ganbert_peers as peers

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
TRAINED = ("ganbert", "finetune", "ganbert-sup-only", "baseline")  # trained as one Stage each
SETFIT = ("setfit", "setfit-cv")  # run in SetFit's own venv
METHODS = TRAINED + ("frozen-lr",) + SETFIT + ganbert_contrastive.METHODS


# ------------------------------------------------------------------------------------------------------ encoder


@dataclasses.dataclass
class EncoderBundle:
  directory: pathlib.Path
  params: Any  # nnx.State of the encoder's Params
  tokenizer: hf_bert.WordPieceTokenizer
  config: bert.BertConfig


def _encoder_source(model_cfg) -> tuple[pathlib.Path, float | None]:
  """(model.encoder_dir, '' = the bundled MiniLM; the dropout override, None = the checkpoint's)."""
  directory = pathlib.Path(model_cfg.encoder_dir) if model_cfg.encoder_dir else hf_bert.default_encoder_dir()
  return directory, (model_cfg.encoder_dropout if model_cfg.encoder_dropout >= 0 else None)


def load_encoder(model_cfg, max_len: int) -> EncoderBundle:
  """The pretrained BERT of model.encoder_dir, with the configured dropout."""
  directory, dropout = _encoder_source(model_cfg)
  encoder, tokenizer, bert_cfg = hf_bert.load_bert(directory, max_len=max_len, dropout=dropout)
  return EncoderBundle(directory, nnx.state(encoder, nnx.Param), tokenizer, bert_cfg)


def encoder_config(model_cfg, max_len: int) -> bert.BertConfig:
  """The BertConfig `load_encoder` would build, without reading weights (dry runs)."""
  directory, dropout = _encoder_source(model_cfg)
  return classifier.encoder_config(directory, max_len, dropout)


def model_config(model_cfg, num_classes: int, method: str) -> ganbert.GanBertConfig:
  """GAN-BERT's model for 'ganbert', the k-way classifier (objective 'baseline') for the other TRAINED methods."""
  return ganbert.GanBertConfig(num_classes=num_classes, method="ganbert" if method == "ganbert" else "baseline",
                               freeze_layers=model_cfg.get("freeze_layers", 0), latent_dim=model_cfg.latent_dim,
                               d_hidden=model_cfg.d_hidden, g_hidden=model_cfg.g_hidden, dropout=model_cfg.dropout,
                               pooling=model_cfg.pooling, epsilon=model_cfg.epsilon,
                               feature_matching=model_cfg.feature_matching, noise=model_cfg.noise)


def with_encoder(state: ganbert.GanBertState, encoder_params) -> ganbert.GanBertState:
  """`state` with the classifier's encoder set to the pre-trained `encoder_params`, placed like the arrays they
  replace (`training.place_like`); AdamW's moments are zeros whatever the weights, so nothing else changes."""
  model = nnx.merge(state.d.graphdef, state.d.params)
  nnx.update(model.encoder, training.place_like(encoder_params, nnx.state(model.encoder, nnx.Param)))
  return state.replace(d=state.d.replace(params=nnx.state(model, nnx.Param)))


# -------------------------------------------------------------------------------------------------------- plan


@dataclasses.dataclass
class Plan:
  """How long one run trains: iterations, and the numbers that define the shared budget."""
  steps: int
  n_train: int
  n_labeled: int
  replication: int
  labeled_passes: float


def plan(config, data: cls_data.ClassificationData, method: str) -> Plan:
  """GAN-BERT, 'finetune' and 'ganbert-sup-only': train.steps, or train.epochs over GAN-BERT's replicated training
  set; 'baseline': the same number of passes over each labeled example (module docstring)."""
  batch = config.data.batch_size
  replication = cls_data.gan_bert_replication(data.labeled_fraction)
  n_gan = replication * len(data.labeled) + len(data.unlabeled)
  if config.train.steps > 0:
    gan_steps = config.train.steps
  elif config.train.epochs > 0:
    gan_steps = max(1, math.ceil(config.train.epochs * math.ceil(n_gan / batch)))
  else:
    raise InputError("train.steps and train.epochs are both 0: set one of them (e.g. --config.train.epochs=2)")
  passes = replication * gan_steps * batch / n_gan
  if method in ("ganbert", "ganbert-sup-only"):
    return Plan(gan_steps, n_gan, len(data.labeled), replication, passes)
  if method == "finetune":
    return Plan(gan_steps, len(data.labeled), len(data.labeled), replication, gan_steps * batch / len(data.labeled))
  steps = max(1, math.ceil(replication * len(data.labeled) * gan_steps / n_gan))
  return Plan(steps, len(data.labeled), len(data.labeled), replication, passes)


def optimizer_config(opt_cfg, steps: int) -> dict:
  return dict(lr=opt_cfg.lr, total_steps=steps, warmup_steps=int(opt_cfg.warmup_proportion * steps),
              end_lr_fraction=0.0, schedule="linear", b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
              weight_decay=opt_cfg.weight_decay, grad_clip_norm=opt_cfg.grad_clip_norm,
              head_lr=opt_cfg.get("head_lr", 0.0))


# ------------------------------------------------------------------------------------------------------- stage


@functools.lru_cache(maxsize=16)
def _functions(bert_cfg: bert.BertConfig, cfg: ganbert.GanBertConfig, d_opt: tuple, g_opt: tuple | None, mesh):
  """(initialiser, steps of one iteration): one object per setting, so runs that differ only in seed or data
  (same shapes and schedule) hit `training.jit_step`'s memo and compile once per process."""
  make_state = ganbert.make_state_fn(bert_cfg, cfg, dict(d_opt), dict(g_opt) if g_opt else None)
  d_step, g_step, sup_step, _ = ganbert.make_steps(cfg, mesh)
  return make_state, ((d_step, g_step) if cfg.method == "ganbert" else (sup_step,))


def ganbert_stage(config, bert_cfg: bert.BertConfig, cfg: ganbert.GanBertConfig, mesh, *, num_steps: int, seed: int,
                  **options) -> stage.Stage:
  """GAN-BERT's `d_step` then `g_step` (or the baseline's `sup_step`) on global batches of data.batch_size rows of
  at most data.max_len tokens; AdamW with linear warm-up and decay over `num_steps` (G: optimizer.g_lr).
  `options` are further Stage fields (batches, directory, meta, start, evaluate, writer...)."""
  opt = optimizer_config(config.optimizer, num_steps)
  g_opt = dict(opt, lr=config.optimizer.g_lr or opt["lr"]) if cfg.method == "ganbert" else None
  make_state, steps = _functions(bert_cfg, cfg, tuple(sorted(opt.items())),
                                 tuple(sorted(g_opt.items())) if g_opt else None, mesh)
  b, t = config.data.batch_size, config.data.max_len
  batch_spec = stage.int_batch(input_ids=(b, t), attention_mask=(b, t), labels=(b,))
  if caches_frozen(config, cfg):
    whole = cfg.freeze_layers == bert_cfg.num_hidden_layers
    batch_spec["frozen"] = jax.ShapeDtypeStruct((b, bert_cfg.hidden_size) if whole else (b, t, bert_cfg.hidden_size),
                                                np.float32)
  return stage.Stage(
    name=options.pop("name", cfg.method), init=make_state, steps=steps, num_steps=num_steps, seed=seed, rng_seed=seed + 1,
    batch_spec=batch_spec,
    log_every=config.train.log_every, keep=config.train.keep_checkpoints,
    compiler_options=training.FAST_COMPILE if config.train.fast_compile else None, **options)


def caches_frozen(config, cfg: ganbert.GanBertConfig) -> bool:
  """Whether the frozen bottom's output is computed once and cached (model.cache_frozen, with freeze_layers > 0)."""
  return bool(cfg.freeze_layers and config.model.get("cache_frozen", True))


def with_frozen_features(enc: cls_data.Encoded, encoder: EncoderBundle, cfg: ganbert.GanBertConfig,
                         batch_size: int) -> cls_data.Encoded:
  """`enc` with `frozen` set: the frozen bottom's output for every row, without dropout, from the pre-trained
  weights, which the frozen layers keep throughout training; computed once instead of in every step (on each
  process, for all rows)."""
  model = ganbert.make_classifier(encoder.config, cfg, nnx.Rngs(0))
  nnx.update(model.encoder, encoder.params)
  graphdef, params = nnx.split(model)
  features = jax.jit(lambda p, ids, mask: nnx.merge(graphdef, p).frozen_features(ids, mask, cfg.freeze_layers))
  parts = [np.asarray(features(params, enc.input_ids[i:i + batch_size], enc.attention_mask[i:i + batch_size]))
           for i in range(0, len(enc), batch_size)]
  return dataclasses.replace(enc, frozen=np.concatenate(parts))


def dry_run_stages(config, mesh) -> list[stage.Stage]:
  """The Stages `run` trains (each method of an experiment, or config.method), for `--dry_run`: the encoder's
  config comes from its config.json and k from the data config, so no weights or texts are read; batches are
  data.max_len tokens wide (the widest a batch is cut to). The step count, unknown before the data is read, only
  shapes the learning-rate schedule."""
  check_config(config)
  bert_cfg = encoder_config(config.model, config.data.max_len)
  k = cls_data.num_classes(config.data)
  methods = tuple(config.experiment.methods) if config.mode == "experiment" else (config.method,)
  kinds = {}  # each model kind a method trains -> the first method that trains it (contrastive-ganbert: GAN-BERT's)
  for m in methods:
    kinds.setdefault("ganbert" if m == "contrastive-ganbert" else m, m)
  stages = [ganbert_stage(config, bert_cfg, model_config(config.model, k, kind), mesh, name=name,
                          num_steps=max(int(config.train.steps), 1), seed=config.seed, batches=None, directory=None)
            for kind, name in kinds.items() if kind in TRAINED]
  contrastive = any(m in ganbert_contrastive.METHODS for m in methods)
  return ([ganbert_contrastive.dry_run_stage(config, bert_cfg, mesh)] if contrastive else []) + stages


def train_and_evaluate(config, data: cls_data.ClassificationData, encoder: EncoderBundle, *, method: str,
                       seed: int, workdir: pathlib.Path, mesh, resume: bool = False,
                       show_progress: bool = True) -> tuple[dict, ganbert.GanBertState, ganbert.GanBertConfig]:
  """Trains one model (`stage.run_stage`) and evaluates it on data.test: (result, final state, model config).

  With `resume`, checkpoints and done.json go to `workdir`, and a finished workdir is not trained again.
  """
  t0 = time.perf_counter()
  load_start = os.getloadavg()[0]
  cfg = model_config(config.model, data.num_classes, method)
  p = plan(config, data, method)
  max_len, pad_multiple = config.data.max_len, config.data.pad_multiple
  examples = cls_data.training_examples(data, "ganbert" if method == "ganbert-sup-only" else method)
  train_enc = cls_data.encode_examples(examples, encoder.tokenizer, max_len)
  test_enc = cls_data.encode_examples(data.test, encoder.tokenizer, max_len)
  if caches_frozen(config, cfg):
    train_enc = with_frozen_features(train_enc, encoder, cfg, config.eval.batch_size)

  def evaluate(state) -> dict:
    predict_fn = predict.predict_fn(state.d.graphdef, cfg.num_classes, mesh)
    probs = predict.predict_probabilities(predict_fn, state.d.params, test_enc, config.eval.batch_size, mesh,
                                          pad_multiple)
    return {"test": classification_metrics(test_enc.labels, probs.argmax(-1))}

  workdir.mkdir(parents=True, exist_ok=True)
  writer = writers.MetricWriter(workdir, tensorboard=config.train.tensorboard)
  st = ganbert_stage(
    config, encoder.config, cfg, mesh, num_steps=p.steps, seed=seed,
    batches=lambda: cls_data.Batches(train_enc, config.data.batch_size, seed, pad_multiple),
    directory=workdir if resume else None, checkpoint_every=config.train.checkpoint_every if resume else 0,
    meta={"method": method, "label_names": list(data.label_names), "seed": seed,
          **({"cache_frozen": cfg.freeze_layers} if caches_frozen(config, cfg) else {})},
    start=lambda state: with_encoder(state, encoder.params), evaluate=evaluate, writer=writer,
    show_progress=show_progress)
  try:
    result = stage.run_stage(st, mesh)
  finally:
    writer.close()
  done = result.done
  out: dict[str, Any] = {"method": method, "seed": seed, "data": data.name, "n_labeled": len(data.labeled),
                         "n_unlabeled": len(data.unlabeled) if method in ("ganbert", "ganbert-sup-only") else 0,
                         "labeled_fraction": data.labeled_fraction, "replication": p.replication,
                         "steps": p.steps, "labeled_passes": p.labeled_passes, "step": done["step"],
                         "preempted": False, "train": done["train"]}
  out.update(done["eval"]["test"], wall_seconds=time.perf_counter() - t0, load_start=load_start,
             load_end=os.getloadavg()[0])
  if method == "ganbert":
    out["adversarial"] = adversarial_curve(workdir / "metrics.jsonl")
  return out, result.state, cfg


def run_contrastive(method: str, config, data: cls_data.ClassificationData, encoder: EncoderBundle, *, seed: int,
                    mesh, stage_dir: pathlib.Path, workdir: pathlib.Path, show_progress: bool = True) -> dict:
  """'contrastive-lr' or 'contrastive-ganbert' (`tasks.ganbert_contrastive`): the contrastive Stage in `stage_dir`
  (shared by both methods of one split and seed), then frozen-lr or GAN-BERT on its encoder. The row's
  wall_seconds include the Stage's own time, which a user running only this method would spend."""
  tuned, stage_seconds = ganbert_contrastive.contrastive_encoder(config, data, encoder, seed=seed,
                                                                 directory=stage_dir, mesh=mesh,
                                                                 show_progress=show_progress)
  if method == "contrastive-lr":
    result = peers.run_peer("frozen-lr", config, data, tuned, seed=seed)
    result["steps"] = int(config.experiment.contrastive_steps)
  else:
    result, _, _ = train_and_evaluate(config, data, tuned, method="ganbert", seed=seed, workdir=workdir, mesh=mesh,
                                      show_progress=show_progress)
  result.update(method=method, contrastive_steps=int(config.experiment.contrastive_steps),
                contrastive_seconds=stage_seconds, wall_seconds=result["wall_seconds"] + stage_seconds)
  return result


def adversarial_curve(path: pathlib.Path) -> list[list[float]]:
  """[[step, D's mean p(fake) on real rows, on G(z), L_G,fm, L_D,sup]] of every logged training step."""
  keys = ("p_fake_real", "p_fake_fake", "g_feature_matching", "d_sup")
  rows = writers.read_metrics(path) if path.is_file() else []
  return [[r["step"], *(float(r[k]) for k in keys)] for r in rows
          if r.get("split") == "train" and all(k in r for k in keys)]


def export_classifier(workdir: pathlib.Path, state: ganbert.GanBertState, cfg: ganbert.GanBertConfig,
                      encoder: EncoderBundle, data: cls_data.ClassificationData, config) -> pathlib.Path:
  """Saves encoder + D params (Orbax; not G) and JSON meta (labels, encoder, configs) to <workdir>/classifier, and
  the tokenizer files to <workdir>/classifier_assets, so prediction needs nothing but the workdir."""
  assets = workdir / predict.ASSETS
  if jax.process_index() == 0:
    assets.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
      if (encoder.directory / name).is_file():
        shutil.copyfile(encoder.directory / name, assets / name)
  meta = {"label_names": list(data.label_names), "encoder_dir": str(encoder.directory),
          "bert_config": dataclasses.asdict(encoder.config), "model": dataclasses.asdict(cfg),
          "max_len": int(config.data.max_len), "pad_multiple": int(config.data.pad_multiple),
          "data": data.name, "config": json.loads(config.to_json_best_effort())}
  ckpt = checkpoint.Checkpointer(workdir / "classifier", keep=1, async_save=False)
  step = int(jax.device_get(state.step))
  if step in ckpt.steps:  # a re-run of a finished workdir re-exports the same step
    shutil.rmtree(workdir / "classifier" / str(step))
    ckpt.close()
    ckpt = checkpoint.Checkpointer(workdir / "classifier", keep=1, async_save=False)
  ckpt.save(step, {"params": state.d.params}, meta)
  ckpt.close()
  return workdir / "classifier"


def check_config(config) -> None:
  """Fails fast on options that would otherwise fail after the encoder is loaded."""
  if config.get("mode") not in ("train", "experiment"):
    raise InputError(f"mode={config.get('mode')!r} is unknown: use 'train' or 'experiment'")
  if config.method not in TRAINED:
    raise InputError(f"method={config.method!r} is unknown: use one of {', '.join(TRAINED)}")
  if config.data.source not in cls_data.SOURCES:
    raise InputError(f"data.source={config.data.source!r} is unknown: use one of {', '.join(cls_data.SOURCES)}")
  if config.data.max_len < 2:
    raise InputError(f"data.max_len={config.data.max_len} is too small: use at least 2 ([CLS] and [SEP])")
  batch_devices = run_batch_devices(config)
  if config.data.batch_size < 1 or config.data.batch_size % batch_devices:
    raise InputError(f"data.batch_size={config.data.batch_size} must be a positive multiple of the mesh's "
                     f"data*fsdp size {batch_devices}: change it or mesh_shape")
  if config.eval.batch_size < 1 or config.eval.batch_size % batch_devices:
    raise InputError(f"eval.batch_size={config.eval.batch_size} must be a positive multiple of the mesh's "
                     f"data*fsdp size {batch_devices}: change it or mesh_shape")
  pairs = int(config.experiment.get("contrastive_batch_size", 0))
  if (config.mode == "experiment" and set(config.experiment.methods) & set(ganbert_contrastive.METHODS)
      and (pairs < 1 or pairs % batch_devices)):
    raise InputError(f"experiment.contrastive_batch_size={pairs} must be a positive multiple of the mesh's "
                     f"data*fsdp size {batch_devices}: change it or mesh_shape")


def run_batch_devices(config) -> int:
  shape = list(config.mesh_shape)
  n = len(jax.devices())
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1) or 1
    shape[shape.index(-1)] = n // rest
  return shape[0] * shape[1]


def run(config, workdir) -> dict:
  """Entry point for `python -m jaxtextgan.main --config=configs/ganbert.py --workdir=DIR`."""
  check_config(config)
  if config.mode == "experiment":
    return run_experiment(config, workdir)
  t0 = time.perf_counter()
  r = common.start(config, workdir)
  data = cls_data.load_data(config.data, seed=config.seed)
  print(data.summary(), flush=True)
  encoder = load_encoder(config.model, config.data.max_len)
  result, state, cfg = train_and_evaluate(config, data, encoder, method=config.method, seed=config.seed,
                                          workdir=r.workdir, mesh=r.mesh, resume=True)
  path = export_classifier(r.workdir, state, cfg, encoder, data, config)
  result["total_seconds"] = time.perf_counter() - t0
  stage.write_json(r.workdir / "results.json", result)
  # Only panels with curves: the baseline logs no G loss or p(fake), and an empty panel warns about its legend.
  panels = ([("D loss", [("train", "d_loss"), ("train", "d_sup")]),
             ("G loss", [("train", "g_loss"), ("train", "g_feature_matching")]),
             ("p(fake)", [("train", "p_fake_real"), ("train", "p_fake_fake")])] if config.method == "ganbert" else
            [("supervised loss", [("train", "loss")])])
  writers.plot_curves(r.workdir / "metrics.jsonl", r.workdir / "loss_curves.png", panels)
  r.writer.close()
  print(f"{config.method} on {data.name}: test accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}"
        f" ({result['steps']} steps, {result['wall_seconds']:.0f} s); classifier saved to {path}", flush=True)
  return result


# --------------------------------------------------------------------------------------------------- experiment


def _run_key(fraction, seed: int, method: str) -> str:
  return f"{'split' if fraction is None else f'{fraction:g}'}/seed{seed}/{method}"


def run_experiment(config, workdir) -> dict:
  """Fractions x seeds x methods; the report and figure are rewritten after every run."""
  r = common.start(config, workdir)
  exp = config.experiment
  if exp.compile_cache:
    # Runs in one process already share compiled programs (`_functions`); this also keeps them across
    # processes, e.g. when an interrupted experiment is continued.
    jax.config.update("jax_compilation_cache_dir", str(r.workdir / "jax_cache"))
  fractions: Sequence[float | None] = list(exp.fractions) or [None]
  seeds = list(exp.seeds)
  methods = list(exp.methods)
  for m in methods:
    if m not in METHODS:
      raise InputError(f"experiment.methods has {m!r}: use {', '.join(METHODS)}")
  if set(SETFIT) & set(methods) and not exp.get("setfit_python"):
    raise InputError("experiment.methods has SetFit but experiment.setfit_python is empty: give the python of "
                     "SetFit's own venv (README, 'GAN-BERT against the alternatives')")
  if not seeds:
    raise InputError("experiment.seeds is empty: give at least one seed (3 for mean +- std)")
  runs_path = r.workdir / "runs.jsonl"
  done = {row["key"]: row for row in writers.read_metrics(runs_path)} if runs_path.exists() else {}
  command = writers.command_line(exp.command or "run(config, workdir)")
  encoder = None
  for fraction in fractions:
    for seed in seeds:
      data = None
      for method in methods:
        key = _run_key(fraction, seed, method)
        if key in done:
          continue
        if data is None:
          data = cls_data.load_data(config.data, seed=seed, labeled_fraction=fraction)
        if encoder is None:
          encoder = load_encoder(config.model, config.data.max_len)
        print(f"[{key}] {data.summary()}", flush=True)
        try:
          if method in TRAINED:
            result, _, _ = train_and_evaluate(config, data, encoder, method=method, seed=seed,
                                              workdir=r.workdir / key, mesh=r.mesh, show_progress=exp.progress)
          elif method in ganbert_contrastive.METHODS:
            result = run_contrastive(method, config, data, encoder, seed=seed, mesh=r.mesh,
                                     stage_dir=r.workdir / _run_key(fraction, seed, "contrastive"),
                                     workdir=r.workdir / key, show_progress=exp.progress)
          else:
            result = peers.run_peer(method, config, data, encoder, seed=seed, mesh=r.mesh)
        except Preempted as stop:  # SIGTERM: the unfinished run is not recorded; running again redoes it
          print(f"[{key}] SIGTERM at step {stop.step}: stopped; run the same command again to continue", flush=True)
          return {"runs": list(done.values()), "preempted": True}
        result.update(key=key, fraction=fraction)
        print(f"[{key}] accuracy {result['accuracy']:.4f} macro-F1 {result['macro_f1']:.4f} "
              f"({result['steps']} steps, {result['wall_seconds']:.0f} s)", flush=True)
        done[key] = result
        if jax.process_index() == 0:
          with runs_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
        rows = [done[k] for k in done]
        report.write_report(config, rows, command)
  rows = [done[_run_key(f, s, m)] for f in fractions for s in seeds for m in methods]
  report.write_report(config, rows, command)
  summary = report.summarize(rows)
  stage.write_json(r.workdir / "results.json", {"runs": rows, "summary": summary})
  r.writer.close()
  for row in summary:
    print(f"{row['label']} {row['method']}: accuracy {row['accuracy_mean']:.4f} +- {row['accuracy_std']:.4f}, "
          f"macro-F1 {row['macro_f1_mean']:.4f} +- {row['macro_f1_std']:.4f} ({row['n']} seeds)", flush=True)
  return {"runs": rows, "summary": summary}
