"""`objective='table1'`: the seed's Table 1 at CPU scale, with the controls that make its last row meaningful.

Stages (each its own resumable workdir): lm12/ and lm24/ (`tasks.lm`), augment24/ (`tasks.augment` on lm24).
Rows: GPT-2 base (12 layers), deep (24), deep + GAN augmentation, and two controls on the deep model: plain-LM-
sample augmentation at the same temperature, and fine-tuning further on D_real alone for the same steps.
"""

from __future__ import annotations

import copy
import datetime
import json
import pathlib
import platform
import time

import jax
import ml_collections

from jaxtextgan.errors import InputError
from jaxtextgan.models import gpt2
from jaxtextgan.tasks import augment as augment_task
from jaxtextgan.tasks import common
from jaxtextgan.tasks import lm as lm_task



def _copy(value):
  """An unlocked deep copy (the command line locks the config; derived configs add keys)."""
  if isinstance(value, ml_collections.ConfigDict):
    return ml_collections.ConfigDict(value.to_dict())
  return copy.deepcopy(value)

def lm_config(config, which: str) -> ml_collections.ConfigDict:
  """A `tasks.lm` config for the 12- or 24-layer model: its preset's depth at config.width."""
  spec = config[which]
  if spec.preset not in gpt2.PRESETS:
    raise InputError(f"{which}.preset={spec.preset!r} is unknown: use one of {', '.join(sorted(gpt2.PRESETS))}")
  fields = {**gpt2.PRESETS[spec.preset], **dict(config.width)}
  model = {f: v for f, v in gpt2.GPT2Config().__dict__.items()}
  model.update(fields)
  model["vocab_size"] = 0
  c = ml_collections.ConfigDict()
  c.objective = "lm"
  for key in ("seed", "mesh_shape", "data", "tokenizer", "eval", "sample"):
    c[key] = _copy(config[key])
  c.model = ml_collections.ConfigDict(model)
  c.optimizer = _copy(config.optimizer)
  c.optimizer.total_steps = spec.steps
  c.train = _copy(config.train)
  c.train.steps = spec.steps
  return c


def augment_config(config, lm24_dir: pathlib.Path) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.objective = "augment"
  for key in ("seed", "mesh_shape", "data", "tokenizer", "eval", "sample", "gan", "augment", "finetune_optimizer"):
    c[key] = _copy(config[key])
  c.lm_workdir = str(lm24_dir)
  # Unused with lm_workdir set, but part of the augment config's schema.
  base = lm_config(config, "lm24")
  c.model, c.optimizer, c.train = base.model, base.optimizer, base.train
  return c


def _finished_lm(path: pathlib.Path, steps: int) -> dict | None:
  saved = path / "results.json"
  if saved.exists():
    out = json.loads(saved.read_text())
    if out.get("step") == steps and "test" in out:
      return out
  return None


def render(config, rows, wall_seconds: float, splits) -> str:
  """results/table1.md: the table, then how it was made."""
  head = "| Model | Layers | " + " | ".join(f"Perplexity ({s}) | Next-token accuracy (%, {s})" for s in splits) + " |"
  lines = ["# Table 1 at CPU scale (PTB, word level)" if config.data.source == "ptb" else "# Table 1 at CPU scale",
           "", head, "|" + "---|" * (2 + 2 * len(splits))]
  for name, layers, metrics in rows:
    cells = [name, str(layers)]
    for s in splits:
      cells += [f"{metrics[s]['perplexity']:.2f}", f"{100 * metrics[s]['accuracy']:.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  w = config.width
  lines += [
    "",
    f"Command: `{config.command}`  ",
    f"Seed: {config.seed}; wall time: {wall_seconds / 60:.1f} min on {platform.machine()} with "
    f"{jax.device_count()} {jax.devices()[0].platform.upper()} device(s); written "
    f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}.",
    "",
    f"Models: GPT-2 presets {config.lm12.preset} / {config.lm24.preset} at d_model={w.d_model}, n_head={w.n_head}, "
    f"d_ff={w.d_ff}; {config.lm12.steps} / {config.lm24.steps} LM steps of {config.data.batch_size} x "
    f"{config.data.seq_len} tokens. The three fine-tuned rows start from the 24-layer LM and train "
    f"{config.augment.steps} more steps on the same batches and schedule; augmentation adds "
    f"ratio={config.augment.ratio} x |D_real| generated sequences (seed eq. 11-12), sampled at temperature "
    f"{config.augment.temperature} (a hard Gumbel-Softmax sample is an exact draw at that temperature). The GAN "
    f"({config.gan.gan.loss}, {config.gan.gan.steps} steps) starts its generator from the 24-layer LM.",
    "",
    "The rows come from one run of the command above; they are what this small-scale run shows, not the seed's "
    "placeholder numbers. Only a gain over the LM-sample control could be credited to the GAN (Caccia et al. 2020).",
  ]
  return "\n".join(lines) + "\n"


def run(config, workdir) -> dict:
  t0 = time.perf_counter()
  r = common.start(config, workdir)
  splits = list(config.augment.splits)
  lm12_dir, lm24_dir = r.workdir / "lm12", r.workdir / "lm24"
  base = {}
  for which, path in (("lm12", lm12_dir), ("lm24", lm24_dir)):
    base[which] = _finished_lm(path, config[which].steps) or lm_task.run(lm_config(config, which), path)
    if base[which].get("preempted"):
      print(f"SIGTERM: {which} is saved in {path}; run again to resume", flush=True)
      return base[which]
  aug = augment_task.run(augment_config(config, lm24_dir), r.workdir / "augment24")
  if aug.get("preempted") or not aug.get("finished"):
    print("SIGTERM: the augmentation stage is saved; run again to resume", flush=True)
    return aug
  layers12 = gpt2.PRESETS[config.lm12.preset]["n_layer"]
  layers24 = gpt2.PRESETS[config.lm24.preset]["n_layer"]
  rows = [("GPT-2 (base)", layers12, base["lm12"]),
          ("GPT-2 (deep)", layers24, base["lm24"]),
          ("GPT-2 + GAN augmentation", layers24, aug["arms"]["gan"]),
          ("control: + LM-sample augmentation, same temperature", layers24, aug["arms"]["lm"]),
          ("control: fine-tuned further without augmentation, same steps", layers24, aug["arms"]["none"])]
  wall = time.perf_counter() - t0
  text = render(config, rows, wall, splits)
  output = pathlib.Path(config.output)
  if jax.process_index() == 0:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
  results = {"rows": [{"model": n, "layers": l, **{s: m[s] for s in splits}} for n, l, m in rows],
             "wall_seconds": wall, "output": str(output)}
  common.write_json(r.workdir / "results.json", results)
  r.writer.close()
  print(text, flush=True)
  return results
