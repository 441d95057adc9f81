"""`objective='gan'`: MLE-pretrain G's GPT-2, then train the Gumbel-Softmax GAN; score G's samples before and after.

Workdir layout: pretrain/ (an LM workdir: checkpoints whose meta matches `objective='lm'`, its own metrics),
checkpoints/ (the GAN state), samples_before.txt, samples_after.txt (= samples.txt), metrics.jsonl, tensorboard/,
gan_curves.png, results.json. Every phase resumes from its checkpoints; a finished run prints its results again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxtextgan import checkpoint, evaluation, frontier, metrics, stage, training, writers
from jaxtextgan import sharding as shd
from jaxtextgan.data import corpus
from jaxtextgan.data import lm as lm_data
from jaxtextgan.errors import InputError
from jaxtextgan.models import discriminator as disc_lib
from jaxtextgan.models import generator as gen_lib
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import gan
from jaxtextgan.reports import gan as report
from jaxtextgan.tasks import common
from jaxtextgan.tasks import lm as lm_task

# --- data ------------------------------------------------------------------------------------------------------


def text_data(workdir, cfg) -> corpus.Corpus:
  """PTB / text files / TFDS through a tokenizer, or shards (`common.text_corpus`: G's MLE pre-training reads the
  train shards through Grain; the GAN's real sentences are a bounded sample of them, `ShardSplit.sentence_starts`;
  valid and test are read whole): G starts after the end-of-sentence token."""
  data = common.text_corpus(workdir, cfg)
  if data.tokenizer.eos_id is None:
    raise InputError(f"tokenizer {data.tokenizer_spec} has no end-of-sequence token: G needs one to start from")
  if "valid" not in data.blocks:
    raise InputError("the corpus has no valid split: BLEU needs held-out sentences, pass data.valid_file")
  return data


def trigram_data(cfg) -> corpus.Corpus:
  """The synthetic trigram oracle: word ids 0..V-1 plus the start token V, which G starts from and never emits."""
  from jaxtextgan.data import trigram
  tcfg = cfg.data.trigram
  if cfg.generator.length != tcfg.sentence_len:
    raise InputError(f"generator.length={cfg.generator.length} differs from data.trigram.sentence_len="
                     f"{tcfg.sentence_len}: G must generate whole oracle sentences; set them equal")
  oracle = trigram.TrigramLM(seed=tcfg.seed, vocab_size=tcfg.vocab_size, sentence_len=tcfg.sentence_len)
  sentences = oracle.corpus(sizes={"train": tcfg.train, "valid": tcfg.valid, "test": tcfg.test})
  return corpus.oracle_corpus(oracle, sentences, f"trigram:v{tcfg.vocab_size}:l{tcfg.sentence_len}:s{tcfg.seed}")


def data_shapes(config) -> corpus.Corpus:
  """A Corpus with the run's vocabulary and array shapes but no text, for --dry_run (it builds the tokenizer only
  when the config does not give the vocabulary)."""
  if config.data.source == "trigram":
    t = config.data.trigram
    vocab, bos, forbidden, seq_len = t.vocab_size + 1, t.vocab_size, (t.vocab_size,), t.sentence_len
  else:
    tokenizer = None if config.model.vocab_size else common.build_tokenizer(config)
    vocab = config.model.vocab_size or tokenizer.vocab_size
    bos, forbidden, seq_len = (tokenizer.eos_id or 0) if tokenizer else 0, (), config.data.seq_len
  blocks = np.zeros((config.data.batch_size, seq_len + 1), np.int32)
  return corpus.Corpus(blocks={"train": blocks}, vocab_size=vocab, tokenizer_spec="dry-run", bos_id=bos,
                       forbidden_ids=forbidden)


def load_data(workdir, cfg) -> corpus.Corpus:
  return trigram_data(cfg) if cfg.data.source == "trigram" else text_data(writers.workdir_path(workdir), cfg)


class RealBatches:
  """Endless, resumable {"real": (B, n_critic, T)} batches of real sequences (one (B, T) batch per critic step)."""

  def __init__(self, real: np.ndarray, batch_size: int, n_critic: int, seed: int):
    self.n_critic = n_critic
    self.iterator = lm_data.BatchIterator(real, batch_size * n_critic, seed=seed, process_index=jax.process_index(),
                                          process_count=jax.process_count())

  def __iter__(self):
    return self

  def __next__(self):
    targets = next(self.iterator)["targets"]
    return {"real": targets.reshape(-1, self.n_critic, targets.shape[-1])}

  def state(self):
    return self.iterator.state()

  def restore(self, state):
    self.iterator.restore(state)


# --- options -----------------------------------------------------------------------------------------------------


def check_options(cfg, mesh) -> None:
  """One-line InputErrors for bad or conflicting options, before anything is built."""
  g = cfg.generator
  if g.kind == "mlp" and g.init_from:
    raise InputError(f"generator='mlp' conflicts with generator.init_from={g.init_from!r}: an LM checkpoint can only "
                     "initialise the GPT-2 generator; drop init_from or use generator.kind='gpt2'")
  if g.kind == "mlp" and cfg.pretrain.steps > 0:
    raise InputError(f"generator='mlp' conflicts with pretrain.steps={cfg.pretrain.steps}: MLE pre-training trains "
                     "a GPT-2 generator; set pretrain.steps=0 or use generator.kind='gpt2'")
  if g.init_from and cfg.pretrain.steps > 0:
    raise InputError(f"generator.init_from={g.init_from!r} conflicts with pretrain.steps={cfg.pretrain.steps}: "
                     "G starts from that checkpoint; set pretrain.steps=0 or drop init_from")
  if cfg.discriminator.init_from_lm and (cfg.discriminator.kind != "transformer" or g.kind != "gpt2"):
    raise InputError(f"discriminator.init_from_lm=True conflicts with discriminator.kind={cfg.discriminator.kind!r} / "
                     f"generator.kind={g.kind!r}: D copies G's GPT-2; use both 'transformer'/'gpt2' or set it False")
  if cfg.discriminator.init_from_lm and not g.init_from and cfg.pretrain.steps <= 0:
    raise InputError("discriminator.init_from_lm=True needs G's pre-trained LM: set pretrain.steps > 0 or "
                     "generator.init_from, or set discriminator.init_from_lm=False")
  if cfg.sample.num < 2:
    raise InputError(f"sample.num={cfg.sample.num} gives an empty sample set: Self-BLEU and BLEU need at least 2 "
                     "samples; use e.g. sample.num=400")
  if cfg.gan.eval_every and cfg.gan.eval_samples < 2:
    raise InputError(f"gan.eval_samples={cfg.gan.eval_samples} gives an empty sample set: use at least 2 "
                     "(or gan.eval_every=0)")
  if cfg.gan.steps < 1:
    raise InputError(f"gan.steps={cfg.gan.steps} is invalid: use at least 1 GAN step")
  if cfg.gan.get("d_warmup_steps", 0) < 0:
    raise InputError(f"gan.d_warmup_steps={cfg.gan.d_warmup_steps} is negative: use 0 (no warm-up) or more")
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if cfg.gan.batch_size % shards:
    raise InputError(f"gan.batch_size={cfg.gan.batch_size} is not divisible by the {shards} data shards of "
                     f"mesh {tuple(mesh.shape.values())}: use a multiple of {shards}")


def gan_config(cfg) -> gan.GANConfig:
  t = cfg.gan.tau
  return gan.GANConfig(loss=cfg.gan.loss, n_critic=cfg.gan.n_critic, gp_weight=cfg.gan.gp_weight,
                       batch_size=cfg.gan.batch_size, hard=cfg.gan.hard, temperature=cfg.gan.temperature,
                       tau=gan.TauSchedule(t.kind, t.start, t.end, cfg.gan.steps))


def generator_config(cfg, data: corpus.Corpus) -> gen_lib.GeneratorConfig:
  g = cfg.generator
  return gen_lib.GeneratorConfig(kind=g.kind, length=g.length, latent_dim=g.latent_dim, bos_id=data.bos_id,
                                 forbidden_ids=data.forbidden_ids, mlp_hidden=tuple(g.mlp_hidden))


def discriminator_config(cfg, data: corpus.Corpus, lm_cfg: gpt2.GPT2Config) -> disc_lib.DiscriminatorConfig:
  """D's config; with init_from_lm its encoder is G's LM config (dropout from the discriminator block)."""
  d = cfg.discriminator
  encoder = lm_cfg.replace(dropout=d.dropout) if d.get("init_from_lm") else None
  return disc_lib.DiscriminatorConfig(kind=d.kind, vocab_size=data.vocab_size, max_len=cfg.generator.length,
                                      n_layer=d.n_layer, d_model=d.d_model, n_head=d.n_head, d_ff=d.d_ff,
                                      dropout=d.dropout, pooling=d.pooling, widths=tuple(d.widths),
                                      filters=d.filters, encoder=encoder)


def _with_total(opt_cfg, total_steps: int) -> dict:
  out = dict(opt_cfg)
  out["total_steps"] = total_steps
  return out


@dataclasses.dataclass
class Setup:
  """The static configs of a GAN run: G, its GPT-2, D, the GAN objective and both optimizers."""
  gan_cfg: gan.GANConfig
  gen_cfg: gen_lib.GeneratorConfig
  disc_cfg: disc_lib.DiscriminatorConfig
  lm_cfg: gpt2.GPT2Config
  g_opt: dict
  d_opt: dict

  @property
  def init(self):
    """The pure `rng -> GANState` initialiser."""
    return gan.make_state_fn(self.gen_cfg, self.lm_cfg, self.disc_cfg, self.g_opt, self.d_opt)

  @property
  def g_graphdef(self):
    return jax.eval_shape(self.init, jax.random.key(0)).g.graphdef

  def checkpoint_meta(self) -> dict:
    """What a GAN checkpoint records about the models, compared on resume."""
    return {"model": dataclasses.asdict(self.lm_cfg), "generator": dataclasses.asdict(self.gen_cfg),
            "discriminator": dataclasses.asdict(self.disc_cfg), "loss": self.gan_cfg.loss}


def setup(cfg, data: corpus.Corpus, lm_cfg: gpt2.GPT2Config) -> Setup:
  gen_cfg = generator_config(cfg, data)
  if gen_cfg.kind == "gpt2" and gen_cfg.length > lm_cfg.max_len:
    raise InputError(f"generator.length={gen_cfg.length} exceeds model.max_len={lm_cfg.max_len}: lower the length")
  disc_cfg = discriminator_config(cfg, data, lm_cfg)
  g_opt = _with_total(cfg.g_optimizer, cfg.gan.steps)
  d_opt = _with_total(cfg.d_optimizer, cfg.gan.steps * cfg.gan.n_critic + cfg.gan.get("d_warmup_steps", 0))
  return Setup(gan_config(cfg), gen_cfg, disc_cfg, lm_cfg, g_opt, d_opt)


def lm_config(cfg, data: corpus.Corpus) -> gpt2.GPT2Config:
  """G's GPT-2 config: the init_from checkpoint's, else config.model with the data's vocabulary."""
  if cfg.generator.init_from:
    meta, _ = checkpoint.read_meta(_checkpoint_dir(writers.workdir_path(cfg.generator.init_from)))
    return gpt2.GPT2Config(**meta["model"])
  return common.model_config(cfg.model, data.vocab_size)


def load_trained(config, workdir, mesh) -> tuple[Setup, gan.GANState, corpus.Corpus]:
  """The setup of a finished GAN run in `workdir` (run with `config`), its state from the last checkpoint, and its
  data."""
  workdir = writers.workdir_path(workdir)
  data = load_data(workdir, config)
  s = setup(config, data, lm_config(config, data))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  restored = ckpt.restore_latest(stage.shardings_of(s.init, mesh)[0])
  ckpt.close()
  if restored is None:
    raise InputError(f"no GAN checkpoint in {workdir / 'checkpoints'}: train the GAN first")
  return s, restored[0], data


# --- G's language model: MLE pre-training or an LM checkpoint ----------------------------------------------------


def _checkpoint_dir(path):
  return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def restore_lm_params(path, data_spec: str, mesh):
  """(GPT2Config, params, step) of the newest checkpoint of an LM workdir; only its params are read.

  The checkpoint's tokenizer must be the data's: token ids would otherwise mean other words.
  """
  ckpt_dir = _checkpoint_dir(writers.workdir_path(path))
  meta, step = checkpoint.read_meta(ckpt_dir)
  if meta.get("tokenizer") != data_spec:
    raise InputError(f"tokenizer mismatch between the G checkpoint and the data: {ckpt_dir} was trained with "
                     f"{meta.get('tokenizer')!r}, the data is tokenized as {data_spec!r}; use the LM's tokenizer "
                     "and corpus, or another generator.init_from")
  if "model" not in meta:
    raise InputError(f"checkpoint {ckpt_dir / str(step)} records no model config: it is not an LM checkpoint")
  model_cfg = gpt2.GPT2Config(**meta["model"])
  abstract = nnx.eval_shape(lambda: nnx.split(gpt2.GPT2(model_cfg, rngs=nnx.Rngs(0)), nnx.Param)[1])
  shardings = shd.state_shardings(abstract, mesh)
  target = {"params": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                   shardings)}
  manager = ocp.CheckpointManager(ckpt_dir, item_names=("state", "meta"))
  try:
    # Partial restore: the LM's optimizer state (whatever its optimizer) is not needed.
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
  finally:
    manager.close()
  return model_cfg, restored["state"]["params"], step


def pretrain_stage(run: common.Run | None, cfg, data: corpus.Corpus, lm_cfg: gpt2.GPT2Config) -> stage.Stage:
  """Phase 1: MLE (eq. 1-2) on G's GPT-2 in <workdir>/pretrain, an LM workdir that `generator.init_from` can name."""
  mesh = run.mesh if run is not None else None
  return lm_task.lm_stage(
    "pretrain", run.workdir / "pretrain" if run is not None else None, lm_cfg, cfg.pretrain.optimizer,
    data.blocks["train"], batch_size=cfg.data.batch_size, seed=cfg.seed, rng_seed=cfg.seed + 1,
    num_steps=cfg.pretrain.steps, meta={"tokenizer": data.tokenizer_spec, "objective": "lm"}, keep=1,
    log_every=cfg.pretrain.log_every, checkpoint_every=cfg.pretrain.checkpoint_every, desc="pretrain G (MLE)",
    evaluate=lambda s: lm_task.evaluate_splits(s, data, ("valid",), cfg.eval, mesh))


def _select_lm(g_graphdef, g_params):
  """(graphdef, params) of G's GPT-2 inside G."""
  return nnx.split(nnx.merge(g_graphdef, g_params).lm, nnx.Param)


# --- evaluation of G's samples -----------------------------------------------------------------------------------


class GeneratorEval:
  """Samples G and scores the samples: BLEU-2..5 vs held-out sentences, Self-BLEU, distinct-n, NLL-oracle for the
  trigram source, and `nll_test`: the test NLL of G's GPT-2 read as a plain LM (`evaluation.perplexity` of the test
  split: no z, temperature 1, no forbidden ids), which is not G's likelihood; G's own, at its sampling temperature,
  is the frontier's (`jaxtextgan.frontier`)."""

  def __init__(self, run: common.Run, cfg, data: corpus.Corpus, gan_cfg: gan.GANConfig, gen_cfg, g_graphdef):
    self.run, self.cfg, self.data, self.gen_cfg = run, cfg, data, gen_cfg
    self.gan_cfg, self.g_graphdef = gan_cfg, g_graphdef
    self.references = data.sentences_of("valid")
    self._samplers = {}

  def sample_ids(self, g_params, num: int, seed: int) -> np.ndarray:
    if num not in self._samplers:
      self._samplers[num] = gan.make_sampler(self.gan_cfg, self.gen_cfg.latent_dim, self.g_graphdef, num)
    return np.asarray(jax.device_get(self._samplers[num](g_params, jax.random.key(seed))))

  def __call__(self, g_params, num: int, seed: int, *, with_nll_test: bool = True):
    """(metrics, sample texts)."""
    ids = self.sample_ids(g_params, num, seed)
    hyps = [self.data.sentence(row) for row in ids]
    out = metrics.sequence_metrics(hyps, self.references, max_references=self.cfg.eval.max_references,
                                   max_self_references=self.cfg.eval.get("max_self_references") or None, seed=seed)
    if self.data.trigram is not None:
      out["nll_oracle"] = metrics.nll_oracle(ids, self.data.trigram.log_prob)
    if (self.gen_cfg.kind == "gpt2" and with_nll_test and self.cfg.eval.get("nll_test", True)
        and "test" in self.data.blocks):
      test = evaluation.perplexity(self.g_graphdef, g_params, self.data, "test", self.cfg.eval, self.run.mesh,
                                   select=_select_lm)
      out["nll_test"] = test["nll"]
      out["ppl_test"] = test["perplexity"]
    return out, [self.data.decode(row) for row in ids]


# --- D warm-up -----------------------------------------------------------------------------------------------------


def _real_spec(cfg, n_critic: int) -> dict:
  return stage.int_batch(real=(cfg.gan.batch_size, n_critic, cfg.generator.length))


def gan_stages(run: common.Run | None, cfg, data: corpus.Corpus, s: Setup, start) -> list[stage.Stage]:
  """The D warm-up (when `gan.d_warmup_steps` > 0) and the GAN phase, both on the GANState of `s`.

  D warm-up: critic steps (eq. 4, or the WGAN-GP critic loss) against the initial G, which is only read. D learns
  slowly from scratch while G follows any critic at once: without a warm-up G's first steps follow a near-random D
  (SeqGAN pre-trains its D likewise). Its own real batches and keys fold_in(key, D's step), so the GAN phase's
  batches and keys are those of a run without it. GAN phase: n_critic critic steps then one G step (eq. 4-5, or
  WGAN-GP), from the warmed-up state.
  """
  d_step, _, train_step = gan.make_steps(s.gan_cfg, s.gen_cfg.latent_dim, run.mesh if run is not None else None)
  real = data.sentence_starts("train", cfg.generator.length)
  init = gan.make_state_fn(s.gen_cfg, s.lm_cfg, s.disc_cfg, s.g_opt, s.d_opt)
  common_fields = dict(init=init, seed=cfg.seed + 2, log_every=cfg.gan.log_every, compute_dtype=s.lm_cfg.dtype,
                       compiler_options=training.FAST_COMPILE if cfg.gan.fast_compile else None)
  meta = {"tokenizer": data.tokenizer_spec, **s.checkpoint_meta()}
  where = (lambda name: None) if run is None else (lambda name: run.workdir / name)
  stages = []
  warmup_steps = cfg.gan.get("d_warmup_steps", 0)
  if warmup_steps > 0:
    stages.append(stage.Stage(
      name="d_warmup", directory=where("d_warmup"), steps=(_warmup_step(d_step),),
      batches=lambda: RealBatches(real, cfg.gan.batch_size, 1, seed=cfg.seed + 1),
      batch_spec=_real_spec(cfg, 1), num_steps=warmup_steps, rng_seed=cfg.seed + 4, start=start, keep=1,
      progress=lambda st: st.d.step, tensorboard=False, desc="D warm-up", meta=meta, **common_fields))
  eval_fn = None
  if cfg.gan.eval_every and run is not None:
    evaluator = GeneratorEval(run, cfg, data, s.gan_cfg, s.gen_cfg, s.g_graphdef)
    eval_fn = lambda st, step: evaluator(st.g.params, cfg.gan.eval_samples, cfg.sample.seed + 1,
                                         with_nll_test=False)[0]
  stages.append(stage.Stage(
    name="gan", directory=run.workdir if run is not None else None, steps=(train_step,),
    batches=lambda: RealBatches(real, cfg.gan.batch_size, cfg.gan.n_critic, seed=cfg.seed),
    batch_spec=_real_spec(cfg, cfg.gan.n_critic), num_steps=cfg.gan.steps, rng_seed=cfg.seed + 3, keep=2,
    start=None if stages else start,
    checkpoint_every=cfg.gan.checkpoint_every, probe=eval_fn, probe_every=cfg.gan.eval_every,
    writer=run.writer if run is not None else None, desc=f"GAN ({cfg.gan.loss})",
    meta={**meta, "objective": "gan"}, **common_fields))
  return stages


def _warmup_step(d_step):
  def warmup_step(state, batch, rng):
    """One critic step on the first (only) real batch; key fold_in(rng, D's step)."""
    return d_step(state, batch["real"][:, 0], jax.random.fold_in(rng, state.d.step))
  return warmup_step


# --- the run -----------------------------------------------------------------------------------------------------

def initial_g_params(cfg, s: Setup, lm_params):
  """G before any GAN step: the GAN stages' initial state (key cfg.seed + 2) with G's LM injected, as `run`'s
  `start` builds it (the D warm-up only reads G)."""
  def make(key):
    state = s.init(key)
    return (state if lm_params is None else gan.with_lm_params(state, lm_params)).g.params
  return jax.jit(make)(jax.random.key(cfg.seed + 2))


def short_frontier(cfg, data: corpus.Corpus, s: Setup, lm_params, g_params, png: pathlib.Path | None) -> dict:
  """The MLE G (G before the GAN; "initial G" when no LM was pre-trained or restored) against the GAN's G at
  `frontier.temperatures` (`jaxtextgan.frontier`)."""
  f = cfg.frontier
  mle_name = "MLE G" if lm_params is not None else "initial G"
  gens = [frontier.Generator(mle_name, s.g_graphdef, initial_g_params(cfg, s, lm_params), s.gen_cfg.latent_dim),
          frontier.Generator(f"GAN G ({cfg.gan.loss})", s.g_graphdef, g_params, s.gen_cfg.latent_dim)]
  rows = frontier.sweep(gens, data, f.temperatures, length=cfg.generator.length, num_samples=f.num_samples,
                        seed=cfg.sample.seed, num_z=f.num_z, batch_size=cfg.eval.batch_size,
                        max_references=cfg.eval.max_references, max_test=f.get("max_test") or None, log=None)
  axes = frontier.axes_for(data)
  if png is not None and jax.process_index() == 0:
    frontier.plot({"seed " + str(cfg.seed): rows}, axes, png, title=f"MLE G vs GAN G ({cfg.gan.loss})")
  return {"rows": rows, "x": axes.x, "y": axes.y, "temperatures": list(f.temperatures),
          "num_samples": f.num_samples, "num_z": f.num_z,
          "comparison": frontier.compare(rows, gens[1].name, gens[0].name, axes)}


def dry_run_stages(config, mesh) -> list[stage.Stage]:
  """The Stages `run` trains (G's MLE pre-training unless G is restored, the D warm-up, the GAN), for --dry_run."""
  check_options(config, mesh)
  data = data_shapes(config)
  lm_cfg = lm_config(config, data)
  s = setup(config, data, lm_cfg)
  stages = []
  if config.pretrain.steps > 0 and not config.generator.init_from:
    stages.append(pretrain_stage(None, config, data, lm_cfg))
  return stages + gan_stages(None, config, data, s, start=None)


def run(config, workdir) -> dict:
  """Pre-trains G (or restores it), warms D up, trains the GAN to config.gan.steps, scores samples."""
  t0 = time.perf_counter()
  cfg = config
  r = common.start(cfg, workdir)
  check_options(cfg, r.mesh)
  gan_config(cfg)  # fails fast on bad GAN options (e.g. zero tau) before any data is read
  previous = common.finished_results(r, "gan_steps", cfg.gan.steps, report.summary)
  if previous is not None:
    return previous
  data = load_data(r.workdir, cfg)

  # Phase 1: G's language model.
  pretrain_valid = None
  lm_params = None
  if cfg.generator.init_from:
    lm_cfg, lm_params, lm_step = restore_lm_params(cfg.generator.init_from, data.tokenizer_spec, r.mesh)
    print(f"G's GPT-2 restored from {cfg.generator.init_from} (step {lm_step}; its model config is used)",
          flush=True)
  else:
    lm_cfg = common.model_config(cfg.model, data.vocab_size)
    if cfg.pretrain.steps > 0:
      pretrained = stage.run_stage(pretrain_stage(r, cfg, data, lm_cfg), r.mesh)
      lm_params, pretrain_valid = pretrained.state.params, pretrained.done["eval"]["valid"]
      writers.plot_curves(r.workdir / "pretrain" / "metrics.jsonl", r.workdir / "pretrain" / "loss_curves.png",
                          [("MLE loss (nats/token)", [("train", "loss"), ("valid", "nll")])])

  # Phase 2: the D warm-up and the GAN, from G's LM; G is scored once before any GAN step.
  s = setup(cfg, data, lm_cfg)
  evaluator = GeneratorEval(r, cfg, data, s.gan_cfg, s.gen_cfg, s.g_graphdef)
  before_path = r.workdir / "before.json"
  _, shardings = stage.shardings_of(s.init, r.mesh)

  def start(state):
    if lm_params is not None:
      inject = functools.partial(gan.with_lm_params, discriminator=bool(cfg.discriminator.init_from_lm))
      state = jax.jit(inject, out_shardings=shardings)(state, lm_params)
    if not before_path.exists():
      before, texts = evaluator(state.g.params, cfg.sample.num, cfg.sample.seed)
      writers.write_samples(r.workdir / "samples_before.txt", texts, header="G before GAN training (step 0)")
      r.writer.write(0, before, "eval")
      r.writer.write_text(0, "samples_before", texts[:8])
      stage.write_json(before_path, before)
    return state

  stages = gan_stages(r, cfg, data, s, start)
  if len(stages) == 2:
    warm = stage.run_stage(stages[0], r.mesh)
    d = warm.done["train"]
    r.writer.write(0, d, "d_warmup")
    print(f"D warm-up: {warm.done['step']} critic steps against the initial G; over the last "
          f"{min(cfg.gan.log_every, warm.done['step'])}: d_real {d['d_real']:.3f}, d_fake {d['d_fake']:.3f}",
          flush=True)
    stages[1].start = lambda _: warm.state
  result = stage.run_stage(stages[-1], r.mesh)
  before = json.loads(before_path.read_text())
  state, steps = result.state, result.done["step"]
  after, texts = evaluator(state.g.params, cfg.sample.num, cfg.sample.seed)
  header = f"G after {steps} GAN steps ({cfg.gan.loss}); hard Gumbel-Softmax samples = exact draws"
  writers.write_samples(r.workdir / "samples_after.txt", texts, header=header)
  writers.write_samples(r.workdir / "samples.txt", texts, header=header)
  r.writer.write(steps, after, "eval")
  r.writer.write_text(steps, "samples_after", texts[:8])
  panels = [("G / D loss", [("train", "d_loss"), ("train", "g_loss")]),
            ("D on real / fake" + (" (critic)" if cfg.gan.loss == "wgan-gp" else " (prob.)"),
             [("train", "d_real"), ("train", "d_fake")]),
            ("Gumbel-Softmax tau", [("train", "tau")])]
  if cfg.gan.eval_every:
    key = "nll_oracle" if data.trigram is not None else "bleu3"
    panels.append((key, [("valid", key)]))
  writers.plot_curves(r.workdir / "metrics.jsonl", r.workdir / "gan_curves.png", panels)
  short = None
  if cfg.get("frontier") and cfg.frontier.temperatures:
    short = short_frontier(cfg, data, s, lm_params, state.g.params, r.workdir / "frontier.png")
  r.writer.close()
  gen_name, disc_name = report.describe(cfg, lm_cfg)
  results = {
    "finished": True, "loss": cfg.gan.loss, "source": cfg.data.source, "generator": gen_name,
    "discriminator": disc_name, "pretrain_steps": 0 if cfg.generator.init_from else cfg.pretrain.steps,
    "init_from": cfg.generator.init_from, "gan_steps": steps, "num_samples": cfg.sample.num,
    "pretrain_valid": pretrain_valid, "before": before, "after": after,
    "last_train_metrics": result.done["train"], "samples": str(r.workdir / "samples.txt"),
    "curves": str(r.workdir / "gan_curves.png"), "frontier": short, "wall_seconds": time.perf_counter() - t0,
  }
  stage.write_json(r.workdir / "results.json", results)
  print(report.summary(results), flush=True)
  return results
