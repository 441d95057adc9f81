"""The second plane of a text frontier (Caccia et al. 2020, pclucas14/GansFallingShort): LM score against
reverse-LM score.

Every scored row is a block [bos, x_1..x_L]: a sample of G after its start token, or a real test row that starts a
sentence (`Corpus.sentence_starts`), scored on its L targets, teacher-forced, without dropout
(`evaluation.lm_metrics`):

  quality    LM score          = -(1/(N L)) sum_n sum_t log q_J(x_t^n | bos, x_<t^n),   x^n ~ G_T
  diversity  reverse-LM score  = -(1/(M L)) sum_m sum_t log q_R(y_t^m | bos, y_<t^m),   y^m real test rows

q_J, the judge, is a GPT-2 trained once per (source, seed) by MLE on the corpus's train stream, larger and longer
than G's LM (`config.frontier.judge`). q_R = q_{R,G_T} is a small GPT-2 trained by MLE on samples of G_T, one block
per sample (`config.frontier.reverse_lm`). Lower is better on both. A G collapsed onto a few good sentences gets a
low LM score but a high reverse-LM score: its reverse LM never saw most of real text.

The whole row is scored, end-of-sentence and what follows included (G keeps drawing after it, and a real row runs
on into the next sentence), the same way for every generator and for the real rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtextgan import evaluation, stage
from jaxtextgan.data import corpus
from jaxtextgan.data import lm as lm_data
from jaxtextgan.errors import InputError
from jaxtextgan.objectives import gan
from jaxtextgan.tasks import common
from jaxtextgan.tasks import lm as lm_task


def optimizer(cfg) -> dict:
  """AdamW with linear warm-up, then cosine decay to 5% at `cfg.steps` (training.make_optimizer)."""
  return dict(lr=cfg.lr, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps, end_lr_fraction=0.05,
              schedule="cosine", b1=0.9, b2=0.98, eps=1e-8, weight_decay=cfg.weight_decay, grad_clip_norm=1.0)


def lm_stage(what: str, cfg, blocks_NT1: np.ndarray, vocab_size: int, directory: pathlib.Path | None, seed: int,
             meta: dict, context: int = 0, evaluate=None) -> stage.Stage:
  """MLE (GAN seed eq. 1-2) of the GPT-2 `cfg.model` on `blocks_NT1`: `cfg.steps` steps of `cfg.batch_size` blocks.
  Its max_len must hold a block's T tokens and `context` (what it will be asked to score)."""
  model_cfg = common.model_config(cfg.model, vocab_size)
  need = max(blocks_NT1.shape[1] - 1, context)
  if model_cfg.max_len < need:
    raise InputError(f"frontier.{what}.model.max_len={model_cfg.max_len} is shorter than the {need} tokens it "
                     f"trains on or scores: set it to at least {need}")
  if len(blocks_NT1) < cfg.batch_size:
    raise InputError(f"frontier.{what} trains on {len(blocks_NT1)} blocks, fewer than frontier.{what}.batch_size="
                     f"{cfg.batch_size}: lower the batch size or give it more data")
  return lm_task.lm_stage(
    what, directory, model_cfg, optimizer(cfg), blocks_NT1, batch_size=int(cfg.batch_size), seed=seed,
    rng_seed=seed + 1, num_steps=int(cfg.steps), meta=meta, keep=1, log_every=max(1, min(100, int(cfg.steps))),
    tensorboard=False, show_progress=directory is not None, evaluate=evaluate)


def judge_stage(cfg, data: corpus.Corpus, length: int, eval_cfg, mesh, directory: pathlib.Path | None,
                seed: int) -> stage.Stage:
  """The judge q_J: MLE on the train stream in blocks of `cfg.seq_len` + 1 tokens. Its valid and test perplexity
  are measured as G's LM's are (`eval_cfg`, windows of the data's seq_len), so the two can be compared."""
  if data.trigram is not None or not data.streams or "train" not in data.streams:
    raise InputError("the LM plane needs a text corpus with a train stream (the trigram oracle has NLL-oracle): "
                     "set frontier.text_lm_scores=False")
  train = lm_data.LMBlocks(data.streams["train"], int(cfg.seq_len), name="train").blocks
  window = data.blocks["train"].shape[1] - 1
  return lm_stage("judge", cfg, train, data.vocab_size, directory, seed,
                  {"tokenizer": data.tokenizer_spec, "objective": "lm"}, context=max(length, window),
                  evaluate=lambda s: lm_task.evaluate_splits(s, data, ("valid", "test"), eval_cfg, mesh))


def with_bos(ids_NL: np.ndarray, bos_id: int) -> np.ndarray:
  """Blocks [bos, x_1..x_L] (N, L+1) int32 of G's samples, as real rows that start a sentence are."""
  ids_NL = np.asarray(ids_NL, np.int32)
  return np.concatenate([np.full((len(ids_NL), 1), bos_id, np.int32), ids_NL], axis=1)


def _slug(name: str, temperature: float) -> str:
  return f"{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}_T{temperature:g}"


@dataclasses.dataclass
class LMPlane:
  """Adds {lm_score, reverse_lm} to a frontier row (`frontier.sweep(..., lm_plane=)`); `reverse_lm` only at the
  temperatures of `reverse.temperatures` (() = all).

  judge: the judge's (graphdef, params). real_ML1: real test rows [bos, y_1..y_L]. reverse: `config.frontier.
  reverse_lm` (model, steps, batch_size, lr, warmup_steps, weight_decay, temperatures, num_samples: samples each
  reverse LM trains on, drawn at key fold_in(key(seed), 1); 0: the sweep's own). directory: one reverse-LM workdir
  per (generator, T), resumed (None: nothing saved).
  """
  judge: tuple[Any, Any]
  real_ML1: np.ndarray
  reverse: Any
  data: corpus.Corpus
  mesh: Any
  batch_size: int = 64
  seed: int = 0
  directory: pathlib.Path | None = None

  def score(self, graphdef, params, rows_NL1: np.ndarray) -> float:
    """-(1/(N L)) sum log q(x_t | bos, x_<t) of the rows under a GPT-2."""
    return evaluation.lm_metrics(graphdef, params, rows_NL1, self.batch_size, self.mesh)["nll"]

  def lm_score(self, ids_NL: np.ndarray) -> float:
    """The judge's NLL of G's samples (N, L)."""
    return self.score(*self.judge, with_bos(ids_NL, self.data.bos_id))

  def real_lm_score(self) -> float:
    """The judge's NLL of the real test rows: the LM score of the data itself."""
    return self.score(*self.judge, self.real_ML1)

  def wants(self, temperature: float) -> bool:
    temps = tuple(self.reverse.get("temperatures") or ())
    return not temps or any(abs(float(temperature) - float(t)) < 1e-6 for t in temps)

  def reverse_lm(self, train_NL: np.ndarray, name: str = "reverse_lm", meta: dict | None = None) -> float:
    """The real test rows' NLL under a GPT-2 trained on the rows `train_NL` (each a block after bos)."""
    blocks = with_bos(train_NL, self.data.bos_id)
    meta = {"tokenizer": self.data.tokenizer_spec, "objective": "reverse_lm", **(meta or {}),
            "samples": hashlib.sha256(blocks.tobytes()).hexdigest()[:16]}
    directory = None if self.directory is None else self.directory / name
    s = lm_stage("reverse_lm", self.reverse, blocks, self.data.vocab_size, directory, self.seed, meta,
                 context=self.real_ML1.shape[1] - 1)
    state = stage.run_stage(s, self.mesh).state
    return self.score(state.graphdef, state.params, self.real_ML1)

  def __call__(self, g, temperature: float, ids_NL: np.ndarray) -> dict:
    """{lm_score, reverse_lm (where wanted)} of generator `g` (a frontier.Generator) at `temperature`, whose sweep
    samples are `ids_NL`."""
    out = {"lm_score": self.lm_score(ids_NL)}
    if self.wants(temperature):
      n = int(self.reverse.get("num_samples") or 0)
      train = ids_NL if not n else np.asarray(jax.device_get(gan.make_temperature_sampler(
        g.latent_dim, g.graphdef, n)(g.params, jax.random.fold_in(jax.random.key(self.seed), 1),
                                     jnp.float32(temperature))))
      out["reverse_lm"] = self.reverse_lm(train, _slug(g.name, temperature),
                                          {"generator": g.name, "temperature": float(temperature)})
    return out


def plane(judge_cfg, reverse_cfg, data: corpus.Corpus, *, length: int, eval_cfg, mesh, seed: int,
          directory: pathlib.Path | None = None, max_test: int | None = None) -> tuple[LMPlane, dict]:
  """Trains (or resumes) the judge in <directory>/judge and returns (the LMPlane, {judge: its valid/test metrics,
  real_lm_score}); reverse LMs go to <directory>/reverse_lm/<generator>_T<T>."""
  judge = stage.run_stage(judge_stage(judge_cfg, data, length, eval_cfg, mesh,
                                      None if directory is None else directory / "judge", seed), mesh)
  real = data.sentence_starts("test", length)
  p = LMPlane((judge.state.graphdef, judge.state.params), real[:max_test] if max_test else real, reverse_cfg, data,
              mesh, batch_size=evaluation.options(eval_cfg)[0], seed=seed,
              directory=None if directory is None else directory / "reverse_lm")
  return p, {"judge": judge.done["eval"], "real_lm_score": p.real_lm_score()}
