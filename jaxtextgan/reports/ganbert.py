"""The GAN-BERT experiment report: Markdown and figure rendered from the rows `tasks.ganbert.run_experiment`
computed. Every number comes from those rows (accuracy, macro-F1, steps, wall time, D's p(fake) and G's
feature-matching distance logged during training); nothing is trained or evaluated here."""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import jax
import numpy as np

from jaxtextgan import writers

NAMES = {
  "ganbert": "GAN-BERT",
  "finetune": "fine-tune (labeled only, GAN-BERT's steps)",
  "ganbert-sup-only": "GAN-BERT batches, supervised term only",
  "baseline": "fine-tune (release protocol: GAN-BERT's labeled passes)",
  "frozen-lr": "frozen encoder + logistic regression",
  "setfit": "SetFit",
  "setfit-cv": "SetFit, head C by CV",
  "contrastive-lr": "contrastive encoder (JAX) + logistic regression",
  "contrastive-ganbert": "contrastive encoder (JAX), then GAN-BERT",
}
COLORS = {"ganbert": "tab:red", "finetune": "tab:blue", "ganbert-sup-only": "tab:orange", "baseline": "tab:cyan",
          "frozen-lr": "tab:green", "setfit": "tab:purple", "setfit-cv": "tab:pink",
          "contrastive-lr": "tab:olive", "contrastive-ganbert": "tab:brown"}
HOW_CHOSEN = {
  "ganbert": "lr, schedule and steps fixed in advance (configs/ganbert.py)",
  "finetune": "the same lr, schedule and number of optimizer steps as GAN-BERT, fixed in advance",
  "ganbert-sup-only": "GAN-BERT's own batches and steps, fixed in advance",
  "baseline": "GAN-BERT's lr and schedule; steps = GAN-BERT's passes over each labeled row (release protocol)",
  "frozen-lr": "C chosen by k-fold cross-validation on the labeled rows only",
  "setfit": "SetFit's defaults (lr, steps, head C = 1) fixed in advance",
  "setfit-cv": "SetFit's defaults, but the head's C chosen as frozen-lr's (k-fold CV on the labeled rows)",
  "contrastive-lr": "the contrastive Stage's lr, steps and pairs fixed in advance (SetFit's); C as frozen-lr",
  "contrastive-ganbert": "the contrastive Stage as contrastive-lr, then GAN-BERT's fixed settings",
}


def _std(values: Sequence[float]) -> float:
  """Sample standard deviation (ddof=1); 0 for one value."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def fraction_label(row) -> str:
  return "split" if row.get("fraction") is None else f"{100 * row['fraction']:g}%"


def summarize(rows: Sequence[dict]) -> list[dict]:
  """Mean and sample std of accuracy and macro-F1 per (fraction, method), in first-seen order."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row.get("fraction"), row["method"]), []).append(row)
  out = []
  for (fraction, method), members in groups.items():
    acc, f1 = [m["accuracy"] for m in members], [m["macro_f1"] for m in members]
    out.append({"fraction": fraction, "label": fraction_label(members[0]), "method": method, "n": len(members),
                "n_labeled": float(np.mean([m["n_labeled"] for m in members])),
                "steps": float(np.mean([m.get("steps", 0) for m in members])),
                "accuracy_mean": float(np.mean(acc)), "accuracy_std": _std(acc),
                "macro_f1_mean": float(np.mean(f1)), "macro_f1_std": _std(f1),
                "wall_mean": float(np.mean([m["wall_seconds"] for m in members]))})
  return out


def winners(summary: Sequence[dict]) -> list[str]:
  """One sentence per labeled fraction: which method has the best mean accuracy and macro-F1, and GAN-BERT's gap."""
  out = []
  for label in dict.fromkeys(s["label"] for s in summary):
    group = [s for s in summary if s["label"] == label]
    parts = []
    for metric, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
      best = max(group, key=lambda s: s[f"{metric}_mean"])
      gan = next((s for s in group if s["method"] == "ganbert"), None)
      gap = "" if gan is None or gan is best else (
        f"; GAN-BERT is {100 * (best[f'{metric}_mean'] - gan[f'{metric}_mean']):.1f} points below it")
      parts.append(f"best {name}: {NAMES.get(best['method'], best['method'])} ({best[f'{metric}_mean']:.4f})"
                   f"{gap}")
    out.append(f"{label}: " + "; ".join(parts) + ".")
  return out


def adversarial_lines(rows: Sequence[dict]) -> list[str]:
  """D's p(fake) on real rows and on G's vectors, and G's feature-matching distance, at the start, middle and end
  of each GAN-BERT run (logged every train.log_every steps)."""
  lines = ["| labeled | seed | step | p(fake) real | p(fake) G(z) | L_G,fm | L_D,sup |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    curve = row.get("adversarial") or []
    if not curve:
      continue
    for point in dict.fromkeys(tuple(p) for p in (curve[0], curve[len(curve) // 2], curve[-1])):
      step, real, fake, fm, sup = point
      lines.append(f"| {fraction_label(row)} | {row['seed']} | {step} | {real:.4f} | {fake:.4f} | {fm:.3g} | "
                   f"{sup:.4f} |")
  return lines if len(lines) > 2 else []


def total_wall_seconds(rows: Sequence[dict]) -> float:
  """Summed wall time; the contrastive Stage of one (fraction, seed) trains once, though both contrastive rows count
  it, so a contrastive-ganbert row next to its contrastive-lr row gives it back."""
  lr_runs = {(r.get("fraction"), r["seed"]) for r in rows if r["method"] == "contrastive-lr"}
  shared = sum(r.get("contrastive_seconds", 0.0) for r in rows
               if r["method"] == "contrastive-ganbert" and (r.get("fraction"), r["seed"]) in lr_runs)
  return sum(r["wall_seconds"] for r in rows) - shared


def write_report(config, rows: Sequence[dict], command: str) -> None:
  """Markdown (mean +- std, every run, the adversarial diagnostics) and the figure; hand-written notes below
  writers.NOTES_MARKER survive."""
  if jax.process_index() != 0 or not rows:
    return
  exp = config.experiment
  summary = summarize(rows)
  writers.write_report(exp.report, render(config, rows, summary, command))
  if exp.figure:
    plot_experiment(summary, rows, pathlib.Path(exp.figure), exp.title or rows[0]["data"])


def partial(config, rows: Sequence[dict]) -> list[str]:
  """A warning while the experiment has fewer finished runs than fractions x seeds x methods."""
  exp = config.experiment
  planned = {(f, s, m) for f in (list(exp.fractions) or [None]) for s in exp.seeds for m in exp.methods}
  finished = len(planned & {(r.get("fraction"), r["seed"], r["method"]) for r in rows})  # rows of other methods: not
  if finished >= len(planned):
    return []
  return [f"**Partial: {finished} of the {len(planned)} planned runs have finished** (methods "
          f"{', '.join(exp.methods)}; seeds {', '.join(map(str, exp.seeds))}). Running the command again continues "
          "the experiment; until then the verdict covers only the methods and seeds listed below.", ""]


def render(config, rows: Sequence[dict], summary: Sequence[dict], command: str) -> str:
  exp, data_cfg, opt, model = config.experiment, config.data, config.optimizer, config.model
  first = rows[0]
  encoder = model.encoder_dir or "bundled all-MiniLM-L6-v2"
  budget = f"{config.train.steps} iterations" if config.train.steps > 0 else f"{config.train.epochs:g} epochs"
  frozen = (f"; bottom {model.freeze_layers} encoder layers (and embeddings) frozen" if model.get("freeze_layers")
            else "")
  lines = [
    f"# GAN-BERT against the alternatives: {exp.title or first['data']}", "",
    f"Command (repository root): `{command}`", "",
    f"Wall time: {total_wall_seconds(rows) / 60:.1f} min summed over the {len(rows)} runs (a contrastive Stage that two "
    f"rows share counted once). Machine: "
    f"{os.cpu_count()} CPU cores shared with other jobs; the 1-minute load average at the start and end of each "
    f"run is listed (above {os.cpu_count()}: oversubscribed).", "",
    *partial(config, rows),
    "## Verdict", "", *[f"- {w}" for w in winners(summary)], "",
    "## Setup", "",
    f"- Encoder: {encoder}, pooling `{model.pooling}`{frozen}. All methods see the same splits and seeds.",
    f"- Data: `{data_cfg.source}` ({first['data']}); max_len {data_cfg.max_len}, batch {data_cfg.batch_size}.",
    f"- Optimizer of every fine-tuned method: AdamW lr {opt.lr:g} (G: {opt.g_lr or opt.lr:g}"
    f"{f'; classifier head / D: {opt.head_lr:g}' if opt.get('head_lr') else ''}), weight decay "
    f"{opt.weight_decay:g}, linear warm-up over {opt.warmup_proportion:.0%} then linear decay to 0, clip "
    f"{opt.grad_clip_norm:g}. GAN-BERT budget: {budget}.",
    "- Nothing is chosen on the test set. How each method's settings were fixed:",
    *[f"  - {NAMES.get(m, m)}: {HOW_CHOSEN.get(m, 'fixed in advance')}."
      for m in dict.fromkeys(r["method"] for r in rows)],
    "- Budgets: `steps` is optimizer steps; a GAN-BERT batch holds labeled and unlabeled rows, so GAN-BERT and its "
    "supervised-only ablation see fewer labeled rows per step than fine-tuning on the labeled rows alone.",
    "- Metrics on the test split: accuracy and macro-F1; mean +- sample std (ddof=1) over seeds.", "",
    "## Mean +- std over seeds", "",
    "| labeled | n_L | method | steps | accuracy | macro-F1 | seeds | mean wall (s) |",
    "|---|---:|---|---:|---:|---:|---:|---:|",
  ]
  for s in summary:
    lines.append(f"| {s['label']} | {s['n_labeled']:.0f} | {NAMES.get(s['method'], s['method'])} | "
                 f"{s['steps']:.0f} | {s['accuracy_mean']:.4f} +- {s['accuracy_std']:.4f} | "
                 f"{s['macro_f1_mean']:.4f} +- {s['macro_f1_std']:.4f} | {s['n']} | {s['wall_mean']:.0f} |")
  lines += ["", "## Every run", "",
            "| labeled | seed | method | n_L | n_U | steps | labeled passes | accuracy | macro-F1 | wall (s) | "
            "load start -> end |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
  for row in rows:
    lines.append(f"| {fraction_label(row)} | {row['seed']} | {row['method']} | {row['n_labeled']} | "
                 f"{row.get('n_unlabeled', 0)} | {row.get('steps', 0)} | {row.get('labeled_passes', 0):.1f} | "
                 f"{row['accuracy']:.4f} | {row['macro_f1']:.4f} | {row['wall_seconds']:.0f} | "
                 f"{row.get('load_start', 0):.1f} -> {row.get('load_end', 0):.1f} |")
  adversarial = adversarial_lines([r for r in rows if r["method"] == "ganbert"])
  if adversarial:
    lines += ["", "## Does the adversarial part work?", "",
              "D's mean p(fake) on the real rows and on G's vectors of the training batch, G's feature-matching "
              "distance and D's supervised loss, at the first, middle and last logged step of each GAN-BERT run. "
              "D separates G's vectors when p(fake) on G(z) is well above p(fake) on real rows; 1/(k+1) on both "
              "means it does not. Compare GAN-BERT with 'GAN-BERT batches, supervised term only' (same batches and "
              "steps) for what the adversarial terms add, and that ablation with 'fine-tune' for what the batch "
              "schedule adds.", "", *adversarial]
  return "\n".join(lines)


def plot_experiment(summary: Sequence[dict], rows: Sequence[dict], path: pathlib.Path, title: str) -> None:
  """Accuracy and macro-F1 per method (bars, dots: seeds; or curves over labeled %), and p(fake) over training."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  path.parent.mkdir(parents=True, exist_ok=True)
  methods = list(dict.fromkeys(s["method"] for s in summary))
  curves = [r for r in rows if r.get("adversarial")]
  fig, axes = plt.subplots(1, 3 if curves else 2, figsize=(15 if curves else 10, 4.2))
  curve = len({s["fraction"] for s in summary}) > 1 and all(s["fraction"] is not None for s in summary)
  for ax, metric, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "macro_f1", "macro-F1")):
    for j, method in enumerate(methods):
      points = [s for s in summary if s["method"] == method]
      name = NAMES.get(method, method)
      if curve:
        ax.errorbar([100 * s["fraction"] for s in points], [s[f"{metric}_mean"] for s in points],
                    yerr=[s[f"{metric}_std"] for s in points], marker="o", capsize=3, color=COLORS.get(method),
                    label=name)
      else:
        ax.bar(j, points[0][f"{metric}_mean"], yerr=points[0][f"{metric}_std"], capsize=4,
               color=COLORS.get(method), alpha=0.6, label=name)
        seeds = [r[metric] for r in rows if r["method"] == method]
        ax.scatter(np.full(len(seeds), j), seeds, color="k", s=12, zorder=3)
    if curve:
      ax.set_xscale("log")
      ax.set_xlabel("labeled examples (% of the training set)")
      ticks = sorted({100 * s["fraction"] for s in summary})
      ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    else:
      ax.set_xticks(range(len(methods)), [""] * len(methods))
    ax.set_ylabel(label)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  if curves:
    ax = axes[2]
    for i, row in enumerate(curves):
      pts = np.asarray(row["adversarial"], float)
      tag = f"{fraction_label(row)} s{row['seed']}"
      ax.plot(pts[:, 0], pts[:, 1], color="tab:blue", alpha=0.7, label=f"real ({tag})" if i < 3 else None)
      ax.plot(pts[:, 0], pts[:, 2], color="tab:red", alpha=0.7, label=f"G(z) ({tag})" if i < 3 else None)
    ax.set_xlabel("GAN-BERT step")
    ax.set_ylabel("D's mean p(fake)")
    ax.set_title("does D separate G's vectors?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"{title}: mean +- std over seeds" + ("" if curve else " (dots: seeds)"))
  fig.tight_layout()
  writers.save_figure(fig, path)
