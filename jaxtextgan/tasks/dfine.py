"""`objective='dfine'`: fine-tune an LM with a discriminator (Popov & Kudinov), three kinds of `stage.Stage`.

  stage1_lm/         the initial LM q0, trained on cross-entropy (or taken from `init_lm.workdir`)
  stage2_disc/       the discriminator r of eq. (6) against q0, on real contexts (stage2_disc_perturbed/ for the
                     perturbed model of §3 when `perturb.enabled`)
  stage3_finetune*/  the LM fine-tuned from q0 on eq. (12) (or a variant: `finetune.runs`)

`stage.run_stage` trains each one in its own subdirectory (checkpoints, metrics.jsonl, done.json with its final
evaluation), skips a finished stage and resumes an unfinished one. After the stages this recipe computes every
number of the report (Table 1 on the trigram corpus of Appendix A with exact p, or Table 2 on text; Figure 1's
curves) into the results dict, which `reports.dfine` renders.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxtextgan import checkpoint, evaluation, prepare, stage, training, writers
from jaxtextgan import tokenizers as tok
from jaxtextgan.data import corpus
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import dfine
from jaxtextgan.reports import dfine as report
from jaxtextgan.tasks import common
from jaxtextgan.tasks import dfine_numbers as numbers
from jaxtextgan.tasks.dfine_numbers import BASES, Plan
from jaxtextgan.tasks import lm as lm_task

STAGE_LM = "stage1_lm"
STAGE_DISC = "stage2_disc"
STAGE_FT = "stage3_finetune"
VARIANTS = ("disc", "nodisc", "ce")
# Fields that may differ between a checkpoint and the model that reads it: they change no parameter.
_NON_ARCH_FIELDS = ("dropout", "remat", "dtype")


# --- data and configs ------------------------------------------------------------------------------------------


def _init_lm_tokenizer(cfg) -> tok.Tokenizer:
  """The tokenizer of the LM workdir named by `init_lm.workdir`: its vocabulary is the one to use."""
  saved = writers.workdir_path(cfg.init_lm.workdir) / "tokenizer"
  if not saved.is_dir():
    raise InputError(f"init_lm.workdir={cfg.init_lm.workdir} has no tokenizer/ folder: point it to an LM workdir "
                     "(python -m jaxtextgan.main --config=configs/lm.py) or leave it empty to train stage 1 here")
  return common.load_tokenizer_dir(saved)


def load_data(run: common.Run) -> corpus.Corpus:
  """`data.source` 'trigram' (Appendix A, exact p) or text (word blocks, Table 2 style; from shards every training
  stage reads the train split through Grain, and only the valid and test splits are read whole:
  `common.text_corpus`)."""
  cfg = run.config
  if cfg.data.source == "trigram":
    return corpus.trigram_corpus(cfg.data, cfg.data.seq_len, common.cache_dir(run.workdir))
  shards = cfg.data.source == "shards"  # the shards' tokenizer; `_initial_lm` checks init_lm's against it
  return common.text_corpus(run.workdir, cfg, _init_lm_tokenizer(cfg) if cfg.init_lm.workdir and not shards else None)


def vocab_size(config) -> int:
  """The LM's vocabulary without loading the corpus (for dry runs)."""
  if config.model.vocab_size:
    return int(config.model.vocab_size)
  if config.data.source == "trigram":
    return int(config.data.trigram_vocab) + 1
  if config.init_lm.workdir:
    return _init_lm_tokenizer(config).vocab_size
  return common.build_tokenizer(config).vocab_size


def _arch(model: dict) -> dict:
  return {k: v for k, v in model.items() if k not in _NON_ARCH_FIELDS}


def check_architecture(meta: dict, model_cfg: gpt2.GPT2Config, where: str, fix: str) -> None:
  """A checkpoint's parameters fit `model_cfg` only if every architecture field agrees (dropout may differ)."""
  saved = meta.get("model")
  if not isinstance(saved, dict):
    raise InputError(f"checkpoint {where} records no model architecture: it is not a jaxtextgan LM checkpoint")
  ours = _arch(dataclasses.asdict(model_cfg))
  diff = sorted(k for k in set(_arch(saved)) | set(ours) if _arch(saved).get(k) != ours.get(k))
  if diff:
    detail = ", ".join(f"{k}={_arch(saved).get(k)!r} vs {ours.get(k)!r}" for k in diff)
    raise InputError(f"checkpoint {where} holds a model of another architecture ({detail}): {fix}")


def restore_params(ckpt_dir: epath.Path, model_cfg: gpt2.GPT2Config, mesh, step: int):
  """Only the parameters of a saved TrainState (any optimizer), placed with this mesh's shardings."""
  abstract, shardings = dfine.param_shardings(model_cfg, mesh)
  target = {"params": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                   shardings)}
  manager = ocp.CheckpointManager(writers.workdir_path(ckpt_dir), item_names=("state", "meta"),
                                  options=ocp.CheckpointManagerOptions(create=False))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, partial_restore=True, restore_args=ocp.checkpoint_utils.construct_restore_args(target))))
  finally:
    manager.close()
  return restored["state"]["params"]


def model_configs(cfg, vocab: int):
  """(LM, discriminator, fine-tuned LM) GPT2Configs; the discriminator is the LM's architecture unless overridden."""
  lm_cfg = common.model_config(cfg.model, vocab)
  common.check_seq_len(cfg.data.seq_len, lm_cfg)
  try:
    disc_cfg = lm_cfg.replace(**dict(cfg.discriminator.get("model_overrides", {}) or {}))
  except (TypeError, ValueError) as err:
    raise InputError(f"discriminator.model_overrides is invalid: {err}") from None
  if disc_cfg.vocab_size != lm_cfg.vocab_size:
    raise InputError(f"discriminator vocab_size={disc_cfg.vocab_size} differs from the LM's vocab_size="
                     f"{lm_cfg.vocab_size}: the discriminator scores the LM's words; drop "
                     "discriminator.model_overrides.vocab_size")
  if cfg.discriminator.init == "lm":
    if _arch(dataclasses.asdict(disc_cfg)) != _arch(dataclasses.asdict(lm_cfg)):
      raise InputError("discriminator.init='lm' copies the LM's parameters, but discriminator.model_overrides "
                       "change its architecture: use discriminator.init='scratch' or drop the overrides")
    if lm_cfg.tie_embeddings:
      raise InputError("discriminator.init='lm' zeroes the output layer (so r = 1/2 at the start), which needs an "
                       "untied one: set model.tie_embeddings=False or use discriminator.init='scratch'")
  elif cfg.discriminator.init != "scratch":
    raise InputError(f"discriminator.init={cfg.discriminator.init!r} is unknown: use 'lm' or 'scratch'")
  return lm_cfg, disc_cfg, lm_cfg.replace(dropout=float(cfg.finetune.dropout))


def parse_runs(runs) -> list[tuple[str, str]]:
  """`finetune.runs` entries 'base:variant' -> [(base, variant)], base in BASES, variant in VARIANTS."""
  out = []
  for spec in runs:
    base, _, variant = str(spec).partition(":")
    if base not in BASES or variant not in VARIANTS:
      raise InputError(f"finetune.runs entry {spec!r} is invalid: use 'base:variant' with base in {BASES} and "
                       f"variant in {VARIANTS}, e.g. 'initial:disc'")
    out.append((base, variant))
  if not out:
    raise InputError("finetune.runs is empty: give at least one run, e.g. ('initial:disc',)")
  return out


def stage_name(kind: str, base: str, variant: str = "disc") -> str:
  suffix = ("" if base == "initial" else f"_{base}") + ("" if variant == "disc" else f"_{variant}")
  return {"disc": STAGE_DISC, "ft": STAGE_FT}[kind] + suffix


def opt_cfg(stage_cfg) -> dict:
  """The stage's optimizer config with total_steps = the stage's steps (the schedule's length) and the stage's
  `train_layers` ('all' | 'head' | 'top:N', `dfine.make_tx`; the discriminator's option)."""
  return {**stage_cfg.optimizer.to_dict(), "total_steps": int(stage_cfg.steps),
          "train_layers": str(stage_cfg.get("train_layers", "all"))}


def state_fn(model_cfg: gpt2.GPT2Config, stage_cfg):
  """The stage's pure `rng -> TrainState`, memoised: equal configs share one optimizer object, so their states have
  equal tree structures and share the compiled steps (`training.jit_step`)."""
  return _state_fn(model_cfg, json.dumps(opt_cfg(stage_cfg), sort_keys=True))


@functools.lru_cache(maxsize=None)
def _state_fn(model_cfg: gpt2.GPT2Config, opt_json: str):
  return dfine.make_state_fn(model_cfg, json.loads(opt_json))


# --- the plan: what every stage shares -------------------------------------------------------------------------


def check_options(config) -> list[tuple[str, str]]:
  """The fine-tuning runs, after checking the loss and eps; raises InputError naming a bad option."""
  runs = parse_runs(config.finetune.runs)
  if config.finetune.loss not in dfine.LOSSES or config.finetune.loss == "ce":
    raise InputError(f"finetune.loss={config.finetune.loss!r} is invalid: use 'dfine' (eq. 12) or 'dfine_kl' (exact "
                     "reverse KL); plain cross-entropy is the run variant 'ce'")
  dfine.logit_bound(float(config.finetune.eps))
  if dfine.parse_train_layers(config.discriminator.get("train_layers", "all")) is not None and (
      config.discriminator.init != "lm"):
    raise InputError(f"discriminator.train_layers={config.discriminator.train_layers!r} freezes layers, which only "
                     "makes sense for layers copied from the LM: set discriminator.init='lm' or train_layers='all'")
  return runs


def plan(config, mesh, vocab: int, data: corpus.Corpus | None = None, workdir: epath.Path | None = None) -> Plan:
  """The Plan of `config` on `mesh` for a vocabulary of `vocab` words; data and workdir None for a dry run."""
  runs = check_options(config)
  lm_cfg, disc_cfg, ft_cfg = model_configs(config, vocab)
  return Plan(config, mesh, {"lm": lm_cfg, "disc": disc_cfg, "ft": ft_cfg}, runs, data, workdir)


# --- stages ----------------------------------------------------------------------------------------------------


def lm_stage(p: Plan) -> stage.Stage:
  """Stage 1: q0 on cross-entropy (`tasks.lm.lm_stage`), with this task's optimizer (AdamW or SGD)."""
  cfg = p.config
  b, t = int(cfg.data.batch_size), int(cfg.data.seq_len)
  blocks = p.data.blocks["train"] if p.data else jax.ShapeDtypeStruct((b, t + 1), np.int32)
  evaluate = lambda s: {"valid": evaluation.perplexity(s.graphdef, s.params, p.data, "valid", cfg.eval, p.mesh)}
  st = lm_task.lm_stage(STAGE_LM, p.directory(STAGE_LM), p.models["lm"], opt_cfg(cfg.lm), blocks, batch_size=b,
                        seed=cfg.seed, rng_seed=cfg.seed + 7919, num_steps=int(cfg.lm.steps),
                        meta={"tokenizer": p.data.tokenizer_spec if p.data else "", "objective": "lm"},
                        evaluate=evaluate, **p.stage_fields(cfg.lm))
  return dataclasses.replace(st, init=state_fn(p.models["lm"], cfg.lm))


def _stage(p: Plan, name: str, kind: str, stage_cfg, step, *, seed: int, frozen: dict, meta: dict,
           **fields) -> stage.Stage:
  """A stage of model `kind` ('disc' or 'ft') training `step` on real blocks, with `frozen` parameters."""
  b, t = int(p.config.data.batch_size), int(p.config.data.seq_len)
  model_cfg = p.models[kind]
  return stage.Stage(
    name=name, init=state_fn(model_cfg, stage_cfg), steps=(step,),
    batches=lambda: common.train_batches(p.data.blocks["train"], b, seed),
    batch_spec=stage.int_batch(inputs=(b, t), targets=(b, t)), num_steps=int(stage_cfg.steps), seed=seed,
    rng_seed=seed + 7919, directory=p.directory(name),
    meta={"model": dataclasses.asdict(model_cfg), "tokenizer": p.data.tokenizer_spec if p.data else "", **meta},
    frozen=frozen, frozen_shardings={k: p.frozen_shardings[k] for k in frozen}, tokens_per_step=b * t,
    **p.stage_fields(stage_cfg), **fields)


def disc_stage(p: Plan, base: str, index: int, q0) -> stage.Stage:
  """Stage 2: the discriminator of eq. (6) against q0 = `q0` (the initial or the perturbed LM)."""
  cfg = p.config
  initial = {}
  restarts = cfg.discriminator.init == "lm" or cfg.discriminator.get("bias_init", "zero") != "zero"

  def start(s):
    initial["params"] = disc_init(p, q0)
    return _restart(s, initial["params"])

  def evaluate(s):
    """The trained D on validation, and (split 'valid_start') D before training: with init 'lm' and bias_init
    'unigram', the unigram-only D r(w|c) = σ(b_w) (zero output weights), so their eq. (6) gap is what D learned
    from context."""
    out = {"valid": numbers.disc_metrics(p, s.params, q0)}
    if restarts:
      out["valid_start"] = numbers.disc_metrics(p, initial.get("params") or disc_init(p, q0), q0)
    return out

  return _stage(p, stage_name("disc", base), "disc", cfg.discriminator, dfine.make_disc_step(p.graphdefs["lm"]),
                seed=cfg.seed + 100 * (index + 1), frozen={"q0": q0}, meta={"objective": "dfine_disc", "base": base},
                evaluate=evaluate, start=start if restarts else None)


def finetune_stage(p: Plan, base: str, variant: str, index: int, q0, disc, probe=None) -> stage.Stage:
  """Stage 3: qθ from q0 on eq. (12) ('disc'), with r ≡ 1/2 ('nodisc') or on cross-entropy ('ce'). Its evaluation
  is Table 2's, with the trained discriminator `disc` for every variant."""
  cfg = p.config
  g = p.graphdefs
  kind = "ce" if variant == "ce" else cfg.finetune.loss
  use_disc = variant == "disc"
  step = dfine.make_finetune_step(g["lm"], g["disc"] if use_disc else None, kind=kind, eps=p.eps)
  splits = [s for s in ("valid", "test") if p.data is not None and s in p.data.blocks]
  evaluate = lambda s: {split: numbers.finetune_metrics(p, g["ft"], s.params, q0, disc, split) for split in splits}
  probe_every = int(cfg.finetune.get("probe_every", 0) or 0) if probe is not None else 0
  return _stage(p, stage_name("ft", base, variant), "ft", cfg.finetune, step, seed=cfg.seed + 1000 * (index + 1),
                frozen={"q0": q0, "disc": disc} if use_disc else {"q0": q0},
                meta={"objective": "dfine_finetune", "base": base, "variant": variant, "loss": kind},
                evaluate=evaluate, start=lambda s: _restart(s, q0), probe=probe, probe_every=probe_every,
                probe_at_ends=bool(probe_every))


def _restart(state, params):
  """Stage.start: the fresh state restarted from `params`, in the fresh state's layout."""
  return jax.jit(dfine.with_params, out_shardings=jax.tree.map(lambda x: x.sharding, state))(state, params)


def disc_init(p: Plan, q0):
  """The discriminator's starting parameters: q0's with a zeroed output layer (init 'lm'; r = 1/2 everywhere) or
  random ones (init 'scratch'), then, with bias_init 'unigram', the output bias set to the best context-free
  discriminator (dfine.unigram_logit): b_w = log(Q_w / P_w) (`unigram_estimate`)."""
  dcfg = p.config.discriminator
  if dcfg.init == "lm":
    params = jax.jit(dfine.zero_output_layer)(q0)
  else:
    params = training.init_sharded_state(state_fn(p.models["disc"], dcfg), jax.random.key(p.config.seed + 17),
                                         p.mesh)[0].params
  if dcfg.get("bias_init", "zero") == "zero":
    return params
  if dcfg.bias_init != "unigram":
    raise InputError(f"discriminator.bias_init={dcfg.bias_init!r} is unknown: use 'zero' or 'unigram'")
  if not p.models["disc"].output_bias:
    raise InputError("discriminator.bias_init='unigram' sets the output bias, but the model has none: set "
                     "model.output_bias=True or discriminator.bias_init='zero'")
  return jax.jit(dfine.set_output_bias_vector)(params, unigram_estimate(p, q0, int(dcfg.bias_init_blocks)))


def unigram_estimate(p: Plan, q0, sample_blocks: int, seed: int = 0):
  """dfine.unigram_logit (V,) of q0 on the training blocks: P_w = #w over every training target (a count, free),
  Q_w = Σ_c q0(w|c) over `sample_blocks` blocks drawn without replacement (0: all), scaled by (all targets) /
  (sampled targets).

  The sampled Q_w is a sum of smooth probabilities, so its relative error is small even for words the sample never
  contains, unlike counts on the same sample (whose log-odds overfit it: results/dfine_ptb.md's notes); the q0 pass
  costs sample_blocks / n of the full one.
  """
  blocks = p.data.blocks["train"]
  counts = common.target_counts(blocks, p.data.vocab_size)
  if sample_blocks and sample_blocks < len(blocks):
    rows = np.sort(np.random.default_rng([p.config.seed, seed]).choice(len(blocks), sample_blocks, replace=False))
    mass = numbers.q0_mass(p, q0, common.read_blocks(blocks, rows)) * (len(blocks) / sample_blocks)
  elif hasattr(blocks, "read"):
    raise InputError("discriminator.bias_init_blocks=0 sums q0 over every train block, which data.source='shards' "
                     "keeps on disk: set discriminator.bias_init_blocks to a number of blocks, e.g. 2000")
  else:
    mass = numbers.q0_mass(p, q0, blocks)
  return dfine.unigram_logit(mass, counts)


def dry_run_stages(config, mesh) -> list[stage.Stage]:
  """The Stages `run` trains, with abstract frozen parameters, for `--dry_run` (no data is loaded)."""
  p = plan(config, mesh, vocab_size(config))
  q0, disc = p.abstract["lm"], p.abstract["disc"]
  stages = [] if config.init_lm.workdir else [lm_stage(p)]
  stages += [disc_stage(p, base, i, q0) for i, base in enumerate(p.disc_bases)]
  return stages + [finetune_stage(p, base, variant, i, q0, disc) for i, (base, variant) in enumerate(p.runs)]


# --- the command -----------------------------------------------------------------------------------------------


def init_lm_checkpoint(cfg) -> tuple[epath.Path, int] | None:
  """(checkpoint dir, newest step) of the existing LM named by `init_lm.workdir`, or None to train stage 1 here.

  Checked before anything is computed, so a wrong path fails at once.
  """
  init_dir = cfg.init_lm.workdir
  if not init_dir:
    return None
  ckpt_dir = writers.workdir_path(init_dir) / "checkpoints"  # local or gs://, as any workdir
  if not ckpt_dir.is_dir() or not any(q.name.isdigit() for q in ckpt_dir.iterdir()):
    raise InputError(f"init_lm.workdir={init_dir} has no stage-1 LM checkpoint in {ckpt_dir}: train it first "
                     "(python -m jaxtextgan.main --config=configs/lm.py --workdir=...) or leave init_lm.workdir "
                     "empty to train stage 1 here")
  return ckpt_dir, checkpoint.read_meta(ckpt_dir)[1]


def _perturbation(p: Plan) -> int | None:
  """The chosen word of §3 (rank `perturb.rank` by training frequency), or None when not perturbing."""
  cfg = p.config
  if not cfg.perturb.enabled:
    if any(base == "perturbed" for base, _ in p.runs):
      raise InputError("finetune.runs uses the 'perturbed' base but perturb.enabled is False: enable it or drop "
                       "those runs")
    return None
  if not p.models["lm"].output_bias:
    raise InputError("perturb.enabled needs an output bias per word to perturb: set model.output_bias=True")
  words = p.data.vocab_size - (1 if p.data.trigram is not None else 0)
  rank = int(cfg.perturb.rank)
  if not 1 <= rank <= words:
    raise InputError(f"perturb.rank={rank} is out of range: use a frequency rank in [1, {words}] (the paper's "
                     "'almost frequent' words are ranks 51-150)")
  counts = common.target_counts(p.data.blocks["train"], p.data.vocab_size)[:words]
  return int(np.lexsort((np.arange(words), -counts))[rank - 1])  # word_stats.word_ranking, from the counts


def _initial_lm(p: Plan, r: common.Run, init_lm, out: dict):
  """q0's parameters: restored from `init_lm.workdir` (checked against this run's model and data), or stage 1."""
  if init_lm is None:
    result = stage.run_stage(lm_stage(p), r.mesh)
    out["stages"][STAGE_LM] = result.done
    if r.is_main and p.data.trigram is None and (r.workdir / "tokenizer").is_dir():
      # Stage 1 is then itself an LM workdir that another run can name in init_lm.workdir.
      prepare.copy_tokenizer(r.workdir / "tokenizer", r.workdir / STAGE_LM / "tokenizer")
    return result.state.params
  ckpt_dir, step = init_lm
  meta, _ = checkpoint.read_meta(ckpt_dir, step)
  check_architecture(meta, p.models["lm"], str(ckpt_dir / str(step)),
                     "set config.model to the architecture it was trained with, or leave init_lm.workdir empty to "
                     "train stage 1 here")
  if meta.get("tokenizer") not in (None, p.data.tokenizer_spec):
    raise InputError(f"init_lm.workdir={p.config.init_lm.workdir} was trained with tokenizer {meta['tokenizer']}, "
                     f"not {p.data.tokenizer_spec}: use the data and tokenizer it was trained on")
  print(f"[{STAGE_LM}] initial LM from {ckpt_dir / str(step)}", flush=True)
  return restore_params(ckpt_dir, p.models["lm"], r.mesh, step)


def run_seeds(config, workdir) -> dict:
  """`config.seeds` = (s1, s2, ...): `run` with config.seed = s in <workdir>/seed_<s> (each resumable, its own
  report.md there), then every number of the reports as mean ± std over the seeds (`numbers.over_seeds`) in
  <workdir>/seeds.json and the Markdown of `reports.dfine.seeds_report` (config.report.markdown)."""
  t0 = time.perf_counter()
  seeds = [int(x) for x in config.seeds]
  per_seed = {}
  for seed in seeds:
    c = ml_collections.ConfigDict(config.to_dict())
    c.seeds, c.seed = (), seed
    c.report.markdown, c.report.figure = "", ""
    per_seed[seed] = run(c, writers.workdir_path(workdir) / f"seed_{seed}")
  out = {"seeds": seeds, "per_seed": {s: o["report"] for s, o in per_seed.items()},
         "over_seeds": numbers.over_seeds([o["report"] for o in per_seed.values()]),
         "command": numbers.command(), "wall_seconds": time.perf_counter() - t0, "jax_version": jax.__version__,
         "devices": f"{len(jax.devices())} {jax.devices()[0].platform} device(s)",
         "stage_wall_seconds": {s: {k: v.get("wall_seconds", 0.0) for k, v in o["stages"].items()}
                                for s, o in per_seed.items()}}
  md = report.seeds_report(out, config)
  if jax.process_index() == 0:
    writers.workdir_path(workdir).mkdir(parents=True, exist_ok=True)
    (writers.workdir_path(workdir) / "seeds.md").write_text(md, encoding="utf-8")
    if config.report.get("markdown"):
      writers.write_report(config.report.markdown, md)
  stage.write_json(writers.workdir_path(workdir) / "seeds.json", out)
  print(md, flush=True)
  return out


def run(config, workdir) -> dict:
  """Runs (or resumes) the three stages, computes the report's numbers and writes the report; returns them with
  every stage's done record. SIGTERM raises `errors.Preempted` after the running stage saved. With
  `config.seeds`, `run_seeds`."""
  if config.get("seeds"):
    return run_seeds(config, workdir)
  t0 = time.perf_counter()
  check_options(config)
  init_lm = init_lm_checkpoint(config)
  r = common.start(config, workdir)
  data = load_data(r)
  p = plan(config, r.mesh, data.vocab_size, data, r.workdir)
  chosen = _perturbation(p)
  out: dict[str, Any] = {"stages": {}}
  q0 = _initial_lm(p, r, init_lm, out)
  bases = {"initial": q0}
  if chosen is not None:
    perturb = jax.jit(dfine.set_output_bias, static_argnums=(1, 2), out_shardings=p.frozen_shardings["q0"])
    bases["perturbed"] = perturb(q0, chosen, float(config.perturb.bias))
  discs = {}
  for i, base in enumerate(p.disc_bases):
    result = stage.run_stage(disc_stage(p, base, i, bases[base]), r.mesh)
    discs[base], out["stages"][stage_name("disc", base)] = result.state.params, result.done
  finetuned, probes, evals = {}, {}, {}
  for i, (base, variant) in enumerate(p.runs):
    name = stage_name("ft", base, variant)
    probe = None
    if chosen is not None and config.finetune.get("probe_every", 0):
      probe, probes[name] = numbers.make_probe(p, chosen, bases[base], discs[base])
    result = stage.run_stage(finetune_stage(p, base, variant, i, bases[base], discs[base], probe), r.mesh)
    finetuned[(base, variant)], evals[(base, variant)] = result.state.params, result.done["eval"]
    out["stages"][name] = result.done
  if data.trigram is not None:
    out["report"] = numbers.table1(p, bases, finetuned, chosen)
    out["figure1"] = numbers.figure1(r.workdir, {stage_name("ft", *run_): run_ for run_ in p.runs}, probes)
  else:
    out["report"] = numbers.table2(p, q0, discs["initial"], evals)
  out["report"]["discriminators"] = {}
  for b in p.disc_bases:
    ev = out["stages"][stage_name("disc", b)]["eval"]
    out["report"]["discriminators"][stage_name("disc", b)] = {
      **ev["valid"], **({"start_loss": ev["valid_start"]["loss"]} if "valid_start" in ev else {}),
      "train_layers": str(config.discriminator.get("train_layers", "all"))}
  out.update(command=numbers.command(), jax_version=jax.__version__, wall_seconds=time.perf_counter() - t0,
             devices=f"{len(jax.devices())} {jax.devices()[0].platform} device(s)")
  report.write(out, config, r.workdir)
  stage.write_json(r.workdir / "results.json", out)
  r.writer.close()
  print(f"report written; {out['wall_seconds']:.0f} s", flush=True)
  return out
