"""The contrastive Stage of the GAN-BERT experiment (issue 14, item 6): SetFit's idea, written in JAX, in front of
what the experiment already runs.

* 'contrastive-lr': the encoder fine-tuned on labeled pairs (`objectives.contrastive`), then the frozen-lr peer
  (mean-pooled vectors, logistic regression, C by k-fold CV on the labeled rows) on it: SetFit's recipe in JAX.
* 'contrastive-ganbert': GAN-BERT started from that encoder, so the unlabeled rows can add to what the labeled pairs
  gave.

The Stage trains `experiment.contrastive_steps` steps of `experiment.contrastive_batch_size` pairs at
`experiment.contrastive_lr` (AdamW, 10% linear warm-up, linear decay to 0: sentence-transformers' defaults, and
SetFit's 300 steps of 16 pairs at 2e-5). Fixed in advance, nothing is chosen on the test set. Both methods of one
(split, seed) share the Stage's directory, so the second finds it done and restores it instead of training again.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax

from jaxtextgan import stage, training
from jaxtextgan.data import classification as cls_data
from jaxtextgan.data.pairs import pair_batches
from jaxtextgan.models import bert
from jaxtextgan.objectives import contrastive

METHODS = ("contrastive-lr", "contrastive-ganbert")


@functools.lru_cache(maxsize=8)
def _functions(bert_cfg: bert.BertConfig, opt: tuple, pooling: str):
  """(initialiser, step), one object per setting, so seeds share `training.jit_step`'s compiled program."""
  return contrastive.make_state_fn(bert_cfg, dict(opt)), contrastive.make_step(pooling)


def contrastive_stage(config, bert_cfg: bert.BertConfig, mesh, *, seed: int, **options) -> stage.Stage:
  """`pair_step` on global batches of experiment.contrastive_batch_size pairs of data.max_len-token rows.
  `options` are further Stage fields (batches, directory, meta, start...)."""
  del mesh  # the Stage's shardings come from `run_stage`'s mesh
  exp, steps = config.experiment, int(config.experiment.contrastive_steps)
  opt = dict(lr=float(exp.contrastive_lr), total_steps=steps, warmup_steps=int(0.1 * steps), end_lr_fraction=0.0,
             schedule="linear", b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, grad_clip_norm=1.0)
  make_state, pair_step = _functions(bert_cfg, tuple(sorted(opt.items())), config.model.pooling)
  b, t = int(exp.contrastive_batch_size), config.data.max_len
  return stage.Stage(name="contrastive", init=make_state, steps=(pair_step,), num_steps=steps, seed=seed,
                     rng_seed=seed + 2, batch_spec=stage.int_batch(input_ids=(b, 2, t), attention_mask=(b, 2, t),
                                                                    same=(b,)),
                     log_every=config.train.log_every, keep=1,
                     compiler_options=training.FAST_COMPILE if config.train.fast_compile else None, **options)


def with_params(state: training.TrainState, params) -> training.TrainState:
  """`state` with its parameters set from host arrays, placed like the ones they replace."""
  return state.replace(params=training.place_like(params, state.params))


def contrastive_encoder(config, data: cls_data.ClassificationData, encoder, *, seed: int, directory: pathlib.Path,
                        mesh, show_progress: bool = True):
  """`encoder` (a `tasks.ganbert.EncoderBundle`) after the contrastive Stage on data.labeled's pairs; trained in
  `directory`, or restored from it when done there. Returns (bundle, the seconds the Stage took to train)."""
  enc = cls_data.encode_examples(data.labeled, encoder.tokenizer, config.data.max_len)
  exp = config.experiment
  st = contrastive_stage(
    config, encoder.config, mesh, seed=seed, directory=directory, show_progress=show_progress,
    batches=lambda: pair_batches(enc, int(exp.contrastive_batch_size), seed, config.data.pad_multiple),
    start=lambda state: with_params(state, encoder.params), tensorboard=config.train.tensorboard,
    meta={"seed": seed, "n_labeled": len(data.labeled), "encoder_dir": str(encoder.directory)})
  result = stage.run_stage(st, mesh)
  return dataclasses.replace(encoder, params=jax.device_get(result.state.params)), result.done["wall_seconds"]


def dry_run_stage(config, bert_cfg: bert.BertConfig, mesh) -> stage.Stage:
  """The contrastive Stage as `--dry_run` lowers it: shapes only, no data or directory."""
  return contrastive_stage(config, bert_cfg, mesh, seed=config.seed, batches=None, directory=None)
