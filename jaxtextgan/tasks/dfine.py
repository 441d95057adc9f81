"""`objective='dfine'`: fine-tune an LM with a discriminator (Popov & Kudinov), three checkpointed stages.

  stage1_lm/         the initial LM q0, trained on cross-entropy (or taken from `init_lm.workdir`)
  stage2_disc/       the discriminator r of eq. (6) against q0, on real contexts (stage2_disc_perturbed/ for the
                     perturbed model of §3 when `perturb.enabled`)
  stage3_finetune*/  the LM fine-tuned from q0 on eq. (12) (or a variant: `finetune.runs`)

Every stage lives in its own subdirectory of the workdir with its checkpoints, metrics.jsonl and, once finished, a
done.json holding its final evaluation. Rerunning the same command skips finished stages (their parameters are
restored from their last checkpoint) and resumes an unfinished one from its newest checkpoint and data position.
A finished stage whose configured `steps` grew is continued to the new count.

Data: `data.source` 'ptb' / 'text' (word blocks, Table 2 style) or 'trigram' (the synthetic corpus of Appendix A
with exact p, Table 1 and Figure 1). A report (Markdown table, PNG) is written at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import shutil
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxtextgan import checkpoint, loop, writers
from jaxtextgan import sharding as shd
from jaxtextgan import tokenizers as tok
from jaxtextgan.data import lm as lm_data
from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import dfine
from jaxtextgan.objectives import lm as lm_obj
from jaxtextgan.tasks import common

STAGE_LM = "stage1_lm"
STAGE_DISC = "stage2_disc"
STAGE_FT = "stage3_finetune"
BASES = ("initial", "perturbed")
VARIANTS = ("disc", "nodisc", "ce")
# Fields that may differ between a checkpoint and the model that reads it: they change no parameter.
_NON_ARCH_FIELDS = ("dropout", "remat", "dtype")


# Jitted functions shared by stages (and by repeated runs in one process): equal keys mean equal programs, so
# e.g. the two discriminators, or the fine-tune runs of one loss, compile once.
_JITS: dict = {}


def _cached(key, build: Callable):
  if key not in _JITS:
    _JITS[key] = build()
  return _JITS[key]


class Preempted(Exception):
  """SIGTERM arrived; the running stage saved a checkpoint."""


# --- data ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
  """Blocks (n, T+1) per split as int32 arrays, the vocabulary, and trigram extras (exact p) when synthetic."""
  blocks: dict[str, np.ndarray]
  vocab_size: int
  tokenizer_spec: str
  trigram: Any = None  # the TrigramLM
  sentences: dict[str, np.ndarray] | None = None
  test_log_p: np.ndarray | None = None


def _trigram_data(run: common.Run, dcfg) -> Data:
  from jaxtextgan.data import trigram as tg
  lm = tg.TrigramLM(seed=int(dcfg.trigram_seed), vocab_size=int(dcfg.trigram_vocab),
                    sentence_len=int(dcfg.sentence_len))
  sizes = {"train": int(dcfg.train_sentences), "valid": int(dcfg.valid_sentences), "test": int(dcfg.test_sentences)}
  key = json.dumps([repr(lm), sizes, int(dcfg.corpus_seed)])
  path = run.workdir / "cache" / f"trigram-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
  if path.is_file():
    with np.load(path) as z:
      sentences = {k: z[k] for k in sizes}
      test_log_p = z["test_log_p"]
  else:
    sentences = lm.corpus(seed=int(dcfg.corpus_seed), sizes=sizes)
    test_log_p = lm.log_prob(sentences["test"])
    if run.is_main:
      path.parent.mkdir(parents=True, exist_ok=True)
      np.savez(path, test_log_p=test_log_p, **sentences)
  if int(run.config.data.seq_len) != lm.sentence_len:
    raise InputError(f"data.seq_len={run.config.data.seq_len} differs from data.sentence_len={lm.sentence_len}: "
                     "a trigram block is one sentence, so set both to the same value")
  blocks = {}
  for name, sents in sentences.items():
    inputs, targets = lm.lm_blocks(sents)
    blocks[name] = np.concatenate([inputs[:, :1], targets], axis=1)  # [S, w1..wL]
  return Data(blocks=blocks, vocab_size=lm.vocab_size + 1, tokenizer_spec=f"trigram:{lm!r}", trigram=lm,
              sentences=sentences, test_log_p=test_log_p)


def _text_data(run: common.Run, cfg) -> Data:
  splits = common.text_splits(cfg.data)
  init_dir = cfg.init_lm.workdir
  if init_dir:
    # The initial LM's vocabulary is the one to use: load its tokenizer.
    saved = pathlib.Path(init_dir) / "tokenizer"
    if not saved.is_dir():
      raise InputError(f"init_lm.workdir={init_dir} has no tokenizer/ folder: point it to an LM workdir "
                       "(python -m jaxtextgan.main --config=configs/lm.py) or leave it empty to train stage 1 here")
    tokenizer = tok.load_tokenizer(saved)
  else:
    tokenizer = common.tokenizer_for(run.workdir, cfg.tokenizer.spec, splits["train"],
                                     cfg.tokenizer.get("vocab_size") or None)
  blocks = common.lm_blocks(run, cfg.data, tokenizer, splits)
  return Data(blocks={k: v.blocks for k, v in blocks.items()}, vocab_size=tokenizer.vocab_size,
              tokenizer_spec=tokenizer.spec)


def load_data(run: common.Run) -> Data:
  cfg = run.config
  if cfg.data.source == "trigram":
    return _trigram_data(run, cfg.data)
  return _text_data(run, cfg)


# --- models and checkpoints ------------------------------------------------------------------------------------


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


def restore_params(ckpt_dir: pathlib.Path, model_cfg: gpt2.GPT2Config, mesh, step: int):
  """Only the parameters of a saved TrainState (any optimizer), placed with this mesh's shardings."""
  abstract, shardings = dfine.param_shardings(model_cfg, mesh)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  manager = ocp.CheckpointManager(pathlib.Path(ckpt_dir).absolute(), item_names=("state", "meta"),
                                  options=ocp.CheckpointManagerOptions(create=False))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item={"params": target}, partial_restore=True,
                                   restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}))))
  finally:
    manager.close()
  return restored["state"]["params"]


def model_configs(cfg, vocab_size: int):
  """(LM, discriminator, fine-tuned LM) GPT2Configs; the discriminator is the LM's architecture unless overridden."""
  lm_cfg = common.model_config(cfg.model, vocab_size)
  common.check_seq_len(cfg.data.seq_len, lm_cfg)
  overrides = dict(cfg.discriminator.get("model_overrides", {}) or {})
  try:
    disc_cfg = lm_cfg.replace(**overrides)
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
  ft_cfg = lm_cfg.replace(dropout=float(cfg.finetune.dropout))
  return lm_cfg, disc_cfg, ft_cfg


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


# --- one stage -------------------------------------------------------------------------------------------------


def _opt_cfg(stage_cfg) -> ml_collections.ConfigDict:
  opt = ml_collections.ConfigDict(stage_cfg.optimizer.to_dict())
  opt.total_steps = int(stage_cfg.steps)
  return opt


def _put(mesh):
  return lambda b: shd.put_batch(b, mesh)


def run_stage(r: common.Run, data: Data, name: str, *, model_cfg: gpt2.GPT2Config, stage_cfg, make_step: Callable,
              step_key: tuple, frozen: dict, frozen_sh: dict, init_params, evaluate: Callable, seed: int, meta: dict,
              probe: Callable | None = None) -> tuple[Any, dict]:
  """Trains (or resumes, or skips) one stage; returns (final params, done record with the final evaluation).

  `make_step(graphdef)` gives the pure step (`step_key` names its program, for sharing compilations);
  `evaluate(graphdef, params)` the final metrics; `probe(state, step)`,
  if given, runs every stage_cfg.probe_every steps and is written to metrics.jsonl as split 'valid'.
  """
  stage_dir = r.workdir / name
  ckpt_dir = stage_dir / "checkpoints"
  steps = int(stage_cfg.steps)
  done_path = stage_dir / "done.json"
  done = json.loads(done_path.read_text()) if done_path.is_file() else None
  if done is not None and done["step"] >= steps:
    params = restore_params(ckpt_dir, model_cfg, r.mesh, done["step"])
    print(f"[{name}] finished at step {done['step']}: skipped", flush=True)
    return params, done

  t0 = time.perf_counter()
  if r.is_main:
    stage_dir.mkdir(parents=True, exist_ok=True)
  state, shardings = dfine.init_state(model_cfg, _opt_cfg(stage_cfg), jax.random.key(seed), r.mesh,
                                      params=init_params)
  data_iter = lm_data.BatchIterator(data.blocks["train"], r.config.data.batch_size, seed=seed,
                                    process_index=jax.process_index(), process_count=jax.process_count())
  ckpt = checkpoint.Checkpointer(ckpt_dir, keep=int(r.config.keep_checkpoints))
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, saved_meta, step = restored
    common.check_same_model(saved_meta, model_cfg, stage_dir)
    data_iter.restore(saved_meta["data"])
    print(f"[{name}] resumed from {ckpt_dir / str(step)} at step {step}", flush=True)
  model_dict = dataclasses.asdict(model_cfg)
  meta_fn = lambda: {"data": data_iter.state(), "model": model_dict, "tokenizer": data.tokenizer_spec, **meta}
  batch_sh = {k: shd.batch_sharding(r.mesh) for k in ("inputs", "targets")}
  opt_json = json.dumps(_opt_cfg(stage_cfg).to_dict(), sort_keys=True)
  jitted = _cached(("step", step_key, model_cfg, opt_json, r.mesh, tuple(sorted(frozen))),
                   lambda: dfine.jit_stage(make_step(state.graphdef), r.mesh, shardings, frozen_sh, batch_sh))
  step_fn = lambda s, b, k: jitted(s, frozen, b, k)
  writer = writers.MetricWriter(stage_dir, tensorboard=False)
  probe_every = int(stage_cfg.get("probe_every", 0) or 0)
  if probe is not None and probe_every and int(state.step) == 0:
    writer.write(0, probe(state, 0), "valid")
  result = loop.run(state=state, step_fn=step_fn, batches=data_iter, put=_put(r.mesh),
                    rng=jax.random.key(seed + 7919), total_steps=steps, checkpointer=ckpt, writer=writer,
                    meta_fn=meta_fn, log_every=int(stage_cfg.log_every),
                    checkpoint_every=int(stage_cfg.checkpoint_every), eval_every=probe_every if probe else 0,
                    eval_fn=probe, tokens_per_step=r.config.data.batch_size * r.config.data.seq_len, desc=name,
                    show_progress=bool(r.config.get("progress", True)))
  ckpt.close()
  if result.preempted:
    print(f"[{name}] SIGTERM: saved step {result.step}; run the same command again to resume", flush=True)
    raise Preempted(name)
  state = result.state
  final = evaluate(state.graphdef, state.params)
  if probe is not None and probe_every:
    writer.write(result.step, probe(state, result.step), "valid")
  writer.write(result.step, {k: v for k, v in _flat(final).items()}, "final")
  writer.close()
  done = {"step": result.step, "eval": final, "wall_seconds": time.perf_counter() - t0,
          "train": result.last_metrics}
  common.write_json(done_path, done)
  print(f"[{name}] done at step {result.step} in {done['wall_seconds']:.0f} s: "
        + ", ".join(f"{k}={v:.4g}" for k, v in _flat(final).items() if isinstance(v, float)), flush=True)
  return state.params, done


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    elif isinstance(v, (int, float)):
      out[f"{prefix}{k}"] = float(v)
  return out


# --- evaluations -----------------------------------------------------------------------------------------------


class Evaluator:
  """Jitted evaluations on the mesh, compiled once per graph and reused by every stage and row of the report."""

  def __init__(self, r: common.Run, data: Data, q0_graphdef, disc_graphdef, eps: float):
    self.r, self.data, self.eps = r, data, eps
    self.mesh = r.mesh
    self.bs = int(r.config.eval.batch_size)
    self.q0_graphdef, self.disc_graphdef = q0_graphdef, disc_graphdef
    self.ft_graphdef = None  # set by `run`: the fine-tuned model's graph (its dropout may differ from q0's)

  def _batches(self, split: str):
    return lm_data.eval_batches(self.data.blocks[split], self.bs, process_index=jax.process_index(),
                                process_count=jax.process_count())

  def _jit(self, key, fn):
    return _cached(("eval", key, self.q0_graphdef, self.disc_graphdef, self.eps, self.mesh), lambda: jax.jit(fn))

  def lm(self, graphdef, params, split: str) -> dict:
    """Cross-entropy perplexity and accuracy (objectives.lm)."""
    fn = self._jit(("lm", graphdef), lambda p, b: lm_obj.eval_step(_StateView(graphdef, p), b))
    totals = {"nll_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in self._batches(split):
      out = jax.device_get(fn(params, shd.put_batch(batch, self.mesh)))
      for k in totals:
        totals[k] += float(out[k])
    return lm_obj.summarize_eval(totals)

  def disc(self, graphdef, params, q0_params, split: str) -> dict:
    """Eq. (6) on real contexts of `split`, with its two terms and mean r on real and on q0's words."""
    ev = dfine.make_disc_eval(self.q0_graphdef)
    fn = self._jit(("disc", graphdef), lambda p, q0, b: ev(_StateView(graphdef, p), {"q0": q0}, b))
    totals: dict[str, float] = {}
    for batch in self._batches(split):
      out = jax.device_get(fn(params, q0_params, shd.put_batch(batch, self.mesh)))
      for k, v in out.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    return dfine.summarize_disc_eval(totals)

  def finetune(self, graphdef, params, q0_params, disc_params, split: str) -> dict:
    """Table 2 columns: loss (CE + reverse-KL estimate), perplexity, reverse KL (eq. 10-12 and exact over V)."""
    ev = dfine.make_finetune_eval(self.q0_graphdef, self.disc_graphdef, eps=self.eps)
    fn = self._jit(("ft", graphdef),
                   lambda p, q0, d, b: ev(_StateView(graphdef, p), {"q0": q0, "disc": d}, b))
    totals: dict[str, float] = {}
    for batch in self._batches(split):
      out = jax.device_get(fn(params, q0_params, disc_params, shd.put_batch(batch, self.mesh)))
      for k, v in out.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    return dfine.summarize_finetune_eval(totals)

  def token_log_probs(self, graphdef, params, split: str) -> np.ndarray:
    """log q(w_t | c_t) of every target of `split`, (n, T) float64 (padding rows dropped)."""
    fn = self._jit(("logq", graphdef), lambda p, b: dfine.token_log_probs(graphdef, p, b))
    rows = []
    for batch in self._batches(split):
      out = np.asarray(jax.device_get(fn(params, shd.put_batch(batch, self.mesh))), np.float64)
      rows.append(out[np.asarray(batch["mask"], bool)])
    return np.concatenate(rows)

  def table1_row(self, graphdef, params, frequent) -> dict:
    """Test perplexity on all, frequent and rare words, their ratio, and mean ± std of log q - log p."""
    from jaxtextgan.data import trigram as tg
    log_q = self.token_log_probs(graphdef, params, "test")
    targets = self.data.blocks["test"][:, 1:]
    row = tg.split_perplexity(log_q, targets, frequent)
    row["logq_minus_logp_mean"], row["logq_minus_logp_std"] = tg.log_ratio_stats(log_q, self.data.test_log_p)
    return row


@dataclasses.dataclass
class _StateView:
  """What the eval steps read from a TrainState: graphdef and params."""
  graphdef: Any
  params: Any


def _stage_done(r: common.Run, name: str, stage_cfg) -> bool:
  path = r.workdir / name / "done.json"
  return path.is_file() and json.loads(path.read_text())["step"] >= int(stage_cfg.steps)


def _disc_init(r: common.Run, data: Data, ev: "Evaluator", q0, q0_sh, disc_cfg, disc_psh):
  """The discriminator's starting parameters: q0's with a zeroed output layer (init 'lm'; r = 1/2 everywhere) or
  random ones (init 'scratch'), then, with bias_init 'unigram', the output bias set to the best context-free
  discriminator (dfine.unigram_logit) measured on the first `bias_init_blocks` training blocks (0: all of them;
  few blocks over a large vocabulary give noisy log-odds that are worse than r = 1/2 on held-out data)."""
  dcfg = r.config.discriminator
  if q0_sh is not None:
    params = jax.jit(dfine.zero_output_layer, out_shardings=disc_psh)(q0)
  else:
    params = None
  if dcfg.get("bias_init", "zero") == "zero":
    return params
  if dcfg.bias_init != "unigram":
    raise InputError(f"discriminator.bias_init={dcfg.bias_init!r} is unknown: use 'zero' or 'unigram'")
  if not disc_cfg.output_bias:
    raise InputError("discriminator.bias_init='unigram' sets the output bias, but the model has none: set "
                     "model.output_bias=True or discriminator.bias_init='zero'")
  if params is None:
    params = dfine.init_state(disc_cfg, _opt_cfg(dcfg), jax.random.key(r.config.seed + 17), r.mesh)[0].params
  blocks = data.blocks["train"][:int(dcfg.bias_init_blocks) or None]
  mass_fn = ev._jit(("q0_mass", ev.q0_graphdef), lambda p, b: dfine.q0_mass(ev.q0_graphdef, p, b))
  mass = np.zeros(data.vocab_size, np.float64)
  for batch in lm_data.eval_batches(blocks, ev.bs):
    mass += np.asarray(jax.device_get(mass_fn(q0, shd.put_batch(batch, r.mesh))), np.float64)
  counts = np.bincount(blocks[:, 1:].ravel(), minlength=data.vocab_size)
  bias = dfine.unigram_logit(mass, counts)
  return jax.jit(dfine.set_output_bias_vector, out_shardings=disc_psh)(params, bias)


# --- the command -----------------------------------------------------------------------------------------------


def init_lm_checkpoint(cfg) -> tuple[pathlib.Path, int] | None:
  """(checkpoint dir, newest step) of the existing LM named by `init_lm.workdir`, or None to train stage 1 here.

  Checked before anything is computed, so a wrong path fails at once.
  """
  init_dir = cfg.init_lm.workdir
  if not init_dir:
    return None
  ckpt_dir = pathlib.Path(init_dir) / "checkpoints"
  if not ckpt_dir.is_dir() or not any(p.name.isdigit() for p in ckpt_dir.iterdir()):
    raise InputError(f"init_lm.workdir={init_dir} has no stage-1 LM checkpoint in {ckpt_dir}: train it first "
                     "(python -m jaxtextgan.main --config=configs/lm.py --workdir=...) or leave init_lm.workdir "
                     "empty to train stage 1 here")
  return ckpt_dir, checkpoint.read_meta(ckpt_dir)[1]


def _perturbation(cfg, data: Data, lm_cfg) -> int | None:
  """The chosen word of §3 (rank `perturb.rank` by training frequency), or None when not perturbing."""
  if not cfg.perturb.enabled:
    return None
  if not lm_cfg.output_bias:
    raise InputError("perturb.enabled needs an output bias per word to perturb: set model.output_bias=True")
  from jaxtextgan.data import trigram as tg
  words = data.vocab_size - (1 if data.trigram is not None else 0)
  rank = int(cfg.perturb.rank)
  if not 1 <= rank <= words:
    raise InputError(f"perturb.rank={rank} is out of range: use a frequency rank in [1, {words}] (the paper's "
                     "'almost frequent' words are ranks 51-150)")
  ranking = tg.word_ranking(data.blocks["train"][:, 1:], words)
  return int(ranking[rank - 1])


def run(config, workdir) -> dict:
  """Runs (or resumes) the three stages and writes the report; returns every stage's final evaluation."""
  t0 = time.perf_counter()
  cfg = config
  runs = parse_runs(cfg.finetune.runs)
  if cfg.finetune.loss not in dfine.LOSSES or cfg.finetune.loss == "ce":
    raise InputError(f"finetune.loss={cfg.finetune.loss!r} is invalid: use 'dfine' (eq. 12) or 'dfine_kl' (exact "
                     "reverse KL); plain cross-entropy is the run variant 'ce'")
  eps = float(cfg.finetune.eps)
  dfine.logit_bound(eps)
  init_lm = init_lm_checkpoint(cfg)
  r = common.start(cfg, workdir)
  data = load_data(r)
  lm_cfg, disc_cfg, ft_cfg = model_configs(cfg, data.vocab_size)
  if init_lm is not None:
    meta, _ = checkpoint.read_meta(*init_lm)
    check_architecture(meta, lm_cfg, str(init_lm[0] / str(init_lm[1])),
                       "set config.model to the architecture it was trained with, or leave init_lm.workdir empty "
                       "to train stage 1 here")
    if meta.get("tokenizer") not in (None, data.tokenizer_spec):
      raise InputError(f"init_lm.workdir={cfg.init_lm.workdir} was trained with tokenizer {meta['tokenizer']}, "
                       f"not {data.tokenizer_spec}: use the data and tokenizer it was trained on")
  chosen = _perturbation(cfg, data, lm_cfg)
  if any(base == "perturbed" for base, _ in runs) and chosen is None:
    raise InputError("finetune.runs uses the 'perturbed' base but perturb.enabled is False: enable it or drop "
                     "those runs")

  mesh = r.mesh
  _, lm_psh = dfine.param_shardings(lm_cfg, mesh)
  _, disc_psh = dfine.param_shardings(disc_cfg, mesh)
  q0_graphdef, disc_graphdef = dfine.graphdef_of(lm_cfg), dfine.graphdef_of(disc_cfg)
  ev = Evaluator(r, data, q0_graphdef, disc_graphdef, eps)
  ev.ft_graphdef = dfine.graphdef_of(ft_cfg)
  out: dict[str, Any] = {"stages": {}}

  try:
    # Stage 1: the initial LM q0.
    if init_lm is not None:
      ckpt_dir, step = init_lm
      lm_params = restore_params(ckpt_dir, lm_cfg, mesh, step)
      print(f"[{STAGE_LM}] initial LM from {ckpt_dir / str(step)}", flush=True)
    else:
      lm_params, done = run_stage(
        r, data, STAGE_LM, model_cfg=lm_cfg, stage_cfg=cfg.lm, frozen={}, frozen_sh={},
        make_step=lambda g: (lambda s, f, b, k: lm_obj.train_step(s, b, k)), step_key=("lm",), init_params=None,
        evaluate=lambda g, p: {"valid": ev.lm(g, p, "valid")}, seed=cfg.seed, meta={"objective": "lm"})
      out["stages"][STAGE_LM] = done
      if r.is_main and data.trigram is None and (r.workdir / "tokenizer").is_dir():
        # Stage 1 is then itself an LM workdir that another run can name in init_lm.workdir.
        shutil.copytree(r.workdir / "tokenizer", r.workdir / STAGE_LM / "tokenizer", dirs_exist_ok=True)

    bases = {"initial": lm_params}
    if chosen is not None:
      bases["perturbed"] = jax.jit(lambda p: dfine.set_output_bias(p, chosen, float(cfg.perturb.bias)),
                                   out_shardings=lm_psh)(lm_params)

    # Stage 2: a discriminator against each q0 that a fine-tune run starts from.
    discs = {}
    for i, base in enumerate(b for b in BASES if any(rb == b for rb, _ in runs)):
      q0 = bases[base]
      name = stage_name("disc", base)
      init = None
      if not _stage_done(r, name, cfg.discriminator):
        init = _disc_init(r, data, ev, q0, lm_psh if cfg.discriminator.init == "lm" else None, disc_cfg, disc_psh)
      discs[base], done = run_stage(
        r, data, name, model_cfg=disc_cfg, stage_cfg=cfg.discriminator, frozen={"q0": q0}, frozen_sh={"q0": lm_psh},
        make_step=lambda g: dfine.make_disc_step(q0_graphdef), step_key=("disc", lm_cfg), init_params=init,
        evaluate=lambda g, p, q0=q0: {"valid": ev.disc(g, p, q0, "valid")}, seed=cfg.seed + 100 * (i + 1),
        meta={"objective": "dfine_disc", "base": base})
      out["stages"][name] = done

    # Stage 3: fine-tuning runs.
    finetuned = {}
    for i, (base, variant) in enumerate(runs):
      q0, disc = bases[base], discs[base]
      name = stage_name("ft", base, variant)
      kind = "ce" if variant == "ce" else cfg.finetune.loss
      use_disc = variant == "disc"
      frozen = {"q0": q0, "disc": disc} if use_disc else {"q0": q0}
      frozen_sh = {"q0": lm_psh, "disc": disc_psh} if use_disc else {"q0": lm_psh}
      probe = _make_probe(r, data, ev, chosen, q0, disc, base, name) if (
        chosen is not None and cfg.finetune.get("probe_every", 0)) else None
      finetuned[(base, variant)], done = run_stage(
        r, data, name, model_cfg=ft_cfg, stage_cfg=cfg.finetune, frozen=frozen, frozen_sh=frozen_sh,
        make_step=lambda g, kind=kind, use_disc=use_disc: dfine.make_finetune_step(
          q0_graphdef, disc_graphdef if use_disc else None, kind=kind, eps=eps),
        step_key=("ft", lm_cfg, disc_cfg, kind, use_disc, eps), init_params=q0, probe=probe,
        evaluate=lambda g, p, q0=q0, disc=disc: {s: ev.finetune(g, p, q0, disc, s) for s in ("valid", "test")
                                                 if s in data.blocks},
        seed=cfg.seed + 1000 * (i + 1), meta={"objective": "dfine_finetune", "base": base, "variant": variant,
                                              "loss": kind})
      out["stages"][name] = done
  except Preempted:
    out["preempted"] = True
    return out

  out["wall_seconds"] = time.perf_counter() - t0
  report = write_report(r, data, ev, bases, discs, finetuned, runs, chosen, out)
  out["report"] = report
  common.write_json(r.workdir / "results.json", out)
  r.writer.close()
  print(f"report written; {out['wall_seconds']:.0f} s", flush=True)
  return out


# --- Figure 1 probe --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=1)
def _probe_prob(params, graphdef, context, col, word):
  """qθ(word | context[:col + 1])."""
  return jax.nn.softmax(dfine._logits(graphdef, params, context)[0, col])[word]


def _make_probe(r, data: Data, ev: Evaluator, chosen: int, q0, disc, base: str, name: str):
  """qθ(chosen | c) at one fixed test context c (Figure 1, right), plus validation perplexity every
  finetune.valid_every steps (Figure 1, left). c is the test context where the chosen word is most probable
  under the true p (trigram data), else where q0 gives it the most probability."""
  inputs = data.blocks["test"][:, :-1]
  targets = data.blocks["test"][:, 1:]
  rows, cols = np.nonzero(targets == chosen)
  if rows.size == 0:
    return None
  if data.test_log_p is not None:
    best = int(np.argmax(data.test_log_p[rows, cols]))
  else:
    best = 0
  row, col = int(rows[best]), int(cols[best])
  context = jnp.asarray(inputs[row:row + 1])
  fn = lambda params, graphdef: _probe_prob(params, graphdef, context, col, chosen)
  valid_every = int(r.config.finetune.get("valid_every", 0) or 0)

  def probe(state, step):
    out = {"q_chosen": float(fn(state.params, state.graphdef))}
    if valid_every and step % valid_every == 0:
      out.update(ev.lm(state.graphdef, state.params, "valid"))
    return out

  meta = {"row": row, "position": col, "word": chosen}
  if data.trigram is not None:
    meta["p_true"] = float(np.exp(data.test_log_p[row, col]))
  q0_logp = jax.nn.log_softmax(dfine._logits(ev.q0_graphdef, q0, context)[0, col])
  d_logits = dfine._logits(ev.disc_graphdef, disc, context)[0, col]
  meta["q0"] = float(jnp.exp(q0_logp[chosen]))
  meta["p_hat"] = float(jnp.exp(dfine.log_p_hat(q0_logp, d_logits, ev.eps)[chosen]))
  common.write_json(r.workdir / f"{name}_probe.json", meta) if r.is_main else None
  return probe


# --- report ----------------------------------------------------------------------------------------------------


def _command() -> str:
  argv = sys.argv
  if argv and argv[0].endswith(("main.py", "jaxtextgan")):
    return "python -m jaxtextgan.main " + " ".join(argv[1:])
  return "(called from Python: jaxtextgan.tasks.dfine.run)"


def write_report(r, data: Data, ev: Evaluator, bases, discs, finetuned, runs, chosen, out) -> dict:
  """Table 1 (trigram) or Table 2 (text) as Markdown, in the workdir and at config.report.markdown."""
  cfg = r.config
  if data.trigram is not None:
    rep, md = _table1(r, data, ev, bases, finetuned, runs, chosen, out)
  else:
    rep, md = _table2(r, data, ev, bases, discs, finetuned, runs, out)
  stage_rows = "\n".join(f"| {name} | {s['step']} | {s.get('wall_seconds', 0.0):.0f} |"
                         for name, s in out["stages"].items())
  md += ("\n\n### Stages\n\n| stage | steps | wall s (run that finished it) |\n|---|---|---|\n" + stage_rows + "\n")
  md = (f"Command: `{_command()}`\n\nSeed: {cfg.seed}. "
        f"Wall time of this invocation: {out['wall_seconds'] / 60:.1f} min "
        f"(2-core shared CPU; JAX {jax.__version__}, {len(jax.devices())} device(s)).\n\n" + md)
  title = cfg.report.get("title", "LM fine-tuning with a discriminator")
  md = f"# {title}\n\n" + md
  if r.is_main:
    (r.workdir / "report.md").write_text(md, encoding="utf-8")
    if cfg.report.get("markdown"):
      writers.write_report(cfg.report.markdown, md)
  return rep


def _table1(r, data, ev, bases, finetuned, runs, chosen, out):
  from jaxtextgan.data import trigram as tg
  cfg = r.config
  words = data.vocab_size - 1
  frequent = tg.frequent_ids(data.blocks["train"][:, 1:], int(cfg.report.frequent), words)
  test = data.blocks["test"][:, 1:]
  true = tg.split_perplexity(data.test_log_p, test, frequent)
  rows = [("True distribution p", true, False)]
  lm_graph = ev.q0_graphdef
  rows.append(("Initial model", ev.table1_row(lm_graph, bases["initial"], frequent), True))
  ft_graph = ev.ft_graphdef
  labels = {"disc": "ftd.", "nodisc": "ftd. without discriminator", "ce": "ftd. with cross-entropy only"}
  for base in ("initial", "perturbed"):
    if base == "perturbed" and "perturbed" in bases:
      rows.append(("Perturbed model", ev.table1_row(lm_graph, bases["perturbed"], frequent), True))
    for (b, variant), params in finetuned.items():
      if b == base:
        rows.append((f"{base.capitalize()} model {labels[variant]}", ev.table1_row(ft_graph, params, frequent), True))
  lines = ["| Estimating with | Test ppl. | Freq. ppl. | Rare ppl. | Ratio | log q − log p |",
           "|---|---|---|---|---|---|"]
  for label, row, has_stats in rows:
    stats = (f"{row['logq_minus_logp_mean']:.3f} ± {row['logq_minus_logp_std']:.3f}" if has_stats else "")
    lines.append(f"| {label} | {row['ppl']:.2f} | {row['frequent_ppl']:.2f} | {row['rare_ppl']:.2f} | "
                 f"{row['ratio']:.1f} | {stats} |")
  md = "## Table 1 (synthetic trigram data)\n\n" + "\n".join(lines)
  rep = {"table1": {label: row for label, row, _ in rows}}
  if chosen is not None:
    ranking = tg.word_ranking(data.blocks["train"][:, 1:], words)
    rank = int(np.nonzero(ranking == chosen)[0][0]) + 1
    log_q = {k: ev.token_log_probs(lm_graph, bases[k], "test") for k in bases}
    at = test == chosen
    q_mean = {k: float(np.exp(v[at]).mean()) for k, v in log_q.items()}
    for (b, variant), params in finetuned.items():
      q_mean[f"{b}:{variant}"] = float(np.exp(ev.token_log_probs(ft_graph, params, "test")[at]).mean())
    p_mean = float(np.exp(data.test_log_p[at]).mean())
    init_ppl = rep["table1"]["Initial model"]["ppl"]
    pert_ppl = rep["table1"]["Perturbed model"]["ppl"]
    gap = pert_ppl - init_ppl
    recovered = {label: (pert_ppl - row["ppl"]) / gap for label, row, _ in rows
                 if label.startswith("Perturbed model ftd") and gap > 0}
    md += (f"\n\nChosen word: id {chosen} (training-frequency rank {rank}), output bias set to {cfg.perturb.bias}. "
           f"Mean probability at its {int(at.sum())} test occurrences: true p {p_mean:.2e}, "
           + ", ".join(f"{k} {v:.2e}" for k, v in q_mean.items()) + ".\n\n"
           f"Gap perturbed − initial test ppl: {gap:.2f}; share recovered by fine-tuning: "
           + ", ".join(f"{k}: {100 * v:.0f}%" for k, v in recovered.items())
           + " (the paper: (86.01 − 85.63)/(86.01 − 84.89) = 34%).")
    rep.update({"chosen_word": chosen, "chosen_rank": rank, "q_chosen_mean": q_mean, "p_chosen_mean": p_mean,
                "gap_recovered": recovered})
    md += "\n\n" + _figure1(r, finetuned, chosen)
  disc_lines = [f"| {name} | {s['eval']['valid']['loss']:.4f} | {s['eval']['valid']['d_q']:.4f} | "
                f"{s['eval']['valid']['d_p']:.4f} | {s['eval']['valid']['r_model']:.4f} | "
                f"{s['eval']['valid']['r_real']:.4f} |"
                for name, s in out["stages"].items() if name.startswith(STAGE_DISC)]
  if disc_lines:
    md += ("\n\n### Discriminators (validation, eq. 6; log 4 = 1.3863 when q0 = p)\n\n"
           "| stage | D | D^(q) | D^(p) | E_q0 r | r(w*) |\n|---|---|---|---|---|---|\n" + "\n".join(disc_lines))
  return rep, md


def _figure1(r, finetuned, chosen) -> str:
  """Figure 1: validation perplexity and qθ(chosen | c) over fine-tuning steps, one curve per run."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cfg = r.config
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  probe_meta = None
  for (base, variant) in finetuned:
    name = stage_name("ft", base, variant)
    rows = [x for x in writers.read_metrics(r.workdir / name / "metrics.jsonl") if x.get("split") == "valid"]
    meta_path = r.workdir / f"{name}_probe.json"
    if not rows or not meta_path.is_file():
      continue
    probe_meta = json.loads(meta_path.read_text())
    label = f"{base}, {'ours (eq. 12)' if variant == 'disc' else variant}"
    ppl = dict((x["step"], x["perplexity"]) for x in rows if "perplexity" in x)
    q = dict((x["step"], x["q_chosen"]) for x in rows if "q_chosen" in x)
    axes[0].plot(sorted(ppl), [ppl[s] for s in sorted(ppl)], marker=".", label=label)
    axes[1].plot(sorted(q), [q[s] for s in sorted(q)], label=label)
    if variant == "disc":
      axes[1].axhline(probe_meta["p_hat"], ls=":", color="gray", label=f"p̂ from the discriminator ({base})")
  if probe_meta is None:
    plt.close(fig)
    return ""
  if "p_true" in probe_meta:
    axes[1].axhline(probe_meta["p_true"], ls="--", color="k", label="true p")
  axes[0].set_title("validation perplexity")
  axes[1].set_title(f"q(chosen word {chosen} | fixed context)")
  axes[1].set_yscale("log")
  for ax in axes:
    ax.set_xlabel("fine-tuning step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  png = r.workdir / "figure1.png"
  if r.is_main:
    fig.savefig(png, dpi=110)
    if cfg.report.get("figure"):
      dest = pathlib.Path(cfg.report.figure)
      dest.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(png, dest)
  plt.close(fig)
  where = cfg.report.get("figure") or str(png)
  return (f"Figure 1 ({pathlib.Path(where).name}): validation perplexity and the chosen word's probability at test "
          f"context row {probe_meta['row']}, position {probe_meta['position']} (true p "
          f"{probe_meta.get('p_true', float('nan')):.2e}, perturbed q0 {probe_meta['q0']:.2e}, discriminator's "
          f"p̂ {probe_meta['p_hat']:.2e}) over fine-tuning steps.")


def _table2(r, data, ev, bases, discs, finetuned, runs, out):
  """Table 2: validation loss (CE + reverse-KL estimate), validation ppl, reverse KL, test ppl."""
  q0, disc = bases["initial"], discs["initial"]
  initial = {s: ev.finetune(ev.q0_graphdef, q0, q0, disc, s) for s in ("valid", "test") if s in data.blocks}
  rows = [("Initial model", initial)]
  labels = {"disc": "Without dropout, with discriminator",
            "nodisc": "Without dropout, without discriminator (r ≡ 1/2)",
            "ce": "Without dropout, cross-entropy only"}
  for (base, variant) in finetuned:
    if base == "initial":
      rows.append((labels[variant], out["stages"][stage_name("ft", base, variant)]["eval"]))
  lines = ["| Fine-tuning option | Val. loss | Val. ppl. | Val. rev. KL (eq. 10-12) | Val. rev. KL (exact over V) "
           "| Test ppl. |", "|---|---|---|---|---|---|"]
  for label, e in rows:
    v, t = e["valid"], e.get("test")
    lines.append(f"| {label} | {v['loss']:.5f} | {v['perplexity']:.2f} | {v['rkl']:.5f} | {v['rkl_exact']:.5f} | "
                 f"{t['perplexity']:.2f} |" if t else f"| {label} | {v['loss']:.5f} | {v['perplexity']:.2f} | "
                 f"{v['rkl']:.5f} | {v['rkl_exact']:.5f} | – |")
  md = ("## Table 2 style (reverse KL estimated with the trained discriminator for every row)\n\n" + "\n".join(lines)
        + "\n\nVal. loss is the fine-tuning objective eq. (12) on validation: cross-entropy (= log Val. ppl.) "
        "+ Val. rev. KL (eq. 10-12), in nats per word.")
  disc_stage = out["stages"].get(STAGE_DISC)
  if disc_stage:
    d = disc_stage["eval"]["valid"]
    md += (f"\n\nDiscriminator (validation): D = {d['loss']:.4f} (log 4 = 1.3863 if q0 = p), D^(q) = {d['d_q']:.4f}, "
           f"D^(p) = {d['d_p']:.4f}, E_q0 r = {d['r_model']:.4f}, r(w*) = {d['r_real']:.4f}.")
  return {"table2": {label: e for label, e in rows}}, md
