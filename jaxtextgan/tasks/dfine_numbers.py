"""The numbers of the dfine report, measured on trained parameters: the discriminator's eq. (6) terms, the
fine-tuning evaluation (eq. 10-12, reverse KL), Table 1 against the exact p, Table 2, Figure 1's probe and curves.

Each function takes the run's `Plan` (config, mesh, graphs, data); `reports.dfine` renders the dict
they fill. Every sum runs over every scored target of a split (`evaluation.reduce_sums`), so no number depends on
the batch size. On text, the validation and test numbers score the contiguous stream with sliding windows by default
(`eval.perplexity`, `eval.stride`; `evaluation.batches`), and each metrics dict records its `window` and `stride`
(0: blocks); the trigram oracle's sentences are independent, so there the block method is exact and is used.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
from typing import Any

import jax
import numpy as np

from jaxtextgan import evaluation, writers
from jaxtextgan import sharding as shd
from jaxtextgan.data import corpus, word_stats
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import dfine

BASES = ("initial", "perturbed")

# Jitted once per graph: graphdefs (and eps) are static.
_DISC_SUMS = jax.jit(dfine.disc_sums, static_argnums=(0, 1))
_FT_SUMS = jax.jit(dfine.finetune_sums, static_argnums=(0, 1, 2, 3))
_LOG_Q = jax.jit(dfine.token_log_probs, static_argnums=0)
_Q0_MASS = jax.jit(dfine.q0_mass, static_argnums=0)

FT_LABELS = {"disc": "ftd.", "nodisc": "ftd. without discriminator", "ce": "ftd. with cross-entropy only"}
TABLE2_LABELS = {"disc": "Without dropout, with discriminator",
                 "nodisc": "Without dropout, without discriminator (r ≡ 1/2)",
                 "ce": "Without dropout, cross-entropy only"}


@dataclasses.dataclass
class Plan:
  """The checked config, models, their graphs and parameter shardings, and the data (None in a dry run)."""
  config: Any
  mesh: Any
  models: dict[str, gpt2.GPT2Config]  # 'lm' (q0), 'disc', 'ft'
  runs: list[tuple[str, str]]  # (base, variant) of each fine-tuning stage
  data: corpus.Corpus | None = None
  workdir: pathlib.Path | None = None

  def __post_init__(self):
    self.eps = float(self.config.finetune.eps)
    self.graphdefs = {k: dfine.graphdef_of(m) for k, m in self.models.items()}
    shardings = {k: dfine.param_shardings(self.models[k], self.mesh) for k in ("lm", "disc")}
    self.abstract = {k: jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), *v)
                     for k, v in shardings.items()}
    self.frozen_shardings = {"q0": shardings["lm"][1], "disc": shardings["disc"][1]}
    self.disc_bases = [b for b in BASES if any(rb == b for rb, _ in self.runs)]

  def directory(self, name: str) -> pathlib.Path | None:
    return None if self.workdir is None else self.workdir / name

  def stage_fields(self, stage_cfg) -> dict:
    """Stage fields every dfine stage takes from the config."""
    return dict(log_every=int(stage_cfg.log_every), checkpoint_every=int(stage_cfg.checkpoint_every),
                keep=int(self.config.keep_checkpoints), tensorboard=False,
                show_progress=bool(self.config.get("progress", True)))


def _batches(p: Plan, blocks):
  return evaluation.block_batches(blocks, int(p.config.eval.batch_size))


def _split_batches(p: Plan, split: str):
  """(batches of `split` by the configured perplexity method, {window, stride})."""
  return evaluation.batches(p.data, split, p.config.eval)


def disc_metrics(p: Plan, params, q0, split: str = "valid") -> dict[str, float]:
  """Eq. (6) on real contexts of `split`: D, D^(q), D^(p), and mean r on q0's words and on the true words."""
  g = p.graphdefs
  batches, info = _split_batches(p, split)
  return {**dfine.summarize_disc_eval(evaluation.reduce_sums(_DISC_SUMS, batches, p.mesh, g["disc"], g["lm"], params,
                                                             q0)), **info}


def finetune_metrics(p: Plan, graphdef, params, q0, disc, split: str) -> dict[str, float]:
  """Table 2's columns of an LM on `split`: eq. (12) loss, perplexity, reverse KL (eq. 10-12 and exact over V)."""
  g = p.graphdefs
  batches, info = _split_batches(p, split)
  return {**dfine.summarize_finetune_eval(evaluation.reduce_sums(
    _FT_SUMS, batches, p.mesh, graphdef, g["lm"], g["disc"], p.eps, params, q0, disc)), **info}


def q0_mass(p: Plan, q0, blocks) -> np.ndarray:
  """Σ_c q0(·|c) over the real contexts of `blocks`: (V,) float64, the Q_w of `dfine.unigram_logit`."""
  mass = np.zeros(p.data.vocab_size, np.float64)
  for batch in _batches(p, blocks):
    mass += np.asarray(jax.device_get(_Q0_MASS(p.graphdefs["lm"], q0, shd.put_batch(batch, p.mesh))), np.float64)
  return mass


def test_log_probs(p: Plan, graphdef, params) -> np.ndarray:
  """log q(w_t | c_t) of every test target, (n, T) float64 (padding rows dropped)."""
  rows = []
  for batch in _batches(p, p.data.blocks["test"]):
    out = np.asarray(jax.device_get(_LOG_Q(graphdef, params, shd.put_batch(batch, p.mesh))), np.float64)
    rows.append(out[np.asarray(batch["mask"], bool)])
  return np.concatenate(rows)


@functools.partial(jax.jit, static_argnums=1)
def _probe_prob(params, graphdef, context, col, word):
  """qθ(word | context[:col + 1])."""
  return jax.nn.softmax(dfine._logits(graphdef, params, context)[0, col])[word]


def make_probe(p: Plan, chosen: int, q0, disc):
  """(probe, its record): qθ(chosen | c) at one fixed test context c (Figure 1, right), plus validation perplexity
  every finetune.valid_every steps (Figure 1, left); (None, None) when the chosen word is not in the test set. c is
  the test context where the chosen word is most probable under the true p (trigram data), else the first. The
  record holds c, the true p, q0 and the discriminator's p̂ (eq. 8) of the chosen word there."""
  inputs, targets = p.data.blocks["test"][:, :-1], p.data.blocks["test"][:, 1:]
  rows, cols = np.nonzero(targets == chosen)
  if rows.size == 0:
    return None, None
  best = int(np.argmax(p.data.test_log_p[rows, cols])) if p.data.test_log_p is not None else 0
  row, col = int(rows[best]), int(cols[best])
  context = shd.put_replicated(inputs[row:row + 1], p.mesh)
  valid_every = int(p.config.finetune.get("valid_every", 0) or 0)

  def probe(state, step):
    out = {"q_chosen": float(_probe_prob(state.params, state.graphdef, context, col, chosen))}
    if valid_every and step % valid_every == 0:
      out.update(evaluation.perplexity(state.graphdef, state.params, p.data, "valid", p.config.eval, p.mesh))
    return out

  record = {"row": row, "position": col, "word": chosen}
  if p.data.test_log_p is not None:
    record["p_true"] = float(np.exp(p.data.test_log_p[row, col]))
  q0_logp = jax.nn.log_softmax(dfine._logits(p.graphdefs["lm"], q0, context)[0, col])
  d_logits = dfine._logits(p.graphdefs["disc"], disc, context)[0, col]
  record["q0"] = float(np.exp(q0_logp[chosen]))
  record["p_hat"] = float(np.exp(dfine.log_p_hat(q0_logp, d_logits, p.eps)[chosen]))
  return probe, record


def table1(p: Plan, bases: dict, finetuned: dict, chosen: int | None) -> dict[str, Any]:
  """Table 1: test perplexity on all, frequent and rare words, rare/frequent ratio and mean ± std of log q − log p
  of p, each base LM and each fine-tuned one; with a chosen word, its mean probabilities at its test occurrences
  and the share of the perturbed model's perplexity gap that fine-tuning recovered."""
  data, g = p.data, p.graphdefs
  words = data.vocab_size - 1
  train, test = data.blocks["train"][:, 1:], data.blocks["test"][:, 1:]
  frequent = word_stats.frequent_ids(train, int(p.config.report.frequent), words)
  models = []
  for base in bases:
    models.append((f"{base.capitalize()} model", base, g["lm"], bases[base]))
    models += [(f"{base.capitalize()} model {FT_LABELS[v]}", f"{b}:{v}", g["ft"], params)
               for (b, v), params in finetuned.items() if b == base]
  rows = {"True distribution p": word_stats.split_perplexity(data.test_log_p, test, frequent)}
  log_q = {}
  for label, key, graphdef, params in models:
    log_q[key] = test_log_probs(p, graphdef, params)
    rows[label] = word_stats.split_perplexity(log_q[key], test, frequent)
    rows[label]["logq_minus_logp_mean"], rows[label]["logq_minus_logp_std"] = word_stats.log_ratio_stats(
      log_q[key], data.test_log_p)
  out: dict[str, Any] = {"table1": rows}
  if chosen is not None:
    at = test == chosen
    gap = rows["Perturbed model"]["ppl"] - rows["Initial model"]["ppl"]
    out.update(chosen_word=chosen, chosen_rank=int(np.nonzero(word_stats.word_ranking(train, words) == chosen)[0][0]) + 1,
               chosen_bias=float(p.config.perturb.bias), chosen_count=int(at.sum()), gap=gap,
               q_chosen_mean={k: float(np.exp(log_q[k][at]).mean())
                              for k in (*bases, *(f"{b}:{v}" for b, v in finetuned))},
               p_chosen_mean=float(np.exp(data.test_log_p[at]).mean()),
               gap_recovered={label: (rows["Perturbed model"]["ppl"] - row["ppl"]) / gap for label, row in rows.items()
                              if label.startswith("Perturbed model ftd") and gap > 0})
  return out


def table2(p: Plan, q0, disc, evals: dict) -> dict[str, Any]:
  """Table 2: the fine-tuning evaluation of q0 itself, then `evals` {(base, variant): stage evaluation} of the runs
  from the initial model; every row's reverse KL uses the discriminator `disc` trained against q0."""
  rows = {"Initial model": {s: finetune_metrics(p, p.graphdefs["lm"], q0, q0, disc, s) for s in ("valid", "test")
                            if s in p.data.blocks}}
  rows.update({TABLE2_LABELS[v]: e for (b, v), e in evals.items() if b == "initial"})
  return {"table2": rows}


def figure1(workdir: pathlib.Path, runs: dict, probes: dict) -> dict[str, Any]:
  """Figure 1's points of each probed fine-tuning stage in `runs` {name: (base, variant)}, from its metrics.jsonl:
  validation perplexity and qθ(chosen | c) by step, with the probe's record."""
  curves = {}
  for name, (base, variant) in runs.items():
    rows = [x for x in writers.read_metrics(workdir / name / "metrics.jsonl") if x.get("split") == "valid"]
    if rows and probes.get(name) is not None:
      curves[name] = {"base": base, "variant": variant, "probe": probes[name],
                      **{k: sorted({x["step"]: x[k] for x in rows if k in x}.items())
                         for k in ("perplexity", "q_chosen")}}
  return curves


def over_seeds(reports: list[dict]) -> dict:
  """Every numeric leaf of the per-seed report dicts as {"mean", "std" (sample, ddof 1; 0 for one seed), "n",
  "values"}, where all seeds have it; with Table 2, `paired` holds each fine-tuning row minus the r ≡ 1/2 row
  (test and validation perplexity), per seed, as the same summary."""
  def leaves(d, prefix=()):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from leaves(v, prefix + (str(k),))
      elif isinstance(v, (int, float)) and not isinstance(v, bool):
        yield prefix + (str(k),), float(v)

  def summary(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": int(len(values)), "values": values.tolist()}

  found: dict[tuple, list] = {}
  for rep in reports:
    for path, v in leaves(rep):
      found.setdefault(path, []).append(v)
  out: dict = {}
  for path, values in found.items():
    if len(values) == len(reports):
      node = out
      for k in path[:-1]:
        node = node.setdefault(k, {})
      node[path[-1]] = summary(values)
  control = TABLE2_LABELS["nodisc"]
  if all("table2" in r and control in r["table2"] for r in reports):
    diff = lambda label, split: summary([r["table2"][label][split]["perplexity"]
                                         - r["table2"][control][split]["perplexity"] for r in reports])
    out["paired"] = {label: {split: diff(label, split) for split in ("valid", "test") if split in row}
                     for label, row in reports[0]["table2"].items()
                     if label != control and all(label in r["table2"] for r in reports)}
  return out


def command() -> str:
  """The command line of this invocation, for the report."""
  argv = sys.argv
  if argv and argv[0].endswith(("main.py", "jaxtextgan")):
    return "python -m jaxtextgan.main " + " ".join(argv[1:])
  return "(called from Python: jaxtextgan.tasks.dfine.run)"
