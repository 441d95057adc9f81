"""The dfine report: Table 1 (trigram data) or Table 2 (text), Figure 1 and the stages, rendered from the results
dict of `tasks.dfine.run`. Every number comes from that dict; nothing is evaluated here."""

from __future__ import annotations

import pathlib

import jax

from jaxtextgan import evaluation, writers

TABLE1_HEADER = ["| Estimating with | Test ppl. | Freq. ppl. | Rare ppl. | Ratio | log q − log p |",
                 "|---|---|---|---|---|---|"]
TABLE2_HEADER = ["| Fine-tuning option | Val. loss | Val. ppl. | Val. rev. KL (eq. 10-12) "
                 "| Val. rev. KL (exact over V) | Test ppl. |", "|---|---|---|---|---|---|"]


def write(out: dict, config, workdir: pathlib.Path) -> str:
  """Renders the report into <workdir>/report.md (and config.report.markdown, keeping its notes) and Figure 1 into
  <workdir>/figure1.png (and config.report.figure), on process 0; returns the Markdown."""
  caption = figure1(out, config, workdir) if out.get("figure1") else ""
  md = render(out, config, caption)
  if jax.process_index() == 0:
    (workdir / "report.md").write_text(md, encoding="utf-8")
    if config.report.get("markdown"):
      writers.write_report(config.report.markdown, md)
  return md


def render(out: dict, config, figure_caption: str = "") -> str:
  """The whole report as Markdown."""
  rep, stages = out["report"], out["stages"]
  body = table1(rep, figure_caption) if "table1" in rep else table2(rep)
  total = sum(s.get("wall_seconds", 0.0) for s in stages.values())
  rows = "\n".join(f"| {name} | {s['step']} | {s.get('wall_seconds', 0.0):.0f} |" for name, s in stages.items())
  title = config.report.get("title", "LM fine-tuning with a discriminator")
  return (f"# {title}\n\nCommand: `{out['command']}`\n\nSeed: {config.seed}. Wall time of this invocation: "
          f"{out['wall_seconds'] / 60:.1f} min; of the stages, each in the run that finished it: {total / 60:.1f} min "
          f"(JAX {out['jax_version']}, {out['devices']}).\n\n{body}\n\n### Stages\n\n"
          f"| stage | steps | wall s (run that finished it) |\n|---|---|---|\n{rows}\n")


def table1(rep: dict, figure_caption: str = "") -> str:
  """Table 1 with the chosen word's probabilities, the recovered gap and the discriminators."""
  lines = list(TABLE1_HEADER)
  for label, row in rep["table1"].items():
    stats = (f"{row['logq_minus_logp_mean']:.3f} ± {row['logq_minus_logp_std']:.3f}"
             if "logq_minus_logp_mean" in row else "")
    lines.append(f"| {label} | {row['ppl']:.2f} | {row['frequent_ppl']:.2f} | {row['rare_ppl']:.2f} | "
                 f"{row['ratio']:.1f} | {stats} |")
  md = "## Table 1 (synthetic trigram data)\n\n" + "\n".join(lines)
  if "chosen_word" in rep:
    md += (f"\n\nChosen word: id {rep['chosen_word']} (training-frequency rank {rep['chosen_rank']}), output bias set "
           f"to {rep['chosen_bias']}. Mean probability at its {rep['chosen_count']} test occurrences: true p "
           f"{rep['p_chosen_mean']:.2e}, " + ", ".join(f"{k} {v:.2e}" for k, v in rep["q_chosen_mean"].items())
           + f".\n\nGap perturbed − initial test ppl: {rep['gap']:.2f}; share recovered by fine-tuning: "
           + ", ".join(f"{k}: {100 * v:.0f}%" for k, v in rep["gap_recovered"].items())
           + " (the paper: (86.01 − 85.63)/(86.01 − 84.89) = 34%).")
    if figure_caption:
      md += "\n\n" + figure_caption
  return md + discriminators(rep)


def table2(rep: dict) -> str:
  """Table 2: every row's reverse KL estimated with the discriminator trained against q0."""
  lines = list(TABLE2_HEADER)
  methods = sorted({evaluation.describe(e[s]) for e in rep["table2"].values() for s in ("valid", "test") if s in e})
  for label, e in rep["table2"].items():
    v, t = e["valid"], e.get("test")
    lines.append(f"| {label} | {v['loss']:.5f} | {v['perplexity']:.2f} | {v['rkl']:.5f} | {v['rkl_exact']:.5f} | "
                 + (f"{t['perplexity']:.2f} |" if t else "– |"))
  return ("## Table 2 style (reverse KL estimated with the trained discriminator for every row)\n\n"
          + "\n".join(lines) + "\n\nVal. loss is the fine-tuning objective eq. (12) on validation: cross-entropy "
          "(= log Val. ppl.) + Val. rev. KL (eq. 10-12), in nats per word. Val. rev. KL (exact over V) is "
          "KL(q ‖ p̂) with p̂ ∝ q0 (1 − r)/r of eq. (8) normalised over the vocabulary. Every validation and "
          f"test number scores the split's tokens by {' / '.join(methods)} (`eval.perplexity`, `eval.stride`)."
          + discriminators(rep))


def discriminators(rep: dict) -> str:
  """D's eq. (6) terms on validation, and D before training (the unigram-only D with init 'lm' + bias 'unigram')."""
  rows = [f"| {name} | {d.get('train_layers', 'all')} | {d['loss']:.4f} | "
          + (f"{d['start_loss']:.4f} | {d['start_loss'] - d['loss']:+.4f} | " if "start_loss" in d else "– | – | ")
          + f"{d['d_q']:.4f} | {d['d_p']:.4f} | {d['r_model']:.4f} | {d['r_real']:.4f} |"
          for name, d in rep.get("discriminators", {}).items()]
  if not rows:
    return ""
  return ("\n\n### Discriminators (validation, eq. 6; log 4 = 1.3863 when q0 = p)\n\n"
          "D at start: before training (with init 'lm' and bias_init 'unigram', the unigram-only D r = σ(b_w)); "
          "gain = D at start − D.\n\n"
          "| stage | trained layers | D | D at start | gain | D^(q) | D^(p) | E_q0 r | r(w*) |\n"
          "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def _pm(x: dict, digits: int = 2) -> str:
  return f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}"


def seeds_report(out: dict, config) -> str:
  """mean ± std (sample std over the seeds) of Table 1 or Table 2 and of the discriminators, from
  `tasks.dfine.run_seeds`."""
  agg, seeds = out["over_seeds"], out["seeds"]
  title = config.report.get("title", "LM fine-tuning with a discriminator")
  md = [f"# {title}: {len(seeds)} seeds\n", f"Command: `{out['command']}`\n",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds. Wall time of this invocation: "
        f"{out['wall_seconds'] / 60:.1f} min (JAX {out['jax_version']}, {out['devices']}). Each seed's own report: "
        "seed_<s>/report.md in the workdir.\n"]
  if "table1" in agg:
    md += ["## Table 1 (synthetic trigram data, test)\n",
           "| Estimating with | Test ppl. | Freq. ppl. | Rare ppl. | Ratio |", "|---|---|---|---|---|"]
    md += [f"| {label} | {_pm(r['ppl'])} | {_pm(r['frequent_ppl'])} | {_pm(r['rare_ppl'])} | {_pm(r['ratio'], 1)} |"
           for label, r in agg["table1"].items()]
    if "gap_recovered" in agg:
      md += ["", "Share of the perturbed model's gap recovered: " + ", ".join(
        f"{k}: {100 * v['mean']:.0f}% ± {100 * v['std']:.0f}%" for k, v in agg["gap_recovered"].items()) + "."]
  if "table2" in agg:
    md += ["## Table 2 style (test and validation perplexity, eq. 12 validation loss)\n",
           "| Fine-tuning option | Val. loss | Val. ppl. | Val. rev. KL (eq. 10-12) | Val. rev. KL (exact over V) | "
           "Test ppl. |", "|---|---|---|---|---|---|"]
    for label, e in agg["table2"].items():
      v, t = e["valid"], e.get("test")
      md.append(f"| {label} | {_pm(v['loss'], 5)} | {_pm(v['perplexity'])} | {_pm(v['rkl'], 5)} | "
                f"{_pm(v['rkl_exact'], 5)} | " + (f"{_pm(t['perplexity'])} |" if t else "– |"))
    first = next(iter(out["per_seed"].values()))["table2"]
    methods = sorted({evaluation.describe(e[s]) for e in first.values() for s in ("valid", "test") if s in e})
    md += ["", f"Perplexity by {' / '.join(methods)} (`eval.perplexity`, `eval.stride`)."]
    for label, d in agg.get("paired", {}).items():
      for split, x in d.items():
        verdict = ("more than 2 std below" if x["mean"] + 2 * x["std"] < 0 else "NOT more than 2 std below")
        md.append(f"- {label} − r ≡ 1/2 control, {split} perplexity, paired by seed: {_pm(x)} (per seed "
                  + ", ".join(f"{y:+.2f}" for y in x["values"]) + f"): {verdict} the control.")
  if "discriminators" in agg:
    md += ["\n### Discriminators (validation, eq. 6; log 4 = 1.3863)\n", "| stage | D | D at start | gain |",
           "|---|---|---|---|"]
    for name, d in agg["discriminators"].items():
      start = d.get("start_loss")
      gain = ([s - l for s, l in zip(start["values"], d["loss"]["values"])] if start else None)
      md.append(f"| {name} | {_pm(d['loss'], 4)} | " + (f"{_pm(start, 4)} | " if start else "– | ")
                + (f"{sum(gain) / len(gain):+.4f} (per seed " + ", ".join(f"{g:+.4f}" for g in gain) + ") |"
                   if gain else "– |"))
  return "\n".join(md) + "\n"


def figure1(out: dict, config, workdir: pathlib.Path) -> str:
  """Figure 1: validation perplexity and qθ(chosen | c) over fine-tuning steps, one curve per run; its caption."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  probe = None
  for curve in out["figure1"].values():
    probe, base, variant = curve["probe"], curve["base"], curve["variant"]
    label = f"{base}, {'ours (eq. 12)' if variant == 'disc' else variant}"
    for ax, key in zip(axes, ("perplexity", "q_chosen")):
      steps, values = zip(*curve[key]) if curve[key] else ((), ())
      ax.plot(steps, values, marker="." if key == "perplexity" else None, label=label)
    if variant == "disc":
      axes[1].axhline(probe["p_hat"], ls=":", color="gray", label=f"p̂ from the discriminator ({base})")
  if "p_true" in probe:
    axes[1].axhline(probe["p_true"], ls="--", color="k", label="true p")
  axes[0].set_title("validation perplexity")
  axes[1].set_title(f"q(chosen word {probe['word']} | fixed context)")
  axes[1].set_yscale("log")
  for ax in axes:
    ax.set_xlabel("fine-tuning step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  png = workdir / "figure1.png"
  if jax.process_index() == 0:
    writers.save_figure(fig, png, *([config.report.figure] if config.report.get("figure") else []))
  plt.close(fig)
  where = config.report.get("figure") or str(png)
  return (f"Figure 1 ({pathlib.Path(where).name}): validation perplexity and the chosen word's probability at test "
          f"context row {probe['row']}, position {probe['position']} (true p {probe.get('p_true', float('nan')):.2e}, "
          f"perturbed q0 {probe['q0']:.2e}, discriminator's p̂ {probe['p_hat']:.2e}) over fine-tuning steps.")
