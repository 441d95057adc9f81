"""`objective='lm'`: pre-train a GPT-2 LM, evaluate perplexity and next-token accuracy, write samples."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxtextgan import checkpoint, loop, sampling
from jaxtextgan import tokenizers as tok
from jaxtextgan import sharding as shd
from jaxtextgan.data import lm as lm_data
from jaxtextgan.objectives import lm
from jaxtextgan.tasks import common
from jaxtextgan import writers


def build(run: common.Run):
  """Tokenizer, blocks, model config and a sharded initial state for `run.config`."""
  cfg = run.config
  splits = common.text_splits(cfg.data)
  tokenizer = common.tokenizer_for(run.workdir, cfg.tokenizer.spec, splits["train"],
                                     cfg.tokenizer.get("vocab_size") or None)
  model_cfg = common.model_config(cfg.model, tokenizer.vocab_size)
  common.check_seq_len(cfg.data.seq_len, model_cfg)
  blocks = common.lm_blocks(run, cfg.data, tokenizer, splits)
  state, shardings = lm.init_state(model_cfg, cfg.optimizer, jax.random.key(cfg.seed), run.mesh)
  return tokenizer, blocks, model_cfg, state, shardings


def make_evaluator(run: common.Run, state_shardings):
  mesh = run.mesh
  batch_sh = {k: shd.batch_sharding(mesh, n) for k, n in (("inputs", 2), ("targets", 2), ("mask", 1))}
  eval_jit = jax.jit(lm.eval_step, in_shardings=(state_shardings, batch_sh), out_shardings=shd.replicated(mesh))

  def evaluate(state, blocks, batch_size):
    batches = lm_data.eval_batches(blocks, batch_size, process_index=jax.process_index(),
                                   process_count=jax.process_count())
    return lm.evaluate(eval_jit, state, batches, lambda b: shd.put_batch(b, mesh))

  return evaluate


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


def dry_run(config) -> dict:
  """Lowers and compiles the LM train step for this config, mesh and batch; nothing is allocated or trained."""
  from jaxtextgan import dryrun
  mesh = shd.make_mesh(tuple(config.mesh_shape))
  vocab = config.model.vocab_size
  if not vocab:
    splits = common.text_splits(config.data)
    vocab = tok.build_tokenizer(config.tokenizer.spec, corpus_text=splits["train"],
                                vocab_size=config.tokenizer.get("vocab_size") or None).vocab_size
  model_cfg = common.model_config(config.model, vocab)
  common.check_seq_len(config.data.seq_len, model_cfg)
  report = dryrun.lm_step_report(model_cfg, config.optimizer, mesh, config.data.batch_size, config.data.seq_len)
  print(dryrun.format_report(report), flush=True)
  return report


def run(config, workdir) -> dict:
  """Trains (or resumes) to config.train.steps; returns the final validation/test metrics."""
  t0 = time.perf_counter()
  r = common.start(config, workdir)
  tokenizer, blocks, model_cfg, state, shardings = build(r)
  train_cfg = config.train
  data_iter = lm_data.BatchIterator(blocks["train"], config.data.batch_size, seed=config.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count())
  ckpt = checkpoint.Checkpointer(r.workdir / "checkpoints", keep=train_cfg.keep_checkpoints)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, meta, step = restored
    common.check_same_model(meta, model_cfg, r.workdir)
    data_iter.restore(meta["data"])
    print(f"resumed from {r.workdir / 'checkpoints' / str(step)} at step {step}", flush=True)

  model_dict = dataclasses.asdict(model_cfg)
  meta_fn = lambda: {"data": data_iter.state(), "model": model_dict, "tokenizer": tokenizer.spec,
                     "objective": "lm"}
  batch_sh = {k: shd.batch_sharding(r.mesh) for k in ("inputs", "targets")}
  step_fn = lm.jit_train_step(r.mesh, shardings, batch_sh)
  evaluate = make_evaluator(r, shardings)
  eval_bs = config.eval.batch_size
  eval_fn = lambda s, _: evaluate(s, blocks["valid"], eval_bs)
  result = loop.run(state=state, step_fn=step_fn, batches=data_iter, put=lambda b: shd.put_batch(b, r.mesh),
                    rng=jax.random.key(config.seed + 1), total_steps=train_cfg.steps, checkpointer=ckpt,
                    writer=r.writer, meta_fn=meta_fn, log_every=train_cfg.log_every,
                    checkpoint_every=train_cfg.checkpoint_every, eval_every=train_cfg.eval_every, eval_fn=eval_fn,
                    tokens_per_step=config.data.batch_size * config.data.seq_len, desc="lm")
  ckpt.close()
  state = result.state
  out = {"step": result.step, "preempted": result.preempted}
  if result.preempted:
    print(f"SIGTERM: saved step {result.step} to {r.workdir / 'checkpoints'}; run again to resume", flush=True)
    return out
  valid = evaluate(state, blocks["valid"], eval_bs)
  r.writer.write(result.step, valid, "valid")
  out["valid"] = valid
  if "test" in blocks:
    test = evaluate(state, blocks["test"], eval_bs)
    r.writer.write(result.step, test, "test")
    out["test"] = test
  write_samples(r, state, tokenizer, result.step)
  writers.plot_curves(r.workdir / "metrics.jsonl", r.workdir / "loss_curves.png",
                      [("loss (nats/token)", [("train", "loss"), ("valid", "nll")]),
                       ("next-token accuracy", [("train", "accuracy"), ("valid", "accuracy")])])
  out["wall_seconds"] = time.perf_counter() - t0
  common.write_json(r.workdir / "results.json", out)
  r.writer.close()
  print(f"valid perplexity {valid['perplexity']:.2f}, accuracy {valid['accuracy']:.4f}"
        + (f"; test perplexity {out['test']['perplexity']:.2f}, accuracy {out['test']['accuracy']:.4f}"
           if "test" in out else "") + f"; {out['wall_seconds']:.0f} s", flush=True)
  return out
