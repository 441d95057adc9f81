"""`objective='gan'`: MLE-pretrain G's GPT-2, then train the Gumbel-Softmax GAN; score G's samples before and after.

Workdir layout: pretrain/ (an LM workdir: checkpoints whose meta matches `objective='lm'`, its own metrics),
checkpoints/ (the GAN state), samples_before.txt, samples_after.txt (= samples.txt), metrics.jsonl, tensorboard/,
gan_curves.png, results.json. Every phase resumes from its checkpoints; a finished run prints its results again.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import pathlib
import time
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxtextgan import checkpoint, loop, metrics, writers
from jaxtextgan import sharding as shd
from jaxtextgan.data import lm as lm_data
from jaxtextgan.errors import InputError
from jaxtextgan.models import discriminator as disc_lib
from jaxtextgan.models import generator as gen_lib
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import gan, lm
from jaxtextgan.tasks import common

# --- data ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GANData:
  """What the GAN needs from a corpus, whatever its source.

  lm_blocks: {split: int32 (n, seq+1)} for G's MLE pre-training and NLL-test; real: int32 (N, T+1) rows
  [bos, x_1..x_T] whose targets are the real sequences D sees; references: held-out sentences for BLEU.
  """
  spec: str
  vocab_size: int
  bos_id: int
  forbidden_ids: tuple[int, ...]
  lm_blocks: dict[str, np.ndarray]
  real: np.ndarray
  references: list[list[int]]
  decode: Callable[[np.ndarray], str]
  sentence: Callable[[np.ndarray], list[int]]
  oracle: object | None = None
  tokenizer: object | None = None


def _split_sentences(tokens: np.ndarray, eos: int) -> list[list[int]]:
  """Token stream -> sentences (without eos)."""
  cuts = np.flatnonzero(tokens == eos)
  out, start = [], 0
  for cut in cuts:
    if cut > start:
      out.append(tokens[start:cut].tolist())
    start = cut + 1
  return out


def _windows_after(tokens: np.ndarray, eos: int, length: int) -> np.ndarray:
  """Rows [eos, x_1..x_T] for every eos that has T tokens after it: sequences that start a sentence, as G's do."""
  starts = np.flatnonzero(tokens[:-length] == eos)
  if starts.size == 0:
    raise InputError(f"the training corpus has no sentence of {length} tokens after an end-of-sentence token: "
                     "use a longer corpus or a smaller generator.length")
  return tokens[starts[:, None] + np.arange(length + 1)[None, :]].astype(np.int32)


def text_data(workdir: pathlib.Path, cfg) -> GANData:
  """PTB / text files / TFDS through a tokenizer: G starts after the end-of-sentence token."""
  splits = common.text_splits(cfg.data)
  tokenizer = common.tokenizer_for(workdir, cfg.tokenizer.spec, splits["train"],
                                     cfg.tokenizer.get("vocab_size") or None)
  if tokenizer.eos_id is None:
    raise InputError(f"tokenizer {tokenizer.spec} has no end-of-sequence token: G needs one to start from")
  blocks = lm_data.lm_blocks(splits, tokenizer, cfg.data.seq_len, cache_dir=workdir / "cache")
  if "valid" not in blocks:
    raise InputError("the corpus has no valid split: BLEU needs held-out sentences, pass data.valid_file")
  eos = tokenizer.eos_id
  length = cfg.generator.length

  def sentence(ids):
    ids = np.asarray(ids)
    cut = np.flatnonzero(ids == eos)
    return ids[:cut[0]].tolist() if cut.size else ids.tolist()

  return GANData(spec=tokenizer.spec, vocab_size=tokenizer.vocab_size, bos_id=eos, forbidden_ids=(),
                 lm_blocks={k: b.blocks for k, b in blocks.items()},
                 real=_windows_after(blocks["train"].tokens, eos, length),
                 references=_split_sentences(blocks["valid"].tokens, eos),
                 decode=lambda ids: tokenizer.decode(ids).replace("\n", " <eos> ").strip(),
                 sentence=sentence, tokenizer=tokenizer)


def trigram_data(cfg) -> GANData:
  """The synthetic trigram oracle: word ids 0..V-1 plus the start token V, which G starts from and never emits."""
  from jaxtextgan.data import trigram
  tcfg = cfg.data.trigram
  if cfg.generator.length != tcfg.sentence_len:
    raise InputError(f"generator.length={cfg.generator.length} differs from data.trigram.sentence_len="
                     f"{tcfg.sentence_len}: G must generate whole oracle sentences; set them equal")
  oracle = trigram.TrigramLM(seed=tcfg.seed, vocab_size=tcfg.vocab_size, sentence_len=tcfg.sentence_len)
  corpus = oracle.corpus(sizes={"train": tcfg.train, "valid": tcfg.valid, "test": tcfg.test})
  start = oracle.start_id
  blocks = {k: np.concatenate([np.full((len(v), 1), start, np.int32), v], axis=1) for k, v in corpus.items()}
  return GANData(spec=f"trigram:v{tcfg.vocab_size}:l{tcfg.sentence_len}:s{tcfg.seed}", vocab_size=start + 1,
                 bos_id=start, forbidden_ids=(start,), lm_blocks=blocks, real=blocks["train"],
                 references=corpus["valid"].tolist(),
                 decode=lambda ids: " ".join(f"w{int(i)}" for i in ids), sentence=lambda ids: np.asarray(ids).tolist(),
                 oracle=oracle)


def load_data(workdir: pathlib.Path, cfg) -> GANData:
  return trigram_data(cfg) if cfg.data.source == "trigram" else text_data(pathlib.Path(workdir), cfg)


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


def generator_config(cfg, data: GANData) -> gen_lib.GeneratorConfig:
  g = cfg.generator
  return gen_lib.GeneratorConfig(kind=g.kind, length=g.length, latent_dim=g.latent_dim, bos_id=data.bos_id,
                                 forbidden_ids=data.forbidden_ids, mlp_hidden=tuple(g.mlp_hidden))


def discriminator_config(cfg, data: GANData, lm_cfg: gpt2.GPT2Config) -> disc_lib.DiscriminatorConfig:
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
  """The static configs of a GAN run and its (initial, sharded) state."""
  gan_cfg: gan.GANConfig
  gen_cfg: gen_lib.GeneratorConfig
  disc_cfg: disc_lib.DiscriminatorConfig
  lm_cfg: gpt2.GPT2Config
  state: gan.GANState
  shardings: object

  def checkpoint_meta(self) -> dict:
    """What a GAN checkpoint records about the models, compared on resume."""
    return {"model": dataclasses.asdict(self.lm_cfg), "generator": dataclasses.asdict(self.gen_cfg),
            "discriminator": dataclasses.asdict(self.disc_cfg), "loss": self.gan_cfg.loss}


def setup(cfg, data: GANData, lm_cfg: gpt2.GPT2Config, mesh) -> Setup:
  gen_cfg = generator_config(cfg, data)
  if gen_cfg.kind == "gpt2" and gen_cfg.length > lm_cfg.max_len:
    raise InputError(f"generator.length={gen_cfg.length} exceeds model.max_len={lm_cfg.max_len}: lower the length")
  disc_cfg = discriminator_config(cfg, data, lm_cfg)
  g_opt = _with_total(cfg.g_optimizer, cfg.gan.steps)
  d_opt = _with_total(cfg.d_optimizer, cfg.gan.steps * cfg.gan.n_critic + cfg.gan.get("d_warmup_steps", 0))
  state, shardings = gan.init_state(gen_cfg, lm_cfg, disc_cfg, g_opt, d_opt, jax.random.key(cfg.seed + 2), mesh)
  return Setup(gan_config(cfg), gen_cfg, disc_cfg, lm_cfg, state, shardings)


def lm_config(cfg, data: GANData) -> gpt2.GPT2Config:
  """G's GPT-2 config: the init_from checkpoint's, else config.model with the data's vocabulary."""
  if cfg.generator.init_from:
    meta, _ = checkpoint.read_meta(_checkpoint_dir(pathlib.Path(cfg.generator.init_from).expanduser()))
    return gpt2.GPT2Config(**meta["model"])
  return common.model_config(cfg.model, data.vocab_size)


def load_trained(config, workdir, mesh) -> tuple[Setup, GANData]:
  """The setup of a finished GAN run in `workdir` (run with `config`), its state restored from the last
  checkpoint, and its data."""
  workdir = pathlib.Path(workdir)
  data = load_data(workdir, config)
  s = setup(config, data, lm_config(config, data), mesh)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  restored = ckpt.restore_latest(s.state)
  ckpt.close()
  if restored is None:
    raise InputError(f"no GAN checkpoint in {workdir / 'checkpoints'}: train the GAN first")
  s.state = restored[0]
  return s, data


# --- G's language model: MLE pre-training or an LM checkpoint ----------------------------------------------------


def _checkpoint_dir(path: pathlib.Path) -> pathlib.Path:
  return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def restore_lm_params(path, data_spec: str, mesh):
  """(GPT2Config, params, step) of the newest checkpoint of an LM workdir; only its params are read.

  The checkpoint's tokenizer must be the data's: token ids would otherwise mean other words.
  """
  ckpt_dir = _checkpoint_dir(pathlib.Path(path).expanduser())
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
  manager = ocp.CheckpointManager(ckpt_dir.absolute(), item_names=("state", "meta"))
  try:
    # Partial restore: the LM's optimizer state (whatever its optimizer) is not needed.
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
  finally:
    manager.close()
  return model_cfg, restored["state"]["params"], step


def pretrain_lm(run: common.Run, cfg, data: GANData, lm_cfg: gpt2.GPT2Config):
  """Phase 1: MLE (eq. 1-2) on G's GPT-2 in <workdir>/pretrain, resumable; returns (params, valid metrics)."""
  pdir = run.workdir / "pretrain"
  pdir.mkdir(exist_ok=True)
  steps = cfg.pretrain.steps
  state, shardings = lm.init_state(lm_cfg, cfg.pretrain.optimizer, jax.random.key(cfg.seed), run.mesh)
  batches = lm_data.BatchIterator(data.lm_blocks["train"], cfg.data.batch_size, seed=cfg.seed,
                                  process_index=jax.process_index(), process_count=jax.process_count())
  ckpt = checkpoint.Checkpointer(pdir / "checkpoints", keep=1)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, meta, step = restored
    common.check_same_model(meta, lm_cfg, pdir)
    batches.restore(meta["data"])
  model_dict = dataclasses.asdict(lm_cfg)
  meta_fn = lambda: {"data": batches.state(), "model": model_dict, "tokenizer": data.spec, "objective": "lm"}
  done = pdir / "results.json"
  if int(state.step) < steps or not done.exists():
    step_fn = lm.jit_train_step(run.mesh, shardings,
                                {k: shd.batch_sharding(run.mesh) for k in ("inputs", "targets")})
    writer = writers.MetricWriter(pdir)
    result = loop.run(state=state, step_fn=step_fn, batches=batches, put=lambda b: shd.put_batch(b, run.mesh),
                      rng=jax.random.key(cfg.seed + 1), total_steps=steps, checkpointer=ckpt, writer=writer,
                      meta_fn=meta_fn, log_every=cfg.pretrain.log_every,
                      checkpoint_every=cfg.pretrain.checkpoint_every,
                      tokens_per_step=cfg.data.batch_size * (data.lm_blocks["train"].shape[1] - 1),
                      desc="pretrain G (MLE)")
    ckpt.close()
    if result.preempted:
      return None, {"preempted": True, "step": result.step}
    state = result.state
    valid = lm_eval(run, cfg, make_lm_evaluator(lm_sums(state.graphdef)), state.params, data.lm_blocks["valid"])
    writer.write(steps, valid, "valid")
    writer.close()
    common.write_json(done, {"step": steps, "valid": valid})
    writers.plot_curves(pdir / "metrics.jsonl", pdir / "loss_curves.png",
                        [("MLE loss (nats/token)", [("train", "loss"), ("valid", "nll")])])
  else:
    ckpt.close()
  return state.params, json.loads(done.read_text())["valid"]


@functools.lru_cache(maxsize=32)
def make_lm_evaluator(sums_fn):
  """jit of `sums_fn(params, batch) -> (nll_sum, correct, count)` as the dict `lm.evaluate` reduces."""
  return jax.jit(lambda p, b: dict(zip(("nll_sum", "correct", "count"), sums_fn(p, b))))


@functools.lru_cache(maxsize=32)
def lm_sums(graphdef):
  """(params, batch) -> LM sums of a GPT-2 with this graphdef (memoised: one compilation per model)."""
  return lambda params, batch: lm.lm_loss(params, graphdef, batch, None)[1]


def lm_eval(run: common.Run, cfg, eval_jit, params, blocks: np.ndarray) -> dict:
  """Exact corpus perplexity and next-token accuracy of a `make_lm_evaluator` function over `blocks`."""
  batches = lm_data.eval_batches(blocks, cfg.eval.batch_size, process_index=jax.process_index(),
                                 process_count=jax.process_count())
  return lm.evaluate(eval_jit, params, batches, lambda b: shd.put_batch(b, run.mesh))


@functools.lru_cache(maxsize=32)
def g_lm_sums(g_graphdef):
  """(g_params, batch) -> LM sums of G's GPT-2 (its likelihood of real text, for NLL-test)."""
  def sums(g_params, batch):
    lm_model = nnx.merge(g_graphdef, g_params).lm
    lm_graphdef, lm_params = nnx.split(lm_model, nnx.Param)
    return lm.lm_loss(lm_params, lm_graphdef, batch, None)[1]
  return sums


# --- evaluation of G's samples -----------------------------------------------------------------------------------


class GeneratorEval:
  """Samples G and scores the samples: BLEU-2..5 vs held-out sentences, Self-BLEU, distinct-n, NLL-test of G's LM,
  NLL-oracle for the trigram source."""

  def __init__(self, run: common.Run, cfg, data: GANData, gan_cfg: gan.GANConfig, gen_cfg, g_graphdef):
    self.run, self.cfg, self.data, self.gen_cfg = run, cfg, data, gen_cfg
    self.gan_cfg, self.g_graphdef = gan_cfg, g_graphdef
    self._samplers = {}
    self._lm_eval = make_lm_evaluator(g_lm_sums(g_graphdef)) if gen_cfg.kind == "gpt2" else None

  def sample_ids(self, g_params, num: int, seed: int) -> np.ndarray:
    if num not in self._samplers:
      self._samplers[num] = gan.make_sampler(self.gan_cfg, self.gen_cfg.latent_dim, self.g_graphdef, num)
    return np.asarray(jax.device_get(self._samplers[num](g_params, jax.random.key(seed))))

  def __call__(self, g_params, num: int, seed: int, *, with_nll_test: bool = True):
    """(metrics, sample texts)."""
    ids = self.sample_ids(g_params, num, seed)
    hyps = [self.data.sentence(row) for row in ids]
    out = metrics.sequence_metrics(hyps, self.data.references, max_references=self.cfg.eval.max_references,
                                   seed=seed)
    if self.data.oracle is not None:
      out["nll_oracle"] = metrics.nll_oracle(ids, self.data.oracle.log_prob)
    if (self._lm_eval is not None and with_nll_test and self.cfg.eval.get("nll_test", True)
        and "test" in self.data.lm_blocks):
      test = lm_eval(self.run, self.cfg, self._lm_eval, g_params, self.data.lm_blocks["test"])
      out["nll_test"] = test["nll"]
      out["ppl_test"] = test["perplexity"]
    return out, [self.data.decode(row) for row in ids]


# --- D warm-up -----------------------------------------------------------------------------------------------------


def warmup_discriminator(run: common.Run, cfg, data: GANData, s: Setup, state: gan.GANState) -> gan.GANState:
  """`gan.d_warmup_steps` critic steps (eq. 4, or the WGAN-GP critic loss) against the initial G (only read).

  D learns slowly from scratch (a few hundred batches to tell a small LM's samples from PTB), while G follows any
  critic at once: without a warm-up G's first steps follow a near-random D. SeqGAN pre-trains its D likewise.
  Runs only before GAN step 0, on its own real batches and keys, so the GAN phase's batches and keys (and resume)
  are unchanged; an interrupted warm-up is simply redone, with the same numbers.
  """
  steps = cfg.gan.get("d_warmup_steps", 0)
  d_step, _, _ = gan.make_steps(s.gan_cfg, s.gen_cfg.latent_dim, run.mesh)
  step_fn = gan.jit_train_step(lambda st, batch, key: d_step(st, batch["real"][:, 0], key), run.mesh, s.shardings,
                               compiler_options=gan.FAST_COMPILE if cfg.gan.fast_compile else None)
  batches = RealBatches(data.real, cfg.gan.batch_size, 1, seed=cfg.seed + 1)
  rng = jax.random.key(cfg.seed + 4)
  history = collections.deque(maxlen=max(1, cfg.gan.log_every))  # D's metrics over the last steps are reported
  for i in range(steps):
    state, step_metrics = step_fn(state, shd.put_batch(next(batches), run.mesh), jax.random.fold_in(rng, i))
    history.append(step_metrics)
  last = jax.device_get(list(history))
  summary_metrics = {k: float(np.mean([m[k] for m in last])) for k in last[0]}
  run.writer.write(0, summary_metrics, "d_warmup")
  print(f"D warm-up: {steps} critic steps against the initial G; over the last {len(last)}: "
        f"d_real {summary_metrics['d_real']:.3f}, d_fake {summary_metrics['d_fake']:.3f}", flush=True)
  return state


# --- the run -----------------------------------------------------------------------------------------------------

_SUMMARY_KEYS = (("bleu2", "BLEU-2"), ("bleu3", "BLEU-3"), ("bleu4", "BLEU-4"), ("bleu5", "BLEU-5"),
                 ("self_bleu3", "Self-BLEU-3 (lower = more diverse)"), ("self_bleu4", "Self-BLEU-4"),
                 ("distinct1", "distinct-1"), ("distinct2", "distinct-2"), ("distinct3", "distinct-3"),
                 ("length", "mean sentence length"), ("nll_test", "NLL-test of G (nats/token)"),
                 ("ppl_test", "test perplexity of G"), ("nll_oracle", "NLL-oracle (nats/token)"))


def summary(results: dict) -> str:
  """The lines a finished run prints (and prints again when re-run)."""
  before, after = results["before"], results["after"]
  lines = [f"GAN {results['loss']} on {results['source']}: G={results['generator']} "
           f"(MLE pre-training {results['pretrain_steps']} steps), D={results['discriminator']}, "
           f"{results['gan_steps']} GAN steps, {results['num_samples']} samples scored",
           f"{'metric':<36}{'before GAN':>12}{'after GAN':>12}"]
  for key, name in _SUMMARY_KEYS:
    if key in before and key in after:
      lines.append(f"{name:<36}{before[key]:>12.4f}{after[key]:>12.4f}")
  if results.get("pretrain_valid"):
    lines.append(f"G after MLE pre-training: valid perplexity {results['pretrain_valid']['perplexity']:.2f}")
  lines.append(f"samples: {results['samples']}; wall time {results['wall_seconds']:.0f} s "
               "(of the invocation that finished the run)")
  return "\n".join(lines)


def _describe(cfg, lm_cfg: gpt2.GPT2Config) -> tuple[str, str]:
  g = cfg.generator
  gen = (f"gpt2 {lm_cfg.n_layer}x{lm_cfg.d_model}" if g.kind == "gpt2" else f"mlp {tuple(g.mlp_hidden)}")
  d = cfg.discriminator
  if d.kind == "cnn":
    disc = f"cnn widths {tuple(d.widths)} x {d.filters}"
  elif d.init_from_lm:
    disc = f"transformer {lm_cfg.n_layer}x{lm_cfg.d_model} from G's LM ({d.pooling} pool)"
  else:
    disc = f"transformer {d.n_layer}x{d.d_model} ({d.pooling} pool)"
  return gen, disc


def _check_same_gan(meta: dict, expected: dict, workdir: pathlib.Path) -> None:
  for key, value in expected.items():
    if key in meta and meta[key] != value:
      raise InputError(f"workdir {workdir} holds a GAN checkpoint with another {key} config: use a new --workdir "
                       "or the config it was trained with")


def run(config, workdir) -> dict:
  """Pre-trains G (or restores it), trains the GAN to config.gan.steps, scores samples; returns results.json."""
  t0 = time.perf_counter()
  cfg = config
  r = common.start(cfg, workdir)
  check_options(cfg, r.mesh)
  gan_config(cfg)  # fails fast on bad GAN options (e.g. zero tau) before any data is read
  previous = common.finished_results(r, "gan_steps", cfg.gan.steps, summary)
  if previous is not None:
    return previous
  data = load_data(r.workdir, cfg)

  # Phase 1: G's language model.
  pretrain_valid = None
  lm_params = None
  if cfg.generator.init_from:
    lm_cfg, lm_params, lm_step = restore_lm_params(cfg.generator.init_from, data.spec, r.mesh)
    print(f"G's GPT-2 restored from {cfg.generator.init_from} (step {lm_step}; its model config is used)",
          flush=True)
  else:
    lm_cfg = common.model_config(cfg.model, data.vocab_size)
    if cfg.pretrain.steps > 0:
      lm_params, pretrain_valid = pretrain_lm(r, cfg, data, lm_cfg)
      if lm_params is None:
        print(f"SIGTERM: saved MLE pre-training to {r.workdir / 'pretrain'}; run again to resume", flush=True)
        return pretrain_valid

  # Phase 2: the GAN.
  s = setup(cfg, data, lm_cfg, r.mesh)
  gan_cfg, gen_cfg, state, shardings = s.gan_cfg, s.gen_cfg, s.state, s.shardings
  batches = RealBatches(data.real, cfg.gan.batch_size, cfg.gan.n_critic, seed=cfg.seed)
  expected = s.checkpoint_meta()
  evaluator = GeneratorEval(r, cfg, data, gan_cfg, gen_cfg, state.g.graphdef)
  ckpt = checkpoint.Checkpointer(r.workdir / "checkpoints", keep=2)
  restored = ckpt.restore_latest(state)
  before_path = r.workdir / "before.json"
  if restored is not None:
    state, meta, step = restored
    _check_same_gan(json.loads(json.dumps(meta)), json.loads(json.dumps(expected)), r.workdir)
    batches.restore(meta["data"])
    print(f"resumed the GAN from {r.workdir / 'checkpoints' / str(step)} at step {step}", flush=True)
  elif lm_params is not None:
    inject = functools.partial(gan.with_lm_params, discriminator=bool(cfg.discriminator.init_from_lm))
    state = jax.jit(inject, out_shardings=shardings)(state, lm_params)
  if not before_path.exists():
    # G before any GAN step (the restored state may already be past it only if before.json was written).
    before, texts = evaluator(state.g.params, cfg.sample.num, cfg.sample.seed)
    writers.write_samples(r.workdir / "samples_before.txt", texts, header="G before GAN training (step 0)")
    r.writer.write(0, before, "eval")
    r.writer.write_text(0, "samples_before", texts[:8])
    common.write_json(before_path, before)
  before = json.loads(before_path.read_text())
  if restored is None and cfg.gan.get("d_warmup_steps", 0) > 0:
    state = warmup_discriminator(r, cfg, data, s, state)

  meta_fn = lambda: {"data": batches.state(), "tokenizer": data.spec, "objective": "gan", **expected}
  _, _, train_step = gan.make_steps(gan_cfg, gen_cfg.latent_dim, r.mesh)
  step_fn = gan.jit_train_step(train_step, r.mesh, shardings,
                               compiler_options=gan.FAST_COMPILE if cfg.gan.fast_compile else None)
  eval_fn = None
  if cfg.gan.eval_every:
    eval_fn = lambda s, step: evaluator(s.g.params, cfg.gan.eval_samples, cfg.sample.seed + 1,
                                        with_nll_test=False)[0]
  result = loop.run(state=state, step_fn=step_fn, batches=batches, put=lambda b: shd.put_batch(b, r.mesh),
                    rng=jax.random.key(cfg.seed + 3), total_steps=cfg.gan.steps, checkpointer=ckpt, writer=r.writer,
                    meta_fn=meta_fn, log_every=cfg.gan.log_every, checkpoint_every=cfg.gan.checkpoint_every,
                    eval_every=cfg.gan.eval_every, eval_fn=eval_fn, desc=f"GAN ({cfg.gan.loss})")
  ckpt.close()
  if result.preempted:
    print(f"SIGTERM: saved GAN step {result.step} to {r.workdir / 'checkpoints'}; run again to resume", flush=True)
    return {"step": result.step, "preempted": True}
  state = result.state
  after, texts = evaluator(state.g.params, cfg.sample.num, cfg.sample.seed)
  header = f"G after {result.step} GAN steps ({cfg.gan.loss}); hard Gumbel-Softmax samples = exact draws"
  writers.write_samples(r.workdir / "samples_after.txt", texts, header=header)
  writers.write_samples(r.workdir / "samples.txt", texts, header=header)
  r.writer.write(result.step, after, "eval")
  r.writer.write_text(result.step, "samples_after", texts[:8])
  panels = [("G / D loss", [("train", "d_loss"), ("train", "g_loss")]),
            ("D on real / fake" + (" (critic)" if cfg.gan.loss == "wgan-gp" else " (prob.)"),
             [("train", "d_real"), ("train", "d_fake")]),
            ("Gumbel-Softmax tau", [("train", "tau")])]
  if cfg.gan.eval_every:
    key = "nll_oracle" if data.oracle is not None else "bleu3"
    panels.append((key, [("valid", key)]))
  writers.plot_curves(r.workdir / "metrics.jsonl", r.workdir / "gan_curves.png", panels)
  r.writer.close()
  gen_name, disc_name = _describe(cfg, lm_cfg)
  results = {
    "finished": True, "loss": cfg.gan.loss, "source": cfg.data.source, "generator": gen_name,
    "discriminator": disc_name, "pretrain_steps": 0 if cfg.generator.init_from else cfg.pretrain.steps,
    "init_from": cfg.generator.init_from, "gan_steps": result.step, "num_samples": cfg.sample.num,
    "pretrain_valid": pretrain_valid, "before": before, "after": after, "last_train_metrics": result.last_metrics,
    "samples": str(r.workdir / "samples.txt"), "curves": str(r.workdir / "gan_curves.png"),
    "wall_seconds": time.perf_counter() - t0,
  }
  common.write_json(r.workdir / "results.json", results)
  print(summary(results), flush=True)
  return results
