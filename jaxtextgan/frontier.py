"""Quality-diversity frontiers of text generators over a sampling-temperature grid (Caccia et al. 2020).

A single temperature misleads: lowering an MLE model's temperature T trades diversity for quality, so a GAN is
compared with MLE along the whole curve ("Language GANs Falling Short", code pclucas14/GansFallingShort). Every
generator draws at softmax(logits / T) for each T of a grid (G's logits are divided by T before its Gumbel-Softmax
draw, so a hard sample is an exact draw at T), and each (generator, T) is one point of its curve:

  synthetic (trigram oracle):  quality   NLL-oracle = -(1/NL) sum_n sum_t log p_oracle(x_t^n | x_<t^n), x^n ~ G_T
                               diversity NLL-test   = -(1/NL) sum_n log p_{G_T}(x^n), x^n held-out real sentences
  text:                        quality   BLEU-5 of the samples against held-out sentences (higher is better)
                               diversity Self-BLEU-5 of the samples (lower = more diverse)
  text, second plane:          quality   LM score = NLL of the samples under a stronger judge LM
                               diversity reverse-LM score = NLL of real test text under an LM trained on the
                                         samples (both lower = better; `jaxtextgan.frontier_lm`)

p_{G_T}(x) is G's own likelihood at T, z included (`objectives.gan.sequence_nll`, a Monte Carlo estimate over K
latents, exact for the MLE G whose latent projection is 0). Lower is better on both trigram axes and on Self-BLEU.

"Ahead at matched diversity": each curve's frontier is its own Pareto-efficient points (no other point of the same
curve at least as good on both axes and better on one), sorted by diversity and joined linearly. NLL-test is not
monotone in T (it is lowest near T = 1 and rises both ways), so the hot points, whose quality and diversity are both
worse than a colder point's, drop out. On the diversity range both frontiers cover, the curves are compared at 101
evenly spaced diversities. Pareto counts compare whole curves: a point of one is dominated when a point of the other
is at least as good on both axes and better on one.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtextgan import metrics, writers
from jaxtextgan.data import corpus
from jaxtextgan.errors import InputError
from jaxtextgan.objectives import gan

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Axes:
  """One frontier plane: x = diversity, y = quality, and which direction is better on each."""
  x: str
  y: str
  x_label: str
  y_label: str
  y_lower_is_better: bool


ORACLE_AXES = Axes("nll_test", "nll_oracle", "NLL-test of G at T (lower = more diverse)",
                   "NLL-oracle of samples (lower = better)", True)
TEXT_AXES = Axes("self_bleu5", "bleu5", "Self-BLEU-5 (lower = more diverse)", "BLEU-5 (higher = better)", False)
LM_AXES = Axes("reverse_lm", "lm_score", "reverse-LM NLL of real test text (lower = more diverse)",
               "LM score: judge's NLL of samples (lower = better)", True)


def planes_of(rows: Sequence[dict], first: Axes) -> list[Axes]:
  """`first`, then every other plane the rows have a point on (the BLEU plane also holds on the trigram oracle)."""
  return [first] + [a for a in (TEXT_AXES, LM_AXES) if a != first and any(a.x in r and a.y in r for r in rows)]


def axes_for(data: corpus.Corpus) -> Axes:
  return ORACLE_AXES if data.trigram is not None else TEXT_AXES


@dataclasses.dataclass
class Generator:
  """A generator to sweep: G's graphdef and params (objectives.gan's GPT-2 or MLP G) and its latent size."""
  name: str
  graphdef: object
  params: object
  latent_dim: int


def check_temperatures(temperatures: Sequence[float]) -> tuple[float, ...]:
  temps = tuple(float(t) for t in temperatures)
  if not temps or any(not t > 0 for t in temps):
    raise InputError(f"frontier temperatures {temps} are invalid: use positive temperatures, e.g. (0.8, 1.0, 1.2)")
  return temps


# --- G's NLL of held-out text at T ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _nll_fn(graphdef, num_z: int):
  @jax.jit
  def nll(params, targets_BT, key, temperature):
    return gan.sequence_nll(graphdef, params, targets_BT, key, temperature, num_z)
  return nll


def nll_test(g: Generator, targets_NT: np.ndarray, temperature: float, *, num_z: int, batch_size: int,
             seed: int) -> float:
  """-(1/(N T)) sum_n log p_{G_T}(x^n) over held-out rows `targets_NT` (padded to whole batches, padding dropped).
  The latents are drawn per batch from fold_in(key(seed), batch index), the same at every temperature."""
  fn = _nll_fn(g.graphdef, int(num_z))
  n, length = targets_NT.shape
  total = 0.0
  for i, lo in enumerate(range(0, n, batch_size)):
    rows = targets_NT[lo:lo + batch_size]
    pad = batch_size - len(rows)
    batch = np.concatenate([rows, np.repeat(rows[:1], pad, axis=0)]) if pad else rows
    out = np.asarray(jax.device_get(fn(g.params, jnp.asarray(batch, jnp.int32), jax.random.fold_in(
      jax.random.key(seed), i), jnp.float32(temperature))), np.float64)
    total += float(out[:len(rows)].sum())
  return total / (n * length)


# --- the sweep ---------------------------------------------------------------------------------------------------


def held_out_targets(data: corpus.Corpus, length: int, split: str = "test", limit: int | None = None) -> np.ndarray:
  """(N, length) real rows that start a sentence, as G's samples do (without the bos column)."""
  rows = data.sentence_starts(split, length)[:, 1:length + 1]
  return rows[:limit] if limit else rows


def sweep(generators: Sequence[Generator], data: corpus.Corpus, temperatures: Sequence[float], *, length: int,
          num_samples: int, seed: int, num_z: int = 4, batch_size: int = 256, max_references: int | None = 1000,
          max_test: int | None = None, lm_plane=None, log=print) -> list[dict]:
  """One row per (generator, temperature): {generator, temperature, nll_test, bleu5, self_bleu5, [nll_oracle],
  [lm_score, reverse_lm]}.

  Every point draws `num_samples` samples with key(seed) (common random numbers across temperatures and
  generators). BLEU-5 is against the valid sentences (at most `max_references`); Self-BLEU-5 over all samples.
  `lm_plane` (a `frontier_lm.LMPlane`) adds the LM score, and the reverse-LM score at its temperatures.
  """
  temps = check_temperatures(temperatures)
  refs = data.sentences_of("valid")
  targets = held_out_targets(data, length, limit=max_test)
  rows = []
  for g in generators:
    sampler = gan.make_temperature_sampler(g.latent_dim, g.graphdef, num_samples)
    for t in temps:
      ids = np.asarray(jax.device_get(sampler(g.params, jax.random.key(seed), jnp.float32(t))))
      hyps = [data.sentence(r) for r in ids]
      row = {"generator": g.name, "temperature": t,
             "nll_test": nll_test(g, targets, t, num_z=num_z, batch_size=batch_size, seed=seed + 1)}
      row["bleu5"] = metrics.bleu_scores(hyps, refs, (5,), max_references=max_references, seed=seed)[5]
      row["self_bleu5"] = metrics.self_bleu_scores(hyps, (5,), seed=seed)[5]
      if data.trigram is not None:
        row["nll_oracle"] = metrics.nll_oracle(ids, data.trigram.log_prob)
      if lm_plane is not None:
        row.update(lm_plane(g, t, ids))
      rows.append(row)
      if log:
        log("frontier " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
  return rows


# --- comparing curves ----------------------------------------------------------------------------------------------


def points_of(rows: Sequence[dict], name: str, axes: Axes) -> list[tuple[float, float, float]]:
  """(x, y, T) of generator `name`'s rows that have both of the plane's values (the reverse-LM score may be
  computed at some temperatures only)."""
  return [(r[axes.x], r[axes.y], r["temperature"]) for r in rows
          if r["generator"] == name and axes.x in r and axes.y in r]


def curve(rows: Sequence[dict], name: str, axes: Axes) -> tuple[np.ndarray, np.ndarray]:
  """(x, y) of generator `name`'s points, sorted by x (diversity)."""
  pts = sorted(p[:2] for p in points_of(rows, name, axes))
  if not pts:
    raise InputError(f"no frontier rows for generator {name!r} on the plane {axes.y} against {axes.x}")
  return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def _dominates(xb, yb, x, y, axes: Axes) -> np.ndarray:
  """Which points (xb, yb) are at least as good as (x, y) on both axes and better on one."""
  no_worse = (xb <= x) & ((yb <= y) if axes.y_lower_is_better else (yb >= y))
  return no_worse & ((xb < x) | (yb != y))


def efficient(rows: Sequence[dict], name: str, axes: Axes) -> tuple[np.ndarray, np.ndarray]:
  """(x, y) of `name`'s Pareto-efficient points, sorted by x: its frontier."""
  x, y = curve(rows, name, axes)
  keep = np.array([not np.any(_dominates(x, y, xi, yi, axes)) for xi, yi in zip(x, y)])
  return x[keep], y[keep]


def _better(a, b, lower: bool):
  return a < b if lower else a > b


def pareto_dominated(rows: Sequence[dict], name: str, by: str, axes: Axes) -> int:
  """How many of `name`'s points some point of `by` Pareto-dominates (x no higher, y no worse, one strictly)."""
  xa, ya = curve(rows, name, axes)
  xb, yb = curve(rows, by, axes)
  return sum(bool(np.any(_dominates(xb, yb, x, y, axes))) for x, y in zip(xa, ya))


def compare(rows: Sequence[dict], a: str, b: str, axes: Axes, points: int = 101) -> dict:
  """`a` against `b` at matched diversity, on their Pareto-efficient frontiers (module docstring).

  Returns {overlap: (lo, hi) or None, a_ahead, b_ahead: fractions of the overlap grid where each has the better
  interpolated quality, max_gap: the largest |y_a - y_b| there (positive: in a's favour at that x),
  a_dominated, b_dominated: Pareto-dominated point counts, verdict: one sentence}.
  """
  xa, ya = efficient(rows, a, axes)
  xb, yb = efficient(rows, b, axes)
  lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
  out = {"a": a, "b": b, "a_dominated": pareto_dominated(rows, a, b, axes),
         "b_dominated": pareto_dominated(rows, b, a, axes), "efficient_points": (len(xa), len(xb))}
  na, nb = (len(points_of(rows, g, axes)) for g in (a, b))
  pareto = f"Pareto-dominated points: {a} {out['a_dominated']}/{na}, {b} {out['b_dominated']}/{nb}"
  if not hi > lo:
    out.update(overlap=None, a_ahead=0.0, b_ahead=0.0, max_gap=0.0, intervals=[],
               verdict=(f"{a} ({axes.x} {xa.min():.3f}..{xa.max():.3f}) and {b} ({xb.min():.3f}..{xb.max():.3f}) "
                        f"cover disjoint diversity ranges: no comparison at matched diversity; {pareto}"))
    return out
  grid = np.linspace(lo, hi, points)
  gain = np.interp(grid, xa, ya) - np.interp(grid, xb, yb)  # y_a - y_b
  gain = -gain if axes.y_lower_is_better else gain  # > 0: a better
  a_ahead, b_ahead = float(np.mean(gain > 0)), float(np.mean(gain < 0))
  # Maximal runs of one sign, as x-intervals.
  sign = np.sign(gain)
  intervals, start = [], 0
  for i in range(1, points + 1):
    if i == points or sign[i] != sign[start]:
      who = a if sign[start] > 0 else b if sign[start] < 0 else "tie"
      intervals.append((who, float(grid[start]), float(grid[i - 1])))
      start = i
  leader = a if a_ahead > b_ahead else b
  runs = ", ".join(f"{who} on [{x0:.3f}, {x1:.3f}]" for who, x0, x1 in intervals)
  out.update(overlap=(float(lo), float(hi)), a_ahead=a_ahead, b_ahead=b_ahead,
             max_gap=float(gain[np.argmax(np.abs(gain))]), intervals=intervals,
             verdict=(f"at matched diversity ({axes.x} in [{lo:.3f}, {hi:.3f}]) {leader} is ahead on "
                      f"{100 * max(a_ahead, b_ahead):.0f}% of the range ({runs}); {pareto}"))
  return out


# --- reports -------------------------------------------------------------------------------------------------------


def table(rows: Sequence[dict], keys: Sequence[str] | None = None) -> str:
  """Markdown table: one row per (generator, temperature)."""
  keys = list(keys or [k for k in ("nll_oracle", "nll_test", "bleu5", "self_bleu5", "lm_score", "reverse_lm")
                        if any(k in r for r in rows)])
  names = {"nll_oracle": "NLL-oracle", "nll_test": "NLL-test of G at T", "bleu5": "BLEU-5",
           "self_bleu5": "Self-BLEU-5", "lm_score": "LM score", "reverse_lm": "reverse-LM score"}
  lines = ["| generator | T | " + " | ".join(names.get(k, k) for k in keys) + " |",
           "|---|---|" + "---|" * len(keys)]
  for r in rows:
    lines.append(f"| {r['generator']} | {r['temperature']:.2f} | "
                 + " | ".join(f"{r[k]:.4f}" if k in r else "–" for k in keys) + " |")
  return "\n".join(lines)


def text_table(rows: Sequence[dict], axes: Axes) -> list[str]:
  """Fixed-width lines for a terminal: generator, T, diversity, quality."""
  lines = [f"{'generator':<14}{'T':>6}{axes.x:>14}{axes.y:>14}"]
  lines += [f"{r['generator']:<14}{r['temperature']:>6.2f}{r[axes.x]:>14.4f}{r[axes.y]:>14.4f}" for r in rows]
  return lines


def plot(rows_by_panel: dict[str, Sequence[dict]], axes: Axes | Sequence[Axes], path: pathlib.Path,
         title: str = "", mean_rows: dict[str, Sequence[dict]] | None = None) -> None:
  """One column per key of `rows_by_panel` (e.g. a seed or a source) and one row of panels per plane of `axes` (one
  Axes or several, e.g. [TEXT_AXES, LM_AXES]); one curve per generator, points labelled with T. With `mean_rows`, a
  last column draws those (e.g. the mean over seeds)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  planes = [axes] if isinstance(axes, Axes) else list(axes)
  panels = dict(rows_by_panel)
  if mean_rows:
    panels.update(mean_rows)
  fig, axs = plt.subplots(len(planes), len(panels), figsize=(5 * len(panels), 4.2 * len(planes)), squeeze=False)
  for plane, ax_row in zip(planes, axs):
    for ax, (panel, rows) in zip(ax_row, panels.items()):
      for name in dict.fromkeys(r["generator"] for r in rows):
        pts = sorted(points_of(rows, name, plane), key=lambda p: p[2])
        if not pts:
          continue
        xs, ys, ts = zip(*pts)
        ax.plot(xs, ys, marker="o", label=name)
        for x, y, t in zip(xs, ys, ts):
          ax.annotate(f"{t:g}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
      ax.set_xlabel(plane.x_label)
      ax.set_ylabel(plane.y_label)
      ax.set_title(str(panel), fontsize=9)
      ax.grid(alpha=0.3)
      if ax.get_legend_handles_labels()[0]:  # a panel without a point of this plane has no curve to name
        ax.legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  writers.save_figure(fig, path)


def mean_over(runs: Sequence[Sequence[dict]]) -> list[dict]:
  """Row-wise mean of frontier rows of several seeds (same generators and temperatures, in the same order)."""
  out = []
  for group in zip(*runs):
    row = {"generator": group[0]["generator"], "temperature": group[0]["temperature"]}
    for k, v in group[0].items():
      if k not in row and isinstance(v, float):
        row[k] = float(np.mean([r[k] for r in group]))
    out.append(row)
  return out
