"""`objective='augment'`: fine-tune an LM on D_real + GAN samples (seed eq. 11-12) beside its two controls.

Arms, each fine-tuned from the same base LM for the same steps, batches and learning-rate schedule:
  none: D_real only (more training alone);  lm: D_real + plain LM samples;  gan: D_real + GAN samples.
Without the `lm` arm a gain could not be credited to the GAN (Caccia et al. 2020): sampling from the LM itself is
the same amount of extra, self-generated text.

Workdir: base/ (when the base LM is trained here), gan/ (a GAN workdir), synthetic_{gan,lm}.txt,
finetune_{none,lm,gan}/ (resumable), results.md, results.json.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtextgan import evaluation, sampling, stage, writers
from jaxtextgan.data import lm as lm_data
from jaxtextgan.data import corpus
from jaxtextgan.errors import InputError
from jaxtextgan.objectives import gan, lm
from jaxtextgan.tasks import common
from jaxtextgan.tasks import gan as gan_task
from jaxtextgan.tasks import lm as lm_task

ARMS = ("none", "lm", "gan")
ARM_NAMES = {"base": "base LM (no fine-tuning)", "none": "fine-tuned on D_real only (control)",
             "lm": "fine-tuned on D_real + LM samples (control)", "gan": "fine-tuned on D_real + GAN samples"}


def gan_run_config(config, base_dir: pathlib.Path) -> ml_collections.ConfigDict:
  """config.gan (built in configs/augment.py on this run's data, tokenizer and seed), G starting from the base LM.

  Its sampling temperature is `augment.temperature`, the one the `lm` arm samples at, so both arms' samples come
  from softmax(logits / T) at one T by construction (the GAN is also trained at it). Its frontier is skipped.
  """
  c = ml_collections.ConfigDict(config.gan.to_dict())
  c.generator.init_from = str(base_dir)
  c.gan.temperature = float(config.augment.temperature)
  if "frontier" in c:
    c.frontier.temperatures = ()
  return c


def check_options(config) -> None:
  a = config.augment
  if config.data.source == "trigram":
    raise InputError("data.source='trigram' is not supported by objective='augment': fine-tuning and evaluation "
                     "run on a text corpus; use ptb, text or tfds")
  if not a.ratio > 0:
    raise InputError(f"augment.ratio={a.ratio} gives an empty sample set: use a positive ratio of synthetic to "
                     "real sequences, e.g. 0.1")
  if a.steps < 1:
    raise InputError(f"augment.steps={a.steps} is invalid: fine-tune for at least one step")
  if not a.temperature > 0:
    raise InputError(f"augment.temperature={a.temperature} is not positive: use e.g. 1.0")
  bad = [s for s in a.splits if s not in ("valid", "test")]
  if bad or not a.splits:
    raise InputError(f"augment.splits={tuple(a.splits)} is invalid: use 'valid' and/or 'test'")


# --- synthetic data ------------------------------------------------------------------------------------------------


def _chunks(total: int, size: int):
  for start in range(0, total, size):
    yield start, min(size, total - start)


def sample_gan(setup: gan_task.Setup, state, num: int, batch: int, seed: int, temperature: float) -> np.ndarray:
  """num x T ids: hard Gumbel-Softmax samples of the trained G (one-hots -> argmax ids), exact draws of
  softmax(logits / temperature)."""
  sampler = gan.make_temperature_sampler(setup.gen_cfg.latent_dim, state.g.graphdef, batch)
  out = [np.asarray(jax.device_get(sampler(state.g.params, jax.random.key(seed + i), jnp.float32(temperature))))[:n]
         for i, (_, n) in enumerate(_chunks(num, batch))]
  return np.concatenate(out).astype(np.int32)


def sample_lm(graphdef, params, bos_id: int, num: int, length: int, temperature: float, batch: int,
              seed: int) -> np.ndarray:
  """num x length ids of plain ancestral sampling from the LM after `bos`, at `temperature` (no top-k/top-p)."""
  prompt = jnp.full((batch, 1), bos_id, jnp.int32)
  out = [np.asarray(jax.device_get(sampling.sample(graphdef, params, prompt, jax.random.key(seed + i),
                                                   max_new_tokens=length, temperature=temperature)))[:n]
         for i, (_, n) in enumerate(_chunks(num, batch))]
  return np.concatenate(out).astype(np.int32)


def to_blocks(ids: np.ndarray, tokenizer, bos_id: int, path: pathlib.Path) -> np.ndarray:
  """ids -> text (written to `path`) -> ids with the same tokenizer -> LM blocks of T + 1 tokens (seed 4.3.1).

  The text round trip is what adding generated text to a corpus means. The re-encoded samples, each after the
  `bos` it was generated from, form one stream [bos, s_1, bos, s_2, ...] that is cut into blocks of T + 1 tokens as
  the real corpus is (data.lm.LMBlocks; the ragged tail is dropped). A sample re-encoded to another length (BPE
  merges across a sample's pieces) so never needs padding: every target is generated text, none a filler.
  """
  length = ids.shape[1]
  texts = [tokenizer.decode(row) for row in ids]
  if jax.process_index() == 0:
    path.write_text("".join(t.replace("\n", " <eos> ").strip() + "\n" for t in texts), encoding="utf-8")
  stream = np.concatenate([np.concatenate([[bos_id], np.asarray(tokenizer.encode(text), np.int64)])
                           for text in texts]).astype(np.int32)
  return lm_data.LMBlocks(stream, length, name="synthetic").blocks.copy()


# --- fine-tuning arms ---------------------------------------------------------------------------------------------


def arm_stage(run: common.Run, config, arm: str, lm_cfg, ft_opt: dict, base_params, train_blocks,
              data: corpus.Corpus) -> stage.Stage:
  """Fine-tuning arm `arm`: the base LM trained on `train_blocks` in <workdir>/finetune_<arm> (resumable). Every
  arm starts from the same base parameters, batches seed and keys, so only the data differs."""
  splits = tuple(config.augment.splits)
  return lm_task.lm_stage(
    f"finetune_{arm}", run.workdir / f"finetune_{arm}", lm_cfg, ft_opt, train_blocks, batch_size=config.data.batch_size,
    seed=config.seed, rng_seed=config.seed + 11, num_steps=config.augment.steps,
    meta={"tokenizer": data.tokenizer_spec, "objective": "lm", "arm": arm}, keep=1, log_every=config.augment.log_every,
    checkpoint_every=config.augment.checkpoint_every, desc=f"fine-tune [{arm}]",
    # A copy: the train step donates its state, and the next arm starts from the same base parameters.
    start=lambda s: s.replace(params=jax.tree.map(jnp.copy, base_params)),
    evaluate=lambda s: lm_task.evaluate_splits(s, data, splits, config.eval, run.mesh))


def base_metrics(base_dir: pathlib.Path, splits, graphdef, base_params, data: corpus.Corpus, eval_cfg, mesh) -> dict:
  """The base LM's metrics, measured as the arms' are: from its `tasks.lm` results.json when that has every split
  by the same method (window and stride), else evaluated here."""
  saved = base_dir / "results.json"
  if saved.exists():
    previous = json.loads(saved.read_text())
    method = {s: evaluation.batches(data, s, eval_cfg)[1] for s in splits}
    if all(isinstance(previous.get(s), dict) and "perplexity" in previous[s]
           and all(previous[s].get(k) == v for k, v in method[s].items()) for s in splits):
      return {s: previous[s] for s in splits}
  return {s: evaluation.perplexity(graphdef, base_params, data, s, eval_cfg, mesh) for s in splits}


# --- report --------------------------------------------------------------------------------------------------------


def table(results: dict) -> str:
  """Markdown table: one row per arm, perplexity and next-token accuracy per evaluated split."""
  splits = results["splits"]
  head = "| Fine-tuning data | Train sequences | " + " | ".join(
    f"{s} perplexity | {s} accuracy (%)" for s in splits) + " |"
  lines = [head, "|" + "---|" * (2 + 2 * len(splits))]
  for arm in ("base",) + ARMS:
    row = results["arms"][arm]
    cells = [ARM_NAMES[arm], str(row.get("train_sequences", "-"))]
    for s in splits:
      cells += [f"{row[s]['perplexity']:.2f}", f"{100 * row[s]['accuracy']:.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def summary(results: dict) -> str:
  return "\n".join([
    f"augmentation: {results['synthetic']} synthetic sequences per arm (ratio {results['ratio']}), "
    f"temperature {results['temperature']}, {results['steps']} fine-tuning steps per arm",
    table(results),
    f"results: {results['results_md']}; wall time {results['wall_seconds']:.0f} s"])


# --- the run -------------------------------------------------------------------------------------------------------


def run(config, workdir) -> dict:
  """Base LM -> GAN -> synthetic sets -> three fine-tuning arms; returns results.json."""
  t0 = time.perf_counter()
  r = common.start(config, workdir)
  check_options(config)
  previous = common.finished_results(r, "steps", config.augment.steps, summary)
  if previous is not None:
    return previous

  # 1. The base LM.
  base_dir = writers.workdir_path(config.lm_workdir) if config.lm_workdir else r.workdir / "base"  # local or gs://
  if not config.lm_workdir:
    finished = base_dir / "results.json"
    if not (finished.exists() and json.loads(finished.read_text()).get("step") == config.train.steps):
      lm_task.run(config.base_lm, base_dir)

  # 2. The GAN, its generator initialised from the base LM.
  gan_cfg = gan_run_config(config, base_dir)
  out = gan_task.run(gan_cfg, r.workdir / "gan")
  setup, gan_state, data = gan_task.load_trained(gan_cfg, r.workdir / "gan", r.mesh)
  tokenizer = data.tokenizer
  blocks = {k: v for k, v in data.blocks.items()}
  for split in config.augment.splits:
    if split not in blocks:
      raise InputError(f"the corpus has no {split} split: pass data.{split}_file or drop it from augment.splits")

  # 3. Synthetic sets of the same size: N = ratio x |D_real|.
  real = blocks["train"]
  num = int(round(config.augment.ratio * len(real)))
  if num < 1:
    raise InputError(f"augment.ratio={config.augment.ratio} of {len(real)} real sequences gives an empty sample "
                     "set: raise the ratio")
  lm_cfg, base_params, _ = gan_task.restore_lm_params(base_dir, data.tokenizer_spec, r.mesh)
  ft_opt = dict(config.finetune_optimizer)
  ft_opt["total_steps"] = config.augment.steps
  graphdef = jax.eval_shape(lm.make_state_fn(lm_cfg, ft_opt), jax.random.key(0)).graphdef
  length, batch, temp = config.data.seq_len, config.augment.sample_batch, config.augment.temperature
  synthetic = {}
  for arm, make in (("gan", lambda: sample_gan(setup, gan_state, num, batch, config.seed + 100, temp)),
                    ("lm", lambda: sample_lm(graphdef, base_params, data.bos_id, num, length, temp, batch,
                                             config.seed + 200))):
    cache = r.workdir / f"synthetic_{arm}.npy"
    if cache.exists():
      synthetic[arm] = np.load(cache)
    else:
      synthetic[arm] = to_blocks(make(), tokenizer, data.bos_id, r.workdir / f"synthetic_{arm}.txt")
      if jax.process_index() == 0:
        np.save(cache, synthetic[arm])

  # 4. Fine-tuning arms and the base LM, evaluated alike.
  arms = {"base": {"train_sequences": 0, **base_metrics(base_dir, config.augment.splits, graphdef, base_params,
                                                        data, config.eval, r.mesh)}}
  for arm in ARMS:
    train_blocks = real if arm == "none" else np.concatenate([real, synthetic[arm]])
    done = stage.run_stage(arm_stage(r, config, arm, lm_cfg, ft_opt, base_params, train_blocks, data), r.mesh).done
    arms[arm] = {"step": done["step"], "train_sequences": int(len(train_blocks)), **done["eval"]}
  results = {"finished": True, "arms": arms, "splits": list(config.augment.splits), "synthetic": num,
             "ratio": config.augment.ratio, "temperature": temp, "steps": config.augment.steps,
             "real_sequences": int(len(real)), "gan": {k: out.get(k) for k in ("before", "after", "loss")},
             "results_md": str(r.workdir / "results.md"), "wall_seconds": time.perf_counter() - t0}
  if jax.process_index() == 0:
    (r.workdir / "results.md").write_text(table(results) + "\n", encoding="utf-8")
  stage.write_json(r.workdir / "results.json", results)
  r.writer.close()
  print(summary(results), flush=True)
  return results
