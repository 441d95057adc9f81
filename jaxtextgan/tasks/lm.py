"""`objective='lm'`: pre-train a GPT-2 LM, evaluate perplexity and next-token accuracy, write samples.

`lm_stage` is the LM's Stage; the GAN's MLE pre-training, dfine's stage 1 and the augmentation arms use it too.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import numpy as np

from jaxtextgan import evaluation, sampling, stage, training, writers
from jaxtextgan import sharding as shd
from jaxtextgan.data import lm as lm_data
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import lm
from jaxtextgan.tasks import common


def lm_stage(name: str, directory: pathlib.Path | None, model_cfg: gpt2.GPT2Config, opt_cfg, train_blocks, *,
             batch_size: int, seed: int, rng_seed: int, num_steps: int, meta: dict, evaluate=None, **options):
  """MLE on next tokens (GAN seed eq. 1-2) over `train_blocks`: blocks (n, T+1) in memory, or shards on disk (a
  `data.shards.ShardSplit`, read through Grain); `options` are further Stage fields."""
  init = lm.make_state_fn(model_cfg, opt_cfg)
  if hasattr(train_blocks, "batch_iterator"):  # shards on disk
    seq_len = train_blocks.seq_len
    batches = lambda: train_blocks.batch_iterator(batch_size, seed, jax.process_index(), jax.process_count())
  else:
    blocks = getattr(train_blocks, "blocks", train_blocks)
    seq_len = blocks.shape[1] - 1
    batches = lambda: lm_data.BatchIterator(blocks, batch_size, seed=seed, process_index=jax.process_index(),
                                            process_count=jax.process_count())
  n_params = gpt2.count_params(jax.eval_shape(init, jax.random.key(0)).params)
  return stage.Stage(
    name=name, directory=directory, init=init, steps=(lm.train_step,),
    batches=batches,
    batch_spec=stage.int_batch(inputs=(batch_size, seq_len), targets=(batch_size, seq_len)), num_steps=num_steps, seed=seed, rng_seed=rng_seed,
    meta={"model": dataclasses.asdict(model_cfg), **meta}, evaluate=evaluate,
    tokens_per_step=batch_size * seq_len, compiler_options=training.lm_compiler_options(),
    compute_dtype=model_cfg.dtype,
    model_flops_per_step=batch_size * seq_len * gpt2.train_flops_per_token(n_params, model_cfg.n_layer, model_cfg.d_model, seq_len), **options)


def evaluate_splits(state, data, splits, eval_cfg, mesh) -> dict:
  """{split: perplexity, NLL, accuracy, window, stride} of an LM state, by `eval_cfg`'s method (the `eval` config
  block, or a bare batch size for the default: sliding windows where `data` has a stream; `evaluation.batches`).

  `data`: a `data.corpus.Corpus` or {split: LMBlocks (with its stream) or blocks (block method)}.
  """
  blocks = data.blocks if hasattr(data, "streams") else data
  return {s: evaluation.perplexity(state.graphdef, state.params, data, s, eval_cfg, mesh)
          for s in splits if s in blocks}


def write_samples(run: common.Run, state, tokenizer, step: int, name: str = "samples.txt"):
  cfg = run.config.sample
  prompt = np.full((cfg.num, 1), tokenizer.eos_id if tokenizer.eos_id is not None else 0, np.int32)
  ids = sampling.sample(state.graphdef, state.params, shd.put_replicated(prompt, run.mesh), jax.random.key(cfg.seed),
                        max_new_tokens=cfg.length, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
  texts = [tokenizer.decode(row) for row in shd.to_host(ids)]
  writers.write_samples(run.workdir / name, texts,
                        header=f"step {step}; temperature={cfg.temperature} top_k={cfg.top_k} top_p={cfg.top_p}")
  run.writer.write_text(step, "samples", texts[:8])
  return texts


def plan(config, run: common.Run | None = None):
  """(tokenizer, blocks, model config, the Stage) of `config`; `run` None plans without a workdir (dry run)."""
  if config.data.source == "shards":
    tokenizer, blocks = common.shard_data(config, run)
  else:
    splits = common.text_splits(config.data)
    tokenizer = (common.tokenizer_for(run.workdir, config.tokenizer.spec, splits["train"],
                                      config.tokenizer.get("vocab_size") or None) if run is not None else
                 common.build_tokenizer(config, splits))
  model_cfg = common.model_config(config.model, tokenizer.vocab_size)
  common.check_seq_len(config.data.seq_len, model_cfg)
  if config.data.source != "shards":
    blocks = lm_data.lm_blocks(splits, tokenizer, config.data.seq_len,
                               cache_dir=common.cache_dir(run.workdir) if run is not None else None)
  train = config.train
  mesh = run.mesh if run is not None else None
  lm_stage_ = lm_stage(
    "lm", run.workdir if run is not None else None, model_cfg, config.optimizer, blocks["train"],
    batch_size=config.data.batch_size, seed=config.seed, rng_seed=config.seed + 1, num_steps=train.steps,
    meta={"tokenizer": tokenizer.spec, "objective": "lm"}, keep=train.keep_checkpoints, log_every=train.log_every,
    checkpoint_every=train.checkpoint_every, writer=run.writer if run is not None else None,
    probe=lambda s, _: evaluate_splits(s, blocks, ("valid",), config.eval, mesh)["valid"],
    probe_every=train.eval_every,
    evaluate=lambda s: evaluate_splits(s, blocks, ("valid", "test"), config.eval, mesh))
  return tokenizer, blocks, model_cfg, lm_stage_


def dry_run_stages(config, mesh) -> list[stage.Stage]:
  """The Stages `run` trains, for `--dry_run` (nothing is written; the tokenizer is built to know the vocabulary)."""
  return [plan(config)[3]]


def run(config, workdir) -> dict:
  """Trains (or resumes) to config.train.steps; returns the final validation/test metrics."""
  t0 = time.perf_counter()
  r = common.start(config, workdir)
  tokenizer, _, _, lm_stage_ = plan(config, r)
  result = stage.run_stage(lm_stage_, r.mesh)
  out = {"step": result.done["step"], "preempted": False, **result.done["eval"]}
  write_samples(r, result.state, tokenizer, out["step"])
  writers.plot_curves(r.workdir / "metrics.jsonl", r.workdir / "loss_curves.png",
                      [("loss (nats/token)", [("train", "loss"), ("valid", "nll")]),
                       ("next-token accuracy", [("train", "accuracy"), ("valid", "accuracy")])])
  out["wall_seconds"] = time.perf_counter() - t0
  stage.write_json(r.workdir / "results.json", out)
  r.writer.close()
  valid = out["valid"]
  print(f"valid perplexity {valid['perplexity']:.2f}, accuracy {valid['accuracy']:.4f}"
        + (f"; test perplexity {out['test']['perplexity']:.2f}, accuracy {out['test']['accuracy']:.4f}"
           if "test" in out else "") + f"; {out['wall_seconds']:.0f} s", flush=True)
  return out
