"""Fit before you pay: lower and compile the train step(s) of a config for its mesh and batch without training.

Reports parameter count, XLA's FLOPs per step and the per-device memory of each compiled step, so a user knows
before renting a TPU whether, for example, the 24-layer preset fits. Every objective's steps are the ones its task
jits (same helpers, shardings and compiler options), lowered on `jax.eval_shape` states: nothing is allocated,
and no data is read beyond what fixes the vocabulary (or, for GAN-BERT, the number of classes) when the config
leaves it open.
"""

from __future__ import annotations

import json
import pathlib
import time
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtextgan import sharding as shd
from jaxtextgan import training
from jaxtextgan.errors import InputError


def _params_count(abstract_params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


def lm_flops_per_token(n_params: int, n_layer: int, d_model: int, seq_len: int) -> float:
  """Training FLOPs per token of a decoder LM: 6N for the weights plus 12*L*d*T for attention (Kaplan et al.)."""
  return 6.0 * n_params + 12.0 * n_layer * d_model * seq_len


def abstract_key() -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((), jax.random.key(0).dtype)


def lower_and_report(jitted, abstract_args: tuple, mesh, *, params, frozen_params=None, batch=None,
                     tokens_per_step: int = 0, model_flops_per_step: float = 0.0) -> dict[str, Any]:
  """Lowers and compiles an already-jitted step on abstract arguments; reports the trained `params` (and the
  `frozen_params` it reads), XLA's FLOPs and the per-device memory of the compiled program."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*abstract_args).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  report = {
    "devices": int(mesh.size),
    "mesh": dict(mesh.shape),
    "params": _params_count(params),
    "flops_per_step": float(cost.get("flops", float("nan"))) if cost else float("nan"),
    "compile_seconds": compile_s,
  }
  if frozen_params is not None:
    report["frozen_params"] = _params_count(frozen_params)
  if batch is not None:
    report["batch"] = {k: tuple(int(d) for d in v.shape) for k, v in batch.items()}
  if tokens_per_step:
    report["tokens_per_step"] = tokens_per_step
  if model_flops_per_step:
    report["model_flops_per_step"] = float(model_flops_per_step)
  if mem is not None:
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    for f in fields:
      report[f] = int(getattr(mem, f, 0))
    # Donated outputs alias their inputs, so they are counted once.
    report["per_device_bytes"] = (report["argument_size_in_bytes"] + report["output_size_in_bytes"]
                                  - report["alias_size_in_bytes"] + report["temp_size_in_bytes"])
  return report


def format_report(report: dict[str, Any]) -> str:
  gib = 1024 ** 3
  lines = [f"devices            {report['devices']}  mesh {report['mesh']}",
           f"parameters         {report['params']:,}"]
  if "frozen_params" in report:
    lines.append(f"frozen parameters  {report['frozen_params']:,} (read, not trained)")
  if "batch" in report:
    lines.append("batch              " + ", ".join(f"{k} {v}" for k, v in report["batch"].items()))
  lines.append(f"XLA FLOPs          {report['flops_per_step']:.4g} per device program (a scanned layer counts once)")
  if "model_flops_per_step" in report:
    lines.append(f"model FLOPs/step   {report['model_flops_per_step']:.4g} (all devices; 6N + 12*L*d*T per token)")
  if "tokens_per_step" in report:
    lines.append(f"tokens per step    {report['tokens_per_step']:,}")
  if "per_device_bytes" in report:
    size = {k: report[f"{k}_size_in_bytes"] / gib for k in ("argument", "output", "alias", "temp")}
    lines += [f"per-device memory  {report['per_device_bytes'] / gib:.3f} GiB (arguments {size['argument']:.3f}, "
              f"outputs {size['output']:.3f}, aliased {size['alias']:.3f}, temporaries {size['temp']:.3f})"]
  lines.append(f"compile time       {report['compile_seconds']:.1f} s")
  return "\n".join(lines)


# --- per objective -------------------------------------------------------------------------------------------------

DRY_RUN_OBJECTIVES = ("lm", "gan", "ganbert", "dfine")


def dry_run(config) -> Any:
  """`--dry_run`: compiles `config.objective`'s train step(s) and prints their reports (`lm`: one report; the
  others: {step name: report})."""
  objective = config.get("objective")
  if objective == "lm":
    from jaxtextgan.tasks import lm as lm_task
    return lm_task.dry_run(config)
  runs = {"gan": gan_dry_run, "ganbert": ganbert_dry_run, "dfine": dfine_dry_run}
  if objective not in runs:
    raise InputError(f"--dry_run is not available for objective {objective!r}: use one of "
                     f"{', '.join(DRY_RUN_OBJECTIVES)}")
  return runs[objective](config)


def summary_line(name: str, report: dict[str, Any]) -> str:
  mem = f", {report['per_device_bytes'] / 1024 ** 3:.3f} GiB per device" if "per_device_bytes" in report else ""
  return f"{name}: {report['params']:,} params, {report['flops_per_step']:.4g} XLA FLOPs/step{mem}"


def _print_reports(objective: str, reports: dict[str, dict]) -> None:
  for name, report in reports.items():
    print(f"[{objective} {name}]\n{format_report(report)}\n", flush=True)
  print("\n".join(summary_line(f"{objective} {name}", r) for name, r in reports.items()), flush=True)


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _batch(mesh, shapes: dict[str, tuple]) -> tuple[dict, dict]:
  """(abstract int32 batch, its shardings): every array batch-major over ('data','fsdp')."""
  shardings = {k: shd.batch_sharding(mesh, len(v)) for k, v in shapes.items()}
  return {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=shardings[k]) for k, v in shapes.items()}, shardings


def _text_tokenizer(config):
  """The tokenizer a run would build from the training text (its vocabulary is the model's when the config says 0)."""
  from jaxtextgan import tokenizers as tok
  from jaxtextgan.tasks import common
  splits = common.text_splits(config.data)
  return tok.build_tokenizer(config.tokenizer.spec, corpus_text=splits["train"],
                             vocab_size=config.tokenizer.get("vocab_size") or None)


def lm_step_report(lm_cfg, opt_cfg, mesh, batch_size: int, seq_len: int) -> dict:
  """The LM objective's step (MLE pre-training of G) as `lm.jit_train_step` compiles it."""
  from jaxtextgan.models import gpt2
  from jaxtextgan.objectives import lm
  abstract, shardings = training.abstract_state(lm.make_state_fn(lm_cfg, opt_cfg), jax.random.key(0), mesh)
  batch, batch_sh = _batch(mesh, {"inputs": (batch_size, seq_len), "targets": (batch_size, seq_len)})
  jitted = lm.jit_train_step(mesh, shardings, batch_sh)
  n = gpt2.count_params(abstract.params)
  return lower_and_report(jitted, (abstract, batch, abstract_key()), mesh, params=abstract.params, batch=batch,
                          tokens_per_step=batch_size * seq_len,
                          model_flops_per_step=batch_size * seq_len * lm_flops_per_token(
                            n, lm_cfg.n_layer, lm_cfg.d_model, seq_len))


def gan_dry_run(config) -> dict[str, dict]:
  """G's MLE pre-training step (when configured) and the fused GAN step (n_critic D-steps, one G-step)."""
  from jaxtextgan.objectives import gan
  from jaxtextgan.tasks import gan as task
  mesh = shd.make_mesh(tuple(config.mesh_shape))
  task.check_options(config, mesh)
  gan_cfg = task.gan_config(config)
  if config.data.source == "trigram":
    t = config.data.trigram
    data = types.SimpleNamespace(vocab_size=t.vocab_size + 1, bos_id=t.vocab_size, forbidden_ids=(t.vocab_size,))
    seq_len = t.sentence_len
  else:
    seq_len = config.data.seq_len
    if config.model.vocab_size:
      data = types.SimpleNamespace(vocab_size=config.model.vocab_size, bos_id=0, forbidden_ids=())
    else:
      tokenizer = _text_tokenizer(config)
      data = types.SimpleNamespace(vocab_size=tokenizer.vocab_size, bos_id=tokenizer.eos_id or 0, forbidden_ids=())
  lm_cfg = task.lm_config(config, data)
  gen_cfg = task.generator_config(config, data)
  if gen_cfg.kind == "gpt2" and gen_cfg.length > lm_cfg.max_len:
    raise InputError(f"generator.length={gen_cfg.length} exceeds model.max_len={lm_cfg.max_len}: lower the length")
  disc_cfg = task.discriminator_config(config, data, lm_cfg)
  reports = {}
  if config.pretrain.steps > 0 and not config.generator.init_from:
    reports["pretrain G (MLE)"] = lm_step_report(lm_cfg, config.pretrain.optimizer, mesh, config.data.batch_size,
                                                 seq_len)
  g_opt = task._with_total(config.g_optimizer, config.gan.steps)
  d_opt = task._with_total(config.d_optimizer, config.gan.steps * config.gan.n_critic)
  abstract, shardings = training.abstract_state(gan.make_state_fn(gen_cfg, lm_cfg, disc_cfg, g_opt, d_opt),
                                                jax.random.key(0), mesh)
  _, _, train_step = gan.make_steps(gan_cfg, gen_cfg.latent_dim, mesh)
  jitted = gan.jit_train_step(train_step, mesh, shardings,
                              compiler_options=gan.FAST_COMPILE if config.gan.fast_compile else None)
  batch, _ = _batch(mesh, {"real": (gan_cfg.batch_size, gan_cfg.n_critic, gen_cfg.length)})
  reports[f"GAN step ({gan_cfg.loss}, n_critic {gan_cfg.n_critic})"] = lower_and_report(
    jitted, (abstract, batch, abstract_key()), mesh, params=(abstract.g.params, abstract.d.params), batch=batch)
  _print_reports("gan", reports)
  return reports


def bert_config(model_cfg, max_len: int):
  """The encoder's BertConfig as `bert.load_bert` builds it, from the local directory's config.json; whether the
  checkpoint has a pooler comes from the names in its safetensors header (no weights are read), else True."""
  from jaxtextgan.models import bert
  directory = pathlib.Path(model_cfg.encoder_dir) if model_cfg.encoder_dir else bert.default_encoder_dir()
  overrides: dict[str, Any] = dict(dtype="float32", param_dtype="float32", remat=False,
                                   pooler=_has_pooler(directory))
  dropout = model_cfg.encoder_dropout
  if dropout >= 0:
    overrides.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
  cfg = bert.BertConfig.from_hf_json(directory / "config.json", **overrides)
  if not 2 <= max_len <= cfg.max_position_embeddings:
    raise InputError(f"max_len={max_len} is out of range for {directory}: use 2..{cfg.max_position_embeddings}")
  return cfg


def _has_pooler(directory: pathlib.Path) -> bool:
  single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
  if single.is_file():
    from safetensors import safe_open
    with safe_open(str(single), framework="numpy") as f:
      names = list(f.keys())
  elif index.is_file():
    names = list(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
  else:
    return True
  return any(n.endswith("pooler.dense.weight") for n in names)


def num_classes(data_cfg) -> int:
  """k without loading the data: TREC's fixed label sets, BBC's class folders, or the files' label names (or, when
  not given, the labels of the train file)."""
  from jaxtextgan.data import classification as cls_data
  if data_cfg.source == "trec":
    return len(cls_data.TREC_COARSE_LABELS if data_cfg.granularity == "coarse" else cls_data.TREC_FINE_LABELS)
  if data_cfg.source == "bbc":
    directory = pathlib.Path(data_cfg.bbc_dir) if data_cfg.bbc_dir else cls_data.bbc_news_dir()
    return sum(1 for p in directory.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
  if data_cfg.label_names:
    return len([s for s in data_cfg.label_names.split(",") if s.strip()])
  rows = cls_data.read_rows(data_cfg.train_file, text_column=data_cfg.text_column,
                            label_column=data_cfg.label_column)
  return len({label for _, label, _ in rows if label is not None})


def ganbert_dry_run(config) -> dict[str, dict]:
  """GAN-BERT's D-step and G-step (the baseline's supervised step), as `ganbert.program` jits them, on batches of
  data.max_len tokens (the longest a batch is cut to)."""
  from jaxtextgan.objectives import ganbert
  from jaxtextgan.tasks import ganbert as task
  task.check_config(config)
  mesh = shd.make_mesh(tuple(config.mesh_shape))
  bert_cfg = bert_config(config.model, config.data.max_len)
  k = num_classes(config.data)
  # The step count only shapes the learning-rate schedule, not the program's arrays.
  opt = task.optimizer_config(config.optimizer, max(int(config.train.steps), 1))
  g_opt = dict(opt, lr=config.optimizer.g_lr or opt["lr"])
  methods = tuple(config.experiment.methods) if config.mode == "experiment" else (config.method,)
  b, t = config.data.batch_size, config.data.max_len
  batch, _ = _batch(mesh, {"input_ids": (b, t), "attention_mask": (b, t), "labels": (b,)})
  reports = {}
  for method in methods:
    cfg = task.model_config(config.model, k, method)
    prog = ganbert.program(bert_cfg, cfg, opt, g_opt if method == "ganbert" else None, mesh,
                           compiler_options=training.FAST_COMPILE if config.train.fast_compile else None)
    abstract, _ = training.abstract_state(prog.make_state, jax.random.key(0), mesh)
    params = (abstract.d.params, abstract.g.params if abstract.g is not None else None)
    for name in ("d_step", "g_step", "sup_step"):
      if name in prog.steps:
        reports[f"{method} {name}"] = lower_and_report(prog.steps[name], (abstract, batch, abstract_key()), mesh,
                                                       params=params, batch=batch)
  _print_reports("ganbert", reports)
  return reports


def _dfine_vocab(config) -> int:
  if config.model.vocab_size:
    return int(config.model.vocab_size)
  if config.data.source == "trigram":
    return int(config.data.trigram_vocab) + 1
  if config.init_lm.workdir:
    from jaxtextgan import tokenizers as tok
    saved = pathlib.Path(config.init_lm.workdir) / "tokenizer"
    if not saved.is_dir():
      raise InputError(f"init_lm.workdir={config.init_lm.workdir} has no tokenizer/ folder: point it to an LM "
                       "workdir or leave it empty to train stage 1 here")
    return tok.load_tokenizer(saved).vocab_size
  return _text_tokenizer(config).vocab_size


def dfine_dry_run(config) -> dict[str, dict]:
  """The stage steps of `tasks.dfine.run`: the initial LM (unless init_lm.workdir), the discriminator (eq. 6) and
  each distinct fine-tuning program of `finetune.runs` (eq. 12 or a variant), with q0 (and the discriminator) as
  frozen arguments."""
  from jaxtextgan.objectives import dfine
  from jaxtextgan.objectives import lm as lm_obj
  from jaxtextgan.tasks import dfine as task
  runs = task.parse_runs(config.finetune.runs)
  if config.finetune.loss not in dfine.LOSSES or config.finetune.loss == "ce":
    raise InputError(f"finetune.loss={config.finetune.loss!r} is invalid: use 'dfine' (eq. 12) or 'dfine_kl'")
  eps = float(config.finetune.eps)
  dfine.logit_bound(eps)
  mesh = shd.make_mesh(tuple(config.mesh_shape))
  lm_cfg, disc_cfg, ft_cfg = task.model_configs(config, _dfine_vocab(config))
  q0_graphdef, disc_graphdef = dfine.graphdef_of(lm_cfg), dfine.graphdef_of(disc_cfg)
  q0_abstract, q0_sh = dfine.param_shardings(lm_cfg, mesh)
  disc_abstract, disc_sh = dfine.param_shardings(disc_cfg, mesh)
  q0, disc = _with_shardings(q0_abstract, q0_sh), _with_shardings(disc_abstract, disc_sh)
  b, t = config.data.batch_size, config.data.seq_len
  batch, batch_sh = _batch(mesh, {"inputs": (b, t), "targets": (b, t)})

  def report(model_cfg, stage_cfg, step_fn, frozen, frozen_sh):
    abstract, shardings = training.abstract_state(dfine.make_state_fn(model_cfg, task._opt_cfg(stage_cfg)),
                                                  jax.random.key(0), mesh)
    jitted = dfine.jit_stage(step_fn, mesh, shardings, frozen_sh, batch_sh)
    return lower_and_report(jitted, (abstract, frozen, batch, abstract_key()), mesh, params=abstract.params,
                            frozen_params=frozen or None, batch=batch, tokens_per_step=b * t)

  reports = {}
  if not config.init_lm.workdir:
    reports[task.STAGE_LM] = report(lm_cfg, config.lm, lambda s, f, bt, k: lm_obj.train_step(s, bt, k), {}, {})
  bases = list(dict.fromkeys(base for base, _ in runs))
  reports[", ".join(task.stage_name("disc", base) for base in bases) + " (eq. 6)"] = report(
    disc_cfg, config.discriminator, dfine.make_disc_step(q0_graphdef), {"q0": q0}, {"q0": q0_sh})
  programs: dict[tuple, list[str]] = {}
  for base, variant in runs:
    kind = "ce" if variant == "ce" else config.finetune.loss
    programs.setdefault((kind, variant == "disc"), []).append(task.stage_name("ft", base, variant))
  for (kind, use_disc), names in programs.items():
    frozen, frozen_sh = ({"q0": q0, "disc": disc}, {"q0": q0_sh, "disc": disc_sh}) if use_disc else (
      {"q0": q0}, {"q0": q0_sh})
    step_fn = dfine.make_finetune_step(q0_graphdef, disc_graphdef if use_disc else None, kind=kind, eps=eps)
    label = f"{kind}, {'with the discriminator' if use_disc else 'r = 1/2'}" if kind != "ce" else "ce"
    reports[f"{', '.join(names)} ({label})"] = report(ft_cfg, config.finetune, step_fn, frozen, frozen_sh)
  _print_reports("dfine", reports)
  return reports
