"""The text GAN's printed results: the before/after table of G's samples and the short frontier (renderers only)."""

from __future__ import annotations

from jaxtextgan.models import gpt2

_SUMMARY_KEYS = (("bleu2", "BLEU-2"), ("bleu3", "BLEU-3"), ("bleu4", "BLEU-4"), ("bleu5", "BLEU-5"),
                 ("self_bleu3", "Self-BLEU-3 (lower = more diverse)"), ("self_bleu4", "Self-BLEU-4"),
                 ("distinct1", "distinct-1"), ("distinct2", "distinct-2"), ("distinct3", "distinct-3"),
                 ("length", "mean sentence length"), ("nll_test", "NLL-test of G's GPT-2 as an LM"),
                 ("ppl_test", "test perplexity of G's GPT-2"), ("nll_oracle", "NLL-oracle (nats/token)"))


def summary(results: dict) -> str:
  """The lines a finished run prints (and prints again when re-run)."""
  before, after = results["before"], results["after"]
  lines = [f"GAN {results['loss']} on {results['source']}: G={results['generator']} "
           f"(MLE pre-training {results['pretrain_steps']} steps), D={results['discriminator']}, "
           f"{results['gan_steps']} GAN steps, {results['num_samples']} samples scored",
           f"{'metric':<36}{'before GAN':>12}{'after GAN':>12}"]
  for key, name in _SUMMARY_KEYS:
    if key in before and key in after:
      lines.append(f"{name:<36}{before[key]:>12.4f}{after[key]:>12.4f}")
  if results.get("pretrain_valid"):
    lines.append(f"G after MLE pre-training: valid perplexity {results['pretrain_valid']['perplexity']:.2f}")
  lines.append(f"samples: {results['samples']}; wall time {results['wall_seconds']:.0f} s "
               "(of the invocation that finished the run)")
  if results.get("frontier"):
    lines += frontier_lines(results["frontier"])
  return "\n".join(lines)


def frontier_lines(f: dict) -> list[str]:
  """The short frontier's lines: one per (generator, T), then which generator is ahead at matched diversity."""
  keys = [k for k in ("nll_oracle", "nll_test", "bleu5", "self_bleu5") if k in f["rows"][0]]
  names = {"nll_oracle": "NLL-oracle", "nll_test": "NLL-test(G,T)", "bleu5": "BLEU-5", "self_bleu5": "Self-BLEU-5"}
  lines = [f"frontier: {f['num_samples']} samples per point at T in {tuple(f['temperatures'])}; NLL-test(G,T) = G's "
           f"own NLL of test sentences at T ({f['num_z']} latents); diversity {f['x']}, quality {f['y']}",
           f"{'generator':<22}{'T':>6}" + "".join(f"{names[k]:>15}" for k in keys)]
  for r in f["rows"]:
    lines.append(f"{r['generator']:<22}{r['temperature']:>6.2f}" + "".join(f"{r[k]:>15.4f}" for k in keys))
  lines.append(f["comparison"]["verdict"])
  return lines


def describe(cfg, lm_cfg: gpt2.GPT2Config) -> tuple[str, str]:
  """(G, D) in a few words, for the results' first line."""
  g = cfg.generator
  gen = (f"gpt2 {lm_cfg.n_layer}x{lm_cfg.d_model}" if g.kind == "gpt2" else f"mlp {tuple(g.mlp_hidden)}")
  d = cfg.discriminator
  if d.kind == "cnn":
    disc = f"cnn widths {tuple(d.widths)} x {d.filters}"
  elif d.init_from_lm:
    disc = f"transformer {lm_cfg.n_layer}x{lm_cfg.d_model} from G's LM ({d.pooling} pool)"
  else:
    disc = f"transformer {d.n_layer}x{d.d_model} ({d.pooling} pool)"
  return gen, disc
