"""`objective='gan_frontier'`: quality-diversity frontiers of the MLE G against G after minimax and WGAN-GP.

For every (source, seed) of the config: one GAN run per loss (`tasks.gan.run` on `config.<source>` with that seed),
the first pre-training G's GPT-2 with MLE and the others starting from the same pre-trained LM
(`generator.init_from`), so the generators differ only by their GAN phase. Then `jaxtextgan.frontier.sweep` scores
the MLE G and each GAN's G at every temperature, and the report compares every GAN's curve with the MLE G's at
matched diversity (per seed, and on the mean over seeds), on every plane the rows have. On text
(`frontier.text_lm_scores`) the sweep adds the LM plane (`jaxtextgan.frontier_lm`): a judge LM trained once per
(source, seed), and one reverse LM per (generator, T).

Workdir: <source>_s<seed>/<loss>/ (GAN workdirs; the first loss's pretrain/ is the shared MLE G),
<source>_s<seed>/judge/ and reverse_lm/<generator>_T<T>/ (text), <source>_s<seed>/frontier.json; results in
`config.results` (.md, .png, .json).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import ml_collections

from jaxtextgan import evaluation, frontier, frontier_lm, stage, writers
from jaxtextgan.errors import InputError
from jaxtextgan.tasks import common
from jaxtextgan.tasks import gan as gan_task

SOURCES = ("trigram", "ptb")


def run_config(config, source: str, seed: int, loss: str, first_workdir: pathlib.Path | None):
  """config.<source> with `seed` and `loss` (and config.loss_overrides[loss]); later losses start from the first
  loss's pre-trained LM."""
  c = ml_collections.ConfigDict(config[source].to_dict())
  c.seed = int(seed)
  c.gan.loss = loss
  c.frontier.temperatures = ()
  _merge(c, config.loss_overrides.get(loss.replace("-", "_"), {}))
  if first_workdir is not None:
    c.generator.init_from = str(first_workdir / "pretrain")
    c.pretrain.steps = 0
  return c


def _merge(node, overrides) -> None:
  """Sets every leaf of the nested `overrides` in `node` (an unknown key is an InputError)."""
  for key, value in overrides.items():
    if key not in node:
      raise InputError(f"loss_overrides names {key!r}, which the GAN config lacks")
    if hasattr(value, "items"):
      _merge(node[key], value)
    else:
      node[key] = value


def one_source_seed(config, r, source: str, seed: int) -> tuple[list[dict], dict | None]:
  """Trains (or resumes) the GANs of one (source, seed) and sweeps the MLE G and each GAN's G: (rows, the LM
  plane's reference {judge: its valid/test metrics, real_lm_score}, or None without the plane)."""
  base = r.workdir / f"{source}_s{seed}"
  saved = base / "frontier.json"
  if saved.exists():
    done = json.loads(saved.read_text())
    return done["rows"], done.get("lm_plane")
  gens, data, first = [], None, None
  for loss in config.losses:
    c = run_config(config, source, seed, loss, first)
    workdir = base / loss
    gan_task.run(c, workdir)
    s, state, data = gan_task.load_trained(c, workdir, r.mesh)
    if first is None:
      first = workdir
      _, lm_params, _ = gan_task.restore_lm_params(workdir / "pretrain", data.tokenizer_spec, r.mesh)
      gens.append(frontier.Generator("MLE G", s.g_graphdef, gan_task.initial_g_params(c, s, lm_params),
                                     s.gen_cfg.latent_dim))
    gens.append(frontier.Generator(f"GAN G ({loss})", s.g_graphdef, state.g.params, s.gen_cfg.latent_dim))
  f = config.frontier
  c = config[source]
  plane, reference = None, None
  if source != "trigram" and f.text_lm_scores:  # the trigram oracle's exact judge is NLL-oracle
    plane, reference = frontier_lm.plane(f.judge, f.reverse_lm, data, length=c.generator.length, eval_cfg=c.eval,
                                         mesh=r.mesh, seed=seed, directory=base, max_test=f.get("max_test") or None)
  rows = frontier.sweep(gens, data, f.temperatures, length=c.generator.length, num_samples=f.num_samples,
                        seed=c.sample.seed, num_z=f.num_z, batch_size=c.eval.batch_size,
                        max_references=c.eval.max_references, max_test=f.get("max_test") or None, lm_plane=plane)
  stage.write_json(saved, {"rows": rows, "lm_plane": reference})
  return rows, reference


def _lm_plane_lines(config, key: str, reference: dict) -> list[str]:
  """What the LM plane's numbers rest on: the judge and its test NLL, the judge's LM score of the real test rows (the
  data's own LM score), and the reverse LMs."""
  f = config.frontier
  j, rev, test = f.judge, f.reverse_lm, reference["judge"].get("test", {})
  nan = float("nan")
  return [f"- {key}: judge LM {j.model.n_layer} x {j.model.d_model}, {j.steps} steps of {j.batch_size} x "
          f"{j.seq_len} tokens, test NLL {test.get('nll', nan):.4f} (perplexity {test.get('perplexity', nan):.1f}, "
          f"{evaluation.describe(test)}); LM score of the real test rows {reference['real_lm_score']:.4f}. Reverse "
          f"LMs {rev.model.n_layer} x {rev.model.d_model}, {rev.steps} steps on {rev.num_samples or f.num_samples} "
          f"samples of G at T, for T in {tuple(rev.temperatures) or tuple(f.temperatures)}."]


def report(config, by_run: dict[str, list[dict]], wall: float, lm_refs: dict[str, dict | None] | None = None) -> str:
  """Markdown: per source, the comparisons (per seed and on the mean over seeds) on every plane, and the tables."""
  f = config.frontier
  lines = ["# Quality-diversity frontiers: MLE G against G after minimax and WGAN-GP (issue 15)", "",
           f"`{writers.command_line('python -m jaxtextgan.main --config=configs/gan_frontier.py')}` (this invocation {wall:.0f} s; a (source, "
           "seed) whose GAN runs and sweep are in the workdir is read back, not run again). "
           f"Each point: {f.num_samples} samples at temperature T (softmax(logits / T)), T in "
           f"{tuple(f.temperatures)}; NLL-test of G at T over {f.num_z} latents (jaxtextgan/frontier.py states the "
           "math). Diversity is the x axis, quality the y axis; lower is better on both trigram axes. On text, a "
           "second plane: LM score (NLL of the samples under a judge LM) against reverse-LM score (NLL of real test "
           "text under an LM trained on the samples), lower is better on both (jaxtextgan/frontier_lm.py).", ""]
  for source in SOURCES:
    keys = [k for k in by_run if k.startswith(source + "_")]
    if not keys:
      continue
    axes = frontier.ORACLE_AXES if source == "trigram" else frontier.TEXT_AXES
    runs = [by_run[k] for k in keys]
    planes = frontier.planes_of(runs[0], axes)
    lines += [f"## {source} ({len(keys)} seed{'s' if len(keys) > 1 else ''})", ""]
    for k in keys:
      if (lm_refs or {}).get(k):
        lines += _lm_plane_lines(config, k, lm_refs[k]) + [""]
    for plane in planes:
      lines += [f"Plane {plane.y} (quality) against {plane.x} (diversity):", ""]
      for name in [g for g in dict.fromkeys(r["generator"] for r in runs[0]) if g != "MLE G"]:
        for k, rows in zip(keys, runs):
          lines.append(f"- {k}: {frontier.compare(rows, name, 'MLE G', plane)['verdict']}")
        if len(runs) > 1:
          lines.append(f"- mean over seeds: {frontier.compare(frontier.mean_over(runs), name, 'MLE G', plane)['verdict']}")
      lines.append("")
    for k, rows in zip(keys, runs):
      lines += [f"### {k}", "", frontier.table(rows), ""]
  return "\n".join(lines)


def run(config, workdir) -> dict:
  t0 = time.perf_counter()
  r = common.start(config, workdir)
  bad = [s for s in config.seeds if s not in SOURCES]
  if bad:
    raise InputError(f"seeds names sources {bad}: use {', '.join(SOURCES)}")
  frontier.check_temperatures(config.frontier.temperatures)
  by_run, lm_refs = {}, {}
  for source in SOURCES:
    for seed in config.seeds.get(source, ()):
      by_run[f"{source}_s{seed}"], lm_refs[f"{source}_s{seed}"] = one_source_seed(config, r, source, int(seed))
  wall = time.perf_counter() - t0
  out = writers.workdir_path(config.results)  # local or gs://, as the workdir
  md = report(config, by_run, wall, lm_refs)
  if jax.process_index() == 0:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md + "\n", encoding="utf-8")
    for source in SOURCES:
      keys = [k for k in by_run if k.startswith(source + "_")]
      if not keys:
        continue
      axes = frontier.ORACLE_AXES if source == "trigram" else frontier.TEXT_AXES
      mean = {"mean over seeds": frontier.mean_over([by_run[k] for k in keys])} if len(keys) > 1 else None
      planes = [axes] if source == "trigram" else frontier.planes_of(by_run[keys[0]], axes)  # text: + the LM plane
      frontier.plot({k: by_run[k] for k in keys}, planes, out.parent / f"{out.name}_{source}.png",
                    title=f"{source}: MLE G vs GAN G, T in {tuple(config.frontier.temperatures)}", mean_rows=mean)
  results = {"finished": True, "runs": by_run, "lm_plane": lm_refs, "results_md": str(out.with_suffix(".md")),
             "wall_seconds": wall}
  stage.write_json(r.workdir / "results.json", results)
  r.writer.close()
  print(md, flush=True)
  return results
