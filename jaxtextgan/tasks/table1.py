"""`objective='table1'`: the seed's Table 1 at CPU scale, with the controls that make its last row meaningful.

Stages (each its own resumable workdir): lm12/ and lm24/ (`tasks.lm`), augment24/ (`tasks.augment` on lm24).
Rows: GPT-2 base (12 layers), deep (24), deep + GAN augmentation, and two controls on the deep model: plain-LM-
sample augmentation at the same temperature, and fine-tuning further on D_real alone for the same steps.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import platform
import time

import jax
import ml_collections

from jaxtextgan import writers
from jaxtextgan.tasks import augment as augment_task
from jaxtextgan.stage import write_json
from jaxtextgan.tasks import common
from jaxtextgan.tasks import lm as lm_task



def augment_config(config, lm24_dir: pathlib.Path) -> ml_collections.ConfigDict:
  """config.augment_run (built in configs/table1.py on this run's fields), its base LM the 24-layer one."""
  c = ml_collections.ConfigDict(config.augment_run.to_dict())
  c.lm_workdir = str(lm24_dir)
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
    f"Models: GPT-2 of {config.lm12.model.n_layer} / {config.lm24.model.n_layer} layers at d_model={w.d_model}, "
    f"n_head={w.n_head}, d_ff={w.d_ff}; {config.lm12.train.steps} / {config.lm24.train.steps} LM steps of {config.data.batch_size} x "
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
    base[which] = _finished_lm(path, config[which].train.steps) or lm_task.run(config[which], path)
  aug = augment_task.run(augment_config(config, lm24_dir), r.workdir / "augment24")
  layers12, layers24 = config.lm12.model.n_layer, config.lm24.model.n_layer
  rows = [("GPT-2 (base)", layers12, base["lm12"]),
          ("GPT-2 (deep)", layers24, base["lm24"]),
          ("GPT-2 + GAN augmentation", layers24, aug["arms"]["gan"]),
          ("control: + LM-sample augmentation, same temperature", layers24, aug["arms"]["lm"]),
          ("control: fine-tuned further without augmentation, same steps", layers24, aug["arms"]["none"])]
  wall = time.perf_counter() - t0
  text = render(config, rows, wall, splits)
  output = writers.workdir_path(config.output)  # local or gs://
  if jax.process_index() == 0:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
  results = {"rows": [{"model": n, "layers": l, **{s: m[s] for s in splits}} for n, l, m in rows],
             "wall_seconds": wall, "output": str(output)}
  write_json(r.workdir / "results.json", results)
  r.writer.close()
  print(text, flush=True)
  return results
