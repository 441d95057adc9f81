"""Training-step benchmark: jaxtextgan's objectives against Hugging Face GPT-2 in PyTorch and Flax, in one run.

python -m benchmarks.bench --size=gpt2_small --batch=8 --seq=128 --steps=7 --json=bench.json

Protocol. The driver (this process, which never imports JAX) starts one worker subprocess per (framework,
objective), so each worker's peak RSS is its own. Workers are set up one at a time: import, build, compile (timed),
then `--warmup` untimed steps, so no compilation overlaps another worker's. Then, for `--steps` rounds, the driver
asks every live worker in turn for one timed step (the order rotates each round: A B C, B C A, ...), so a change in
background load hits every worker alike; only one worker computes at any time. A worker times its own step
(`perf_counter` around the step and a host sync), so the pipe round-trip is not counted; it also reports the CPU
seconds of the step, whose ratio to the wall time says how many cores it really got. The machine's fp32 matmul
peak is one more worker in the same rounds: a jitted N x N fp32 matmul (N = `--peak_n`), timed like a step; with a
bf16 worker in the run, a bf16 matmul (fp32 accumulation) gives the bf16 peak, which bf16 workers are measured
against.
Phases: every objective runs in a phase of its own, ours (with the LM's further variants) alternating with the
peers that implement it (torch: lm, gan, ganbert; flax and torch_bf16: lm) and the peak worker, so only one
objective's training states are alive at a time. `--sequential` gives every worker
its own phase (for models whose workers do not fit in memory together; then ours and the peer no longer
alternate with each other, only with the peak). `--parallel_setup` is for smoke tests only (compiles overlap).
Reported per worker: median step time, tokens/s, compile time (lower + compile; 0 for eager PyTorch), time of the
first step, peak RSS (`ru_maxrss`, whole process: imports, init, compile and steps), FLOPs per step with their
source, achieved GFLOP/s and the fraction of the matmul peak, MFU as the training runs log it (our step's jaxpr
matmul FLOPs, also credited to its peers, over the step time and `jaxtextgan.mfu.measured_cpu_peak()`, measured in
the peak worker); and ours / peer ratios for every objective with a peer.

Peers beyond the LM. `torch:ganbert`: transformers' BertModel (`--encoder=minilm`: the bundled MiniLM's weights)
with GAN-BERT's MLP D and G in eager PyTorch, after crux82/ganbert-pytorch's losses but with D and G updated
separately, as objectives/ganbert.py does. `torch:gan`: transformers' GPT2LMHeadModel decoding `--gan_len`
straight-through Gumbel-Softmax tokens fed back as y E (`inputs_embeds`, KV cache), a CNN D and the minimax losses,
eager. Each worker class says what it computes; both sides get the same batch, lengths, sizes and optimizer.

Variants. `--variants=unrolled,scan` builds our GPT-2 models with unrolled layers (the default: faster steps on
XLA:CPU) and adds a second LM worker, 'jaxtextgan:lm@scan', with layers under `lax.scan` (faster compiles), to the
same rounds. `bf16` is the unrolled model computing in bfloat16 (matmuls accumulate in fp32; parameters, AdamW and
the loss stay fp32); its peer is `--peers=torch_bf16`, the PyTorch model under `torch.autocast('cpu', bfloat16)`.
Every LM worker of ours is compared with every peer of its own precision; the other objectives use the first
variant listed.

FLOPs. The LM (ours and the peers, identical models) uses 6N + 12*L*d*T per token (`models.gpt2.train_flops_per_token`).
The other objectives use the matmul FLOPs of the step's jaxpr, with every `lax.scan` body multiplied by its length
(XLA's `cost_analysis()`, also reported, counts a scanned body once, so it undercounts scanned models).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import (OPT_DEFAULTS, add_shape_args, cores, jit_matmul, machine, machine_line,
                               opt_cfg, save_json, single_device_mesh, torch_adamw, version)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTIVES = ("lm", "gan", "ganbert", "dfine")
PEERS = ("torch", "flax", "torch_bf16")
VARIANTS = ("unrolled", "scan", "bf16")
PEAKS = ("peak:matmul", "peak:matmul_bf16")
# The objectives each peer implements (flax and torch_bf16: the LM only).
PEER_OBJECTIVES = {"torch": ("lm", "gan", "ganbert"), "flax": ("lm",), "torch_bf16": ("lm",)}
GAN_MODELS = ("main", "size")
ENCODERS = ("size", "minilm")
GANBERT_CLASSES = 6
JAXPR_FLOPS = "jaxpr matmuls (scan bodies x length)"

# GAN-BERT's encoder at each size: BERT widths matching the GPT-2 preset of the same name.
BERT_SIZES = {
  "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64),
  "gpt2_small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
  "gpt2_24l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
  add_shape_args(p)
  p.add_argument("--steps", type=int, default=7, help="timed rounds (one step of every worker per round)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per worker after compiling")
  p.add_argument("--peers", default="torch,flax",
                 help="comma list of torch (every objective but dfine), flax and torch_bf16 (PyTorch under bf16 "
                      "autocast; both LM only); empty for none")
  p.add_argument("--objectives", default="lm", help="comma list of lm, gan, ganbert, dfine")
  p.add_argument("--variants", default="unrolled",
                 help="comma list of unrolled, scan (our GPT-2 layer layouts, models/gpt2.py scan_layers) and "
                      "bf16 (unrolled, bfloat16 compute): the first is used for every objective; each further one "
                      "adds an LM worker 'jaxtextgan:lm@VARIANT' to the same rounds")
  p.add_argument("--dropout", type=float, default=0.1, help="GPT-2's default; the same in every framework")
  for name, default in OPT_DEFAULTS.items():
    p.add_argument(f"--{name}", type=float, default=default)
  p.add_argument("--peak_n", type=int, default=4096, help="side of the fp32 matmul that measures the peak")
  p.add_argument("--threads", type=int, default=0, help="PyTorch threads; 0 = the cores this process may use")
  p.add_argument("--profile", default="",
                 help="directory: trace one extra step of each JAX worker (ours, HF Flax) here")
  p.add_argument("--gan_len", type=int, default=16,
                 help="tokens G generates per sample in the GAN step (configs/gan.py uses 16)")
  p.add_argument("--gan_model", default="main", choices=GAN_MODELS,
                 help="the GAN step's G: 'main' is configs/gan.py's GPT-2 (2 x 128, d_ff 512; vocabulary --vocab or "
                      "10000, PTB's words); 'size' is the --size preset (e.g. GPT-2 small). D is always "
                      "configs/gan.py's CNN and the loss its minimax (eq. 4-5)")
  p.add_argument("--encoder", default="size", choices=ENCODERS,
                 help="GAN-BERT's encoder: 'minilm' is the bundled all-MiniLM-L6-v2 (hf_bert.default_encoder_dir(), "
                      "its weights, offline), 'size' a random BERT of the --size preset's widths")
  p.add_argument("--sequential", action="store_true",
                 help="one worker at a time (each alternating only with the peak worker): when the workers "
                      "together do not fit in memory")
  p.add_argument("--parallel_setup", action="store_true",
                 help="smoke runs: set workers up concurrently (their compile times then overlap and mean little)")
  p.add_argument("--fast_compile", action="store_true",
                 help="smoke runs: our GAN and GAN-BERT steps compiled at XLA -O0 (training.FAST_COMPILE; slower "
                      "steps)")
  p.add_argument("--verbose", action="store_true", help="show the workers' stderr")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.peer_list = [x for x in args.peers.split(",") if x]
  args.objective_list = [x for x in args.objectives.split(",") if x]
  args.variant_list = [x for x in args.variants.split(",") if x]
  if not args.variant_list or any(x not in VARIANTS for x in args.variant_list):
    p.error(f"--variants: {args.variants!r}; use a comma list of {', '.join(VARIANTS)}")
  # A worker named 'jaxtextgan:lm@scan' builds that variant; every other worker the first one listed.
  args.variant = args.worker.partition("@")[2] or args.variant_list[0]
  for flag, given, known in (("--peers", args.peer_list, PEERS), ("--objectives", args.objective_list, OBJECTIVES)):
    for x in given:
      if x not in known:
        p.error(f"{flag}: {x!r} is unknown; use a comma list of {', '.join(known)}")
  if args.steps < 1 or args.batch < 1 or args.seq < 2:
    p.error("--steps and --batch must be positive and --seq at least 2")
  return args


def peak_rss_mb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ----------------------------------------------------------------------------------------------- FLOP counting


def jaxpr_matmul_flops(closed_jaxpr) -> float:
  """The library's count (jaxtextgan.mfu): 2 · MACs of every dot_general, scan bodies times their length."""
  from jaxtextgan import mfu
  return mfu.jaxpr_matmul_flops(closed_jaxpr)


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


# ------------------------------------------------------------------------------------------------------ workers


def _tokens(args, vocab: int, seed: int = 0, length: int = 0):
  """(inputs, targets) (batch, length or --seq) int32: random ids, the targets shifted by one."""
  import numpy as np
  ids = np.random.default_rng(seed).integers(0, vocab, (args.batch, (length or args.seq) + 1)).astype(np.int32)
  return ids[:, :-1], ids[:, 1:]


def _lm_batch(args, vocab: int) -> dict:
  import jax.numpy as jnp
  inputs, targets = _tokens(args, vocab)
  return {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets)}


def _lm_info(args, cfg, n: int) -> dict:
  """Parameters, tokens and analytic FLOPs of one LM step (ours and the peers: the same model)."""
  from jaxtextgan.models import gpt2
  tokens = args.batch * args.seq
  return dict(params=n, tokens_per_step=tokens, flops_source="6N + 12*L*d*T per token",
              flops_per_step=tokens * gpt2.train_flops_per_token(n, cfg.n_layer, cfg.d_model, args.seq))


def _gpt2_cfg(args):
  from jaxtextgan.models import gpt2
  base = gpt2.preset(args.size)
  return gpt2.preset(args.size, dropout=args.dropout, max_len=max(base.max_len, args.seq),
                     vocab_size=args.vocab or base.vocab_size, scan_layers=args.variant == "scan",
                     dtype="bfloat16" if args.variant == "bf16" else "float32")


def precision(worker: str, first_variant: str = "unrolled") -> str:
  """'bf16' for our bf16 variant (`first_variant` is the one 'jaxtextgan:lm' builds) and the autocast PyTorch peer,
  else 'fp32': the ratios pair workers of one precision."""
  if worker.startswith("jaxtextgan:"):
    return "bf16" if (worker.partition("@")[2] or first_variant) == "bf16" else "fp32"
  return "bf16" if worker in ("torch_bf16:lm", "peak:matmul_bf16") else "fp32"


class JaxWorker:
  """Shared by the JAX workers: AOT compile timing, a profile of one step, and the steady-state loop."""

  def __init__(self, args):
    import jax
    # Compile time must be measured cold: no persistent compilation cache.
    jax.config.update("jax_enable_compilation_cache", False)
    self.args = args
    self.info: dict[str, Any] = {"framework": "jax " + jax.__version__, "devices": 1}

  def mesh(self):
    return single_device_mesh()

  def compile(self, jitted, *example):
    """AOT lower + compile (timed), returning the executable; also XLA's FLOP count."""
    import jax
    # Initialisation is dispatched asynchronously; unfinished, it would run on the same cores as the compiler and
    # be counted as compile time.
    jax.block_until_ready(example)
    t0 = time.perf_counter()
    compiled = jitted.lower(*example).compile()
    self.info["compile_seconds"] = self.info.get("compile_seconds", 0.0) + time.perf_counter() - t0
    self.info["xla_flops_per_step"] = self.info.get("xla_flops_per_step", 0.0) + xla_flops(compiled)
    return compiled

  def count_flops(self, fn, *example):
    import jax
    self.info["jaxpr_matmul_flops_per_step"] = (self.info.get("jaxpr_matmul_flops_per_step", 0.0)
                                               + jaxpr_matmul_flops(jax.make_jaxpr(fn)(*example)))

  def sync(self, out):
    import jax
    jax.block_until_ready(out)

  def step(self):
    """One train step of `self.fn` on (state, batch, rng); workers with other operands override it."""
    self.state, metrics = self.fn(self.state, self.batch, self.rng)
    self.sync(metrics)

  def profile(self, directory: str) -> dict:
    import jax
    path = os.path.join(directory, self.name)
    os.makedirs(path, exist_ok=True)  # the profiler does not create it
    with jax.profiler.trace(path):
      self.step()
    return {"trace_dir": path, **summarize_trace(path)}


class OursLM(JaxWorker):
  name = "jaxtextgan:lm"

  def setup(self):
    import jax
    from jaxtextgan import sharding as shd
    from jaxtextgan import training
    from jaxtextgan.models import gpt2
    from jaxtextgan.objectives import lm
    args, cfg = self.args, _gpt2_cfg(self.args)
    mesh = self.mesh()
    self.state, shardings = lm.init_state(cfg, opt_cfg(args), jax.random.key(0), mesh)
    self.batch = _lm_batch(args, cfg.vocab_size)
    self.rng = jax.random.key(1)
    batch_sh = {k: shd.batch_sharding(mesh, 2) for k in self.batch}
    jitted = training.jit_step(lm.train_step, mesh, shardings, batch_sh,
                               compiler_options=training.lm_compiler_options())
    self.count_flops(lm.train_step, self.state, self.batch, self.rng)
    self.fn = self.compile(jitted, self.state, self.batch, self.rng)
    self.info.update(_lm_info(args, cfg, gpt2.count_params(self.state.params)))


def _gan_cfgs(args):
  """(G's GPT-2, GeneratorConfig, DiscriminatorConfig, GANConfig): configs/gan.py's GAN phase at --batch.

  G: configs/gan.py's GPT-2 (--gan_model=main) or the --size preset (size), decoding --gan_len tokens with a KV
  cache and no dropout (the generator's decode passes no dropout key); D: its CNN (widths 2, 3, 4, 64 filters,
  embedding 64, dropout on the pooled features); the minimax loss, n_critic 1, straight-through tokens.
  """
  from jaxtextgan.models import discriminator as disc_lib
  from jaxtextgan.models import generator as gen_lib
  from jaxtextgan.models import gpt2
  from jaxtextgan.objectives import gan
  if args.gan_model == "main":
    lm_cfg = gpt2.GPT2Config(vocab_size=args.vocab or 10000, max_len=max(64, args.gan_len), n_layer=2, d_model=128,
                             n_head=4, d_ff=512, dropout=args.dropout)
  else:
    lm_cfg = _gpt2_cfg(args)
    lm_cfg = lm_cfg.replace(max_len=max(lm_cfg.max_len, args.gan_len))
  gen_cfg = gen_lib.GeneratorConfig(kind="gpt2", length=args.gan_len, latent_dim=32)
  disc_cfg = disc_lib.DiscriminatorConfig(kind="cnn", vocab_size=lm_cfg.vocab_size, max_len=args.gan_len,
                                          d_model=64, widths=(2, 3, 4), filters=64, dropout=0.1)
  cfg = gan.GANConfig(loss="minimax", n_critic=1, batch_size=args.batch, hard=True,
                      tau=gan.TauSchedule("exponential", 1.0, 0.3, 300))
  return lm_cfg, gen_cfg, disc_cfg, cfg


def _gan_note(args, lm_cfg) -> str:
  return (f"minimax, n_critic 1, G = GPT-2 {lm_cfg.n_layer}x{lm_cfg.d_model} (V {lm_cfg.vocab_size}) decoding "
          f"{args.gan_len} straight-through Gumbel-Softmax tokens with a KV cache, D = CNN (2,3,4 x 64); one D and "
          f"one G update per step; tokens = generated tokens")


class OursGAN(JaxWorker):
  """The Gumbel-Softmax text GAN (objectives/gan.py): one train_step = one critic step + one generator step."""
  name = "jaxtextgan:gan"

  def setup(self):
    import jax
    import jax.numpy as jnp
    from jaxtextgan import sharding as shd
    from jaxtextgan import training
    from jaxtextgan.objectives import gan
    args = self.args
    lm_cfg, gen_cfg, disc_cfg, cfg = _gan_cfgs(args)
    mesh = self.mesh()
    opt = opt_cfg(args)
    self.state, shardings = training.init_sharded_state(gan.make_state_fn(gen_cfg, lm_cfg, disc_cfg, opt, opt),
                                                         jax.random.key(0), mesh)
    real, _ = _tokens(args, lm_cfg.vocab_size, length=args.gan_len)
    self.batch = {"real": jnp.asarray(real)[:, None, :]}
    self.rng = jax.random.key(1)
    _, _, train_step = gan.make_steps(cfg, gen_cfg.latent_dim, mesh)
    self.count_flops(train_step, self.state, self.batch, self.rng)
    jitted = training.jit_step(train_step, mesh, shardings, {"real": shd.batch_sharding(mesh, 3)},
                               compiler_options=training.FAST_COMPILE if args.fast_compile else None)
    self.fn = self.compile(jitted, self.state, self.batch, self.rng)
    self.info.update(tokens_per_step=args.batch * args.gan_len, flops_source=JAXPR_FLOPS,
                     note=_gan_note(args, lm_cfg))


def _bert_cfg(args):
  """GAN-BERT's encoder config: MiniLM's (--encoder=minilm) or BERT at the --size preset's widths; dropout --dropout."""
  from jaxtextgan.models import bert
  if args.encoder == "minilm":
    from jaxtextgan.models import classifier, hf_bert
    return classifier.encoder_config(hf_bert.default_encoder_dir(), args.seq, args.dropout)
  size = BERT_SIZES[args.size]
  return bert.BertConfig(**{**size, "hidden_dropout_prob": args.dropout, "attention_probs_dropout_prob": args.dropout,
                            "max_position_embeddings": max(args.seq, size.get("max_position_embeddings", 512)),
                            **({"vocab_size": args.vocab} if args.vocab else {})})


def _ganbert_batch(args, vocab: int) -> dict:
  """ids, an all-ones mask and labels in [-1, k) (-1: unlabeled, about 1 row in k+1), the same for every framework."""
  import numpy as np
  ids, _ = _tokens(args, vocab)
  labels = np.random.default_rng(1).integers(-1, GANBERT_CLASSES, (args.batch,)).astype(np.int32)
  return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}


def _ganbert_note(args, bert_cfg, labeled: int) -> str:
  return (f"BERT {bert_cfg.num_hidden_layers}x{bert_cfg.hidden_size}"
          f"{' (MiniLM weights)' if args.encoder == 'minilm' else ''}, mean pooling, {GANBERT_CLASSES} classes + fake, "
          f"{labeled}/{args.batch} rows labeled; D-step (encoder + D) then G-step (G through D's head)")


class OursGanBert(JaxWorker):
  """GAN-BERT (objectives/ganbert.py): one iteration = d_step + g_step on a batch."""
  name = "jaxtextgan:ganbert"

  def setup(self):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jaxtextgan import sharding as shd
    from jaxtextgan import training
    from jaxtextgan.objectives import ganbert
    args = self.args
    bert_cfg = _bert_cfg(args)
    cfg = ganbert.GanBertConfig(num_classes=GANBERT_CLASSES, dropout=args.dropout)
    mesh = self.mesh()
    opt = opt_cfg(args)
    self.state, shardings = training.init_sharded_state(ganbert.make_state_fn(bert_cfg, cfg, opt, opt),
                                                         jax.random.key(0), mesh)
    if args.encoder == "minilm":
      from jaxtextgan.models import hf_bert
      from jaxtextgan.tasks import ganbert as ganbert_task
      encoder, _, _ = hf_bert.load_bert(max_len=args.seq, dropout=args.dropout)
      self.state = ganbert_task.with_encoder(self.state, nnx.state(encoder, nnx.Param))
    batch = _ganbert_batch(args, bert_cfg.vocab_size)
    self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
    self.rng = jax.random.key(1)
    d_step, g_step, _, _ = ganbert.make_steps(cfg, mesh)
    self.count_flops(d_step, self.state, self.batch, self.rng)
    self.count_flops(g_step, self.state, self.batch, self.rng)
    batch_sh = {k: shd.batch_sharding(mesh, v.ndim) for k, v in self.batch.items()}
    options = training.FAST_COMPILE if args.fast_compile else None
    self.d = self.compile(training.jit_step(d_step, mesh, shardings, batch_sh, compiler_options=options),
                          self.state, self.batch, self.rng)
    self.g = self.compile(training.jit_step(g_step, mesh, shardings, batch_sh, compiler_options=options),
                          self.state, self.batch, self.rng)
    self.info.update(tokens_per_step=args.batch * args.seq, flops_source=JAXPR_FLOPS,
                     labeled_rows=int((batch["labels"] >= 0).sum()),
                     note=_ganbert_note(args, bert_cfg, int((batch["labels"] >= 0).sum())))

  def step(self):
    self.state, _ = self.d(self.state, self.batch, self.rng)
    self.state, metrics = self.g(self.state, self.batch, self.rng)
    self.sync(metrics)


class OursDfine(JaxWorker):
  """Fine-tuning with a discriminator (objectives/dfine.py): the eq. (12) step, q0 and D frozen."""
  name = "jaxtextgan:dfine"

  def setup(self):
    import jax
    from jaxtextgan import sharding as shd
    from jaxtextgan import training
    from jaxtextgan.objectives import dfine
    args, cfg = self.args, _gpt2_cfg(self.args)
    mesh = self.mesh()
    opt = opt_cfg(args)
    self.state, shardings = dfine.init_state(cfg, opt, jax.random.key(0), mesh)
    _, param_sh = dfine.param_shardings(cfg, mesh)
    q0, _ = dfine.init_state(cfg, opt, jax.random.key(2), mesh)
    disc, _ = dfine.init_state(cfg, opt, jax.random.key(3), mesh)
    self.frozen = {"q0": q0.params, "disc": disc.params}
    del q0, disc  # their optimizer states are not needed
    frozen_sh = {"q0": param_sh, "disc": param_sh}
    self.batch = _lm_batch(args, cfg.vocab_size)
    batch_sh = {k: shd.batch_sharding(mesh, 2) for k in self.batch}
    self.rng = jax.random.key(1)
    graphdef = dfine.graphdef_of(cfg)
    step = dfine.make_finetune_step(graphdef, graphdef, kind="dfine")
    self.count_flops(step, self.state, self.frozen, self.batch, self.rng)
    jitted = training.jit_step(step, mesh, shardings, batch_sh, frozen_shardings=frozen_sh)
    self.fn = self.compile(jitted, self.state, self.frozen, self.batch, self.rng)
    self.info.update(tokens_per_step=args.batch * args.seq, flops_source=JAXPR_FLOPS,
                     note="fine-tune stage: q0 and D forward, the model forward + backward + AdamW")

  def step(self):
    self.state, metrics = self.fn(self.state, self.frozen, self.batch, self.rng)
    self.sync(metrics)


def _hf_config(args, cfg):
  from transformers import GPT2Config
  return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.n_layer,
                    n_head=cfg.n_head, n_inner=cfg.d_ff, activation_function="gelu_new", resid_pdrop=args.dropout,
                    embd_pdrop=args.dropout, attn_pdrop=args.dropout, layer_norm_epsilon=cfg.norm_eps)


class TorchWorker:
  """Shared by the PyTorch peers: threads, the framework label, no compile step."""

  def __init__(self, args):
    import torch
    import transformers
    torch.set_num_threads(args.threads or cores())
    self.args = args
    self.info = {"framework": f"torch {torch.__version__}, transformers {transformers.__version__}",
                 "threads": torch.get_num_threads(), "compile_seconds": 0.0}


class TorchLM(TorchWorker):
  """transformers' GPT2LMHeadModel, eager PyTorch, torch.optim.AdamW with the same hyper-parameters; as
  'torch_bf16:lm' the forward pass runs under bf16 autocast (fp32 parameters, optimizer and loss)."""
  name = "torch:lm"

  def setup(self):
    import torch
    from transformers import GPT2LMHeadModel
    args, cfg = self.args, _gpt2_cfg(self.args)
    torch.manual_seed(0)
    self.model = GPT2LMHeadModel(_hf_config(args, cfg))
    self.model.train()
    self.opt = torch_adamw(list(self.model.parameters()), args)
    inputs, targets = _tokens(args, cfg.vocab_size)
    self.inputs, self.targets = torch.from_numpy(inputs).long(), torch.from_numpy(targets).long()
    self.info.update(_lm_info(args, cfg, sum(p.numel() for p in self.model.parameters())),
                     attn_implementation=self.model.config._attn_implementation)

  def step(self):
    import torch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision(self.name) == "bf16"):
      logits = self.model(self.inputs).logits
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1))
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
    self.opt.step()
    loss.item()


def _torch_leaky_mlp(in_dim: int, hidden: int, out_dim: int, dropout: float, slope: float = 0.2):
  """x -> Linear -> leaky-ReLU -> dropout -> Linear, returning (output, hidden): models/mlp.py's MLP."""
  import torch

  class MLP(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.hidden = torch.nn.Linear(in_dim, hidden)
      self.out = torch.nn.Linear(hidden, out_dim)
      self.drop = torch.nn.Dropout(dropout)
      self.slope = slope

    def forward(self, x):
      h = self.drop(torch.nn.functional.leaky_relu(self.hidden(x), self.slope))
      return self.out(h), h

  return MLP()


class TorchGanBert(TorchWorker):
  """GAN-BERT in eager PyTorch after the public port (crux82/ganbert-pytorch): transformers' BertModel (MiniLM's
  weights with --encoder=minilm), D = input dropout + MLP to k+1 logits, G = MLP from z ~ N(0, I_100).

  The port's losses, D and G updated separately as objectives/ganbert.py does (the port back-propagates both losses
  through one forward pass): the D-step runs G without gradients, the encoder on the real batch, D on real and
  fake vectors, L_D = CE(labeled) - E log(1 - p_fake(real) + eps) - E log(p_fake(fake) + eps), clipped AdamW on
  (encoder, D); the G-step puts fresh fakes through D's head as the D-step read it (a copy taken before its update),
  L_G = -E log(1 - p_fake(G(z)) + eps) + mean((E f(real) - E f(G(z)))^2), clipped AdamW on G.
  """
  name = "torch:ganbert"

  def setup(self):
    import torch
    import transformers
    args = self.args
    torch.manual_seed(0)
    bert_cfg = _bert_cfg(args)
    if args.encoder == "minilm":
      from jaxtextgan.models import hf_bert
      self.bert = transformers.BertModel.from_pretrained(
        str(hf_bert.default_encoder_dir()), add_pooling_layer=False, hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout, local_files_only=True)
    else:
      self.bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=bert_cfg.vocab_size, hidden_size=bert_cfg.hidden_size, num_hidden_layers=bert_cfg.num_hidden_layers,
        num_attention_heads=bert_cfg.num_attention_heads, intermediate_size=bert_cfg.intermediate_size,
        max_position_embeddings=bert_cfg.max_position_embeddings, hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout), add_pooling_layer=False)
    d, k = bert_cfg.hidden_size, GANBERT_CLASSES
    self.k, self.latent, self.eps = k, 100, 1e-8
    self.d_head = _torch_leaky_mlp(d, d, k + 1, args.dropout)
    self.in_drop = torch.nn.Dropout(args.dropout)
    self.gen = _torch_leaky_mlp(self.latent, d, d, args.dropout)
    for m in (self.bert, self.d_head, self.gen):
      m.train()
    self.d_params = list(self.bert.parameters()) + list(self.d_head.parameters())
    self.opt_d = torch_adamw(self.d_params, args)
    self.opt_g = torch_adamw(list(self.gen.parameters()), args)
    batch = _ganbert_batch(args, bert_cfg.vocab_size)
    self.ids = torch.from_numpy(batch["input_ids"]).long()
    self.mask = torch.from_numpy(batch["attention_mask"]).long()
    self.labels = torch.from_numpy(batch["labels"]).long()
    labeled = int((self.labels >= 0).sum())
    self.info.update(tokens_per_step=args.batch * args.seq, labeled_rows=labeled,
                     params=sum(p.numel() for p in self.d_params) + sum(p.numel() for p in self.gen.parameters()),
                     attn_implementation=self.bert.config._attn_implementation,
                     note=_ganbert_note(args, bert_cfg, labeled))

  def discriminate(self, h, params=None):
    import torch
    h = self.in_drop(h)
    if params is None:
      return self.d_head(h)
    return torch.func.functional_call(self.d_head, params, (h,))

  def step(self):
    import torch
    import torch.nn.functional as F
    batch, k, eps = self.ids.shape[0], self.k, self.eps
    # D-step.
    with torch.no_grad():
      fake = self.gen(torch.randn(batch, self.latent))[0]
    hidden = self.bert(input_ids=self.ids, attention_mask=self.mask).last_hidden_state
    m = self.mask.unsqueeze(-1).float()
    h = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    real_logits, real_feat = self.discriminate(h)
    fake_logits, _ = self.discriminate(fake)
    labeled = (self.labels >= 0).float()
    nll = -F.log_softmax(real_logits[:, :k], -1).gather(1, self.labels.clamp_min(0)[:, None])[:, 0]
    sup = (nll * labeled).sum() / labeled.sum().clamp_min(1.0)
    d_loss = (sup - torch.log(1 - F.softmax(real_logits, -1)[:, k] + eps).mean()
              - torch.log(F.softmax(fake_logits, -1)[:, k] + eps).mean())
    head = {n: p.detach().clone() for n, p in self.d_head.named_parameters()}
    real_mean = real_feat.detach().mean(0)
    self.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    torch.nn.utils.clip_grad_norm_(self.d_params, self.args.grad_clip)
    self.opt_d.step()
    # G-step, through D's head as the D-step read it.
    fake = self.gen(torch.randn(batch, self.latent))[0]
    logits, feat = self.discriminate(fake, head)
    g_loss = -torch.log(1 - F.softmax(logits, -1)[:, k] + eps).mean() + (real_mean - feat.mean(0)).square().mean()
    self.opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    torch.nn.utils.clip_grad_norm_(self.gen.parameters(), self.args.grad_clip)
    self.opt_g.step()
    d_loss.item(), g_loss.item()


class TorchGAN(TorchWorker):
  """The Gumbel-Softmax text GAN in eager PyTorch: transformers' GPT2LMHeadModel as G, a CNN D, eq. (4)-(5).

  G: z ~ N(0, I_32); position 0 gets E[bos] + W z, then each of T steps runs the model on one position with its
  KV cache (`past_key_values`), draws y_t = one_hot(argmax) - soft.detach() + soft with soft = softmax((logits +
  Gumbel) / tau) (straight-through: one-hot forward, soft backward) and feeds y_t E back as `inputs_embeds`. D: an
  embedding (V x 64) applied as x E_D (ids looked up), Conv1d of widths 2, 3, 4 with 64 filters, ReLU, max over
  time, dropout, a linear head. One step: one decode of G with its graph; D <- AdamW(grad of -log s(D(real)) -
  log(1 - s(D(sg(fake))))); G <- AdamW(grad in G of -log s(D(fake))) through the updated D, D's parameters
  frozen. Both clipped. The same work as objectives/gan.py's train_step with n_critic 1.
  """
  name = "torch:gan"

  def setup(self):
    import torch
    from transformers import GPT2LMHeadModel
    args = self.args
    torch.manual_seed(0)
    lm_cfg, gen_cfg, disc_cfg, _ = _gan_cfgs(args)
    hf = _hf_config(args, lm_cfg)
    hf.resid_pdrop = hf.embd_pdrop = hf.attn_pdrop = 0.0  # ours decodes without dropout
    self.model = GPT2LMHeadModel(hf)
    self.w = torch.nn.Linear(gen_cfg.latent_dim, lm_cfg.d_model, bias=False)
    torch.nn.init.zeros_(self.w.weight)
    self.vocab, self.length, self.latent, self.tau = lm_cfg.vocab_size, gen_cfg.length, gen_cfg.latent_dim, 1.0

    class CNN(torch.nn.Module):
      def __init__(self):
        super().__init__()
        self.embed = torch.nn.Parameter(torch.randn(disc_cfg.vocab_size, disc_cfg.d_model) * 0.02)
        self.convs = torch.nn.ModuleList([torch.nn.Conv1d(disc_cfg.d_model, disc_cfg.filters, w)
                                          for w in disc_cfg.widths])
        self.drop = torch.nn.Dropout(disc_cfg.dropout)
        self.head = torch.nn.Linear(disc_cfg.filters * len(disc_cfg.widths), 1)

      def forward(self, x):
        e = self.embed[x] if x.dtype == torch.long else x @ self.embed
        e = e.transpose(1, 2)
        pooled = torch.cat([torch.relu(conv(e)).amax(-1) for conv in self.convs], -1)
        return self.head(self.drop(pooled))[:, 0]

    self.disc = CNN()
    self.model.train()
    self.disc.train()
    self.g_params = list(self.model.parameters()) + [self.w.weight]
    self.opt_g = torch_adamw(self.g_params, args)
    self.opt_d = torch_adamw(list(self.disc.parameters()), args)
    real, _ = _tokens(args, lm_cfg.vocab_size, length=args.gan_len)
    self.real = torch.from_numpy(real).long()
    self.info.update(tokens_per_step=args.batch * args.gan_len,
                     params=sum(p.numel() for p in self.g_params) + sum(p.numel() for p in self.disc.parameters()),
                     attn_implementation=self.model.config._attn_implementation, note=_gan_note(args, lm_cfg))

  def generate(self):
    import torch
    import torch.nn.functional as F
    from transformers import DynamicCache
    batch = self.real.shape[0]
    wte = self.model.transformer.wte.weight
    x = (wte[0] + self.w(torch.randn(batch, self.latent)))[:, None]
    cache, ys, logits_all = DynamicCache(), [], []
    for t in range(self.length):
      out = self.model(inputs_embeds=x, position_ids=torch.full((batch, 1), t, dtype=torch.long),
                       past_key_values=cache, use_cache=True)
      cache, logits = out.past_key_values, out.logits[:, 0]
      gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp_min(1e-20)))
      soft = F.softmax((logits + gumbel) / self.tau, -1)
      y = F.one_hot(soft.argmax(-1), self.vocab).to(soft.dtype) - soft.detach() + soft
      ys.append(y)
      logits_all.append(logits)
      if t + 1 < self.length:
        x = (y @ wte)[:, None]
    return torch.stack(ys, 1), torch.stack(logits_all, 1)

  def step(self):
    import torch
    import torch.nn.functional as F
    fake, logits = self.generate()
    real_score, fake_score = self.disc(self.real), self.disc(fake.detach())
    d_loss = (F.binary_cross_entropy_with_logits(real_score, torch.ones_like(real_score))
              + F.binary_cross_entropy_with_logits(fake_score, torch.zeros_like(fake_score)))
    self.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.args.grad_clip)
    self.opt_d.step()
    self.disc.requires_grad_(False)
    score = self.disc(fake)
    g_loss = F.binary_cross_entropy_with_logits(score, torch.ones_like(score))
    self.opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    self.disc.requires_grad_(True)
    torch.nn.utils.clip_grad_norm_(self.g_params, self.args.grad_clip)
    self.opt_g.step()
    with torch.no_grad():  # G's entropy, as ours logs it
      entropy = -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1).mean()
    d_loss.item(), g_loss.item(), entropy.item()


class FlaxLM(JaxWorker):
  """transformers' FlaxGPT2LMHeadModel (Flax linen) under jax.jit, optax AdamW, the old state donated."""
  name = "flax:lm"

  def setup(self):
    import jax
    import jax.numpy as jnp
    import optax
    import transformers
    from transformers import FlaxGPT2LMHeadModel
    args, cfg = self.args, _gpt2_cfg(self.args)
    self.info["framework"] += f", flax {version('flax')}, transformers {transformers.__version__}"
    model = FlaxGPT2LMHeadModel(_hf_config(args, cfg), seed=0, dtype=jnp.float32)
    decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
    tx = optax.chain(optax.clip_by_global_norm(args.grad_clip),
                     optax.adamw(args.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=args.weight_decay,
                                 mask=decay_mask))

    def train_step(params, opt_state, step, batch, rng):
      key = jax.random.fold_in(rng, step)

      def loss_fn(p):
        logits = model(batch["inputs"], params=p, dropout_rng=key, train=True).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, step + 1, loss

    self.batch = _lm_batch(args, cfg.vocab_size)
    self.params = model.params
    self.opt_state = tx.init(self.params)
    self.count = jnp.zeros((), jnp.int32)
    self.rng = jax.random.PRNGKey(1)
    example = (self.params, self.opt_state, self.count, self.batch, self.rng)
    self.fn = self.compile(jax.jit(train_step, donate_argnums=(0, 1)), *example)
    self.info.update(_lm_info(args, cfg, sum(x.size for x in jax.tree.leaves(self.params))))

  def step(self):
    self.params, self.opt_state, self.count, loss = self.fn(self.params, self.opt_state, self.count, self.batch,
                                                            self.rng)
    self.sync(loss)


class MatmulPeak(JaxWorker):
  """The machine's fp32 matmul peak: one jitted N x N x N matmul per step (2 N^3 FLOPs). As 'peak:matmul_bf16',
  the bf16 peak: bf16 operands accumulated in fp32, the form bf16 training uses."""
  name = "peak:matmul"

  def setup(self):
    import jax
    import jax.numpy as jnp
    n = self.args.peak_n
    dtype = jnp.bfloat16 if self.name.endswith("_bf16") else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    self.ab = (a, b)
    self.fn = self.compile(jit_matmul(), a, b)
    # The training runs' peak (jaxtextgan.mfu: best of 5 n=1024 matmuls in the process), for the MFU column.
    from jaxtextgan import mfu
    self.info.update(matmul_n=n, flops_per_step=2.0 * n ** 3, flops_source="2 N^3",
                     mfu_peak_flops=mfu.measured_cpu_peak("bfloat16" if dtype == jnp.bfloat16 else "float32"))

  def step(self):
    self.sync(self.fn(*self.ab))


WORKERS = {cls.name: cls for cls in (OursLM, OursGAN, OursGanBert, OursDfine, TorchLM, TorchGAN, TorchGanBert, FlaxLM,
                                      MatmulPeak)}
WORKERS["torch_bf16:lm"] = TorchLM
WORKERS["peak:matmul_bf16"] = MatmulPeak


def summarize_trace(path: str, top: int = 12) -> dict:
  """Device-op time of a jax.profiler trace: the top ops and the share of matmul (ynn/dot) ops."""
  import glob
  import gzip
  import re
  files = glob.glob(os.path.join(path, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    return {}
  events = json.load(gzip.open(sorted(files)[-1]))["traceEvents"]
  per_op: collections.Counter = collections.Counter()
  for e in events:
    name = e.get("name", "")
    # HLO instruction names (ynn_fusion.3, copy.12, while.7); host-side events have capitals, '$' or spaces.
    if e.get("ph") == "X" and re.fullmatch(r"[a-z][a-z0-9_.\-]*", name):
      per_op[name] += e.get("dur", 0)
  total = sum(per_op.values()) or 1
  matmul = sum(v for k, v in per_op.items() if k.startswith(("ynn_fusion", "dot", "custom-call")))
  return {"op_seconds": total / 1e6, "matmul_share": matmul / total,
          "top_ops": [[k, v / 1e6] for k, v in per_op.most_common(top)]}


def worker_main(args) -> int:
  """Serves one worker on stdin/stdout: one JSON request per line, one JSON reply per line."""
  proto = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # library chatter on stdout must not corrupt the protocol
  sys.stdout = sys.stderr

  def reply(**kw):
    proto.write(json.dumps(kw) + "\n")

  worker = None
  for line in sys.stdin:
    req = json.loads(line)
    cmd = req["cmd"]
    try:
      if cmd == "setup":
        worker = WORKERS[args.worker.partition("@")[0]](args)
        worker.name = args.worker
        worker.setup()
        t0 = time.perf_counter()
        worker.step()
        worker.info["first_step_seconds"] = time.perf_counter() - t0
        for _ in range(max(args.warmup - 1, 0)):
          worker.step()
        reply(ok=True, info=worker.info, peak_rss_mb=peak_rss_mb())
      elif cmd == "step":
        c0, t0 = time.process_time(), time.perf_counter()
        worker.step()
        reply(ok=True, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
      elif cmd == "profile":
        reply(ok=True, profile=worker.profile(req["dir"]))
      elif cmd == "stats":
        reply(ok=True, peak_rss_mb=peak_rss_mb())
      elif cmd == "quit":
        reply(ok=True)
        proto.flush()
        sys.stderr.flush()
        os._exit(0)  # skip interpreter teardown (seconds for JAX and PyTorch): nothing is left to save
    except Exception as err:  # noqa: BLE001 - reported to the driver, which records it and goes on
      import traceback
      traceback.print_exc()
      reply(ok=False, error=f"{type(err).__name__}: {err}")
  return 0


# ------------------------------------------------------------------------------------------------------- driver


class Proc:
  """Driver-side handle of one worker subprocess."""

  def __init__(self, name: str, argv: list[str], log_dir: str, verbose: bool):
    self.name = name
    self.log_path = os.path.join(log_dir, name.replace(":", "_") + ".log")
    self.log = None if verbose else open(self.log_path, "w")
    cmd = [sys.executable, "-m", "benchmarks.bench", *argv, f"--worker={name}"]
    self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                              bufsize=1, cwd=ROOT)

  def send(self, **req):
    try:
      self.p.stdin.write(json.dumps(req) + "\n")
      self.p.stdin.flush()
    except (BrokenPipeError, OSError):
      pass  # receive() reports the dead worker

  def receive(self) -> dict:
    try:
      line = self.p.stdout.readline()
    except OSError:
      line = ""
    if not line:
      self.p.wait()
      return {"ok": False, "error": f"worker exited (code {self.p.poll()}): {self.stderr_tail()}"}
    return json.loads(line)

  def ask(self, **req) -> dict:
    self.send(**req)
    return self.receive()

  def stderr_tail(self, n: int = 600) -> str:
    if self.log is None:
      return "see stderr above"
    self.log.flush()
    with open(self.log_path) as f:
      text = f.read()
    return text[-n:].strip()

  def close(self):
    if self.p.poll() is None:
      self.ask(cmd="quit")
      try:
        self.p.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.p.kill()
    if self.log is not None:
      self.log.close()


def _installed(module: str) -> bool:
  import importlib.util
  return importlib.util.find_spec(module) is not None


def _peer_unavailable(peer: str) -> str | None:
  if not _installed("transformers"):
    return "transformers is not installed"
  if peer in ("torch", "torch_bf16") and not _installed("torch"):
    return "torch is not installed"
  if peer == "flax" and not (_installed("flax") and _installed("transformers.models.gpt2.modeling_flax_gpt2")):
    return "this transformers has no FlaxGPT2LMHeadModel (removed in v5)"
  return None


# The flags the driver passes on to its workers.
FORWARDED = ("size", "batch", "seq", "variants", "gan_len", "gan_model", "encoder", "warmup", "vocab", "dropout", "lr",
             "weight_decay", "grad_clip", "peak_n", "threads", "fast_compile")


def run(args) -> dict:
  """Runs every phase and returns the report (see the module docstring for the protocol)."""
  report: dict[str, Any] = {
    "config": {k: getattr(args, k) for k in (*FORWARDED, "steps", "sequential")},
    "machine": machine(),
    "protocol": "one subprocess per worker; set up one at a time (compile + warm-up); then rounds of one timed "
                "step per worker in rotating order (A B C, B C A, ...); medians over rounds",
    "parallel_setup": args.parallel_setup,
    "results": {},
  }
  results = report["results"]
  for peer in args.peer_list:
    reason = _peer_unavailable(peer)
    for o in args.objective_list:
      if reason and o in PEER_OBJECTIVES[peer]:
        results[f"{peer}:{o}"] = {"status": "unavailable", "reason": reason}
  # One phase per objective: ours (and its LM variants) with the peers that implement it, alternating; objectives
  # are not compared with each other, and several GPT-2-sized training states at once would not fit in a small
  # machine's memory.
  phases = []
  for o in args.objective_list:
    phase = [f"jaxtextgan:{o}"] + ([f"jaxtextgan:lm@{x}" for x in args.variant_list[1:]] if o == "lm" else [])
    phase += [f"{p}:{o}" for p in args.peer_list if o in PEER_OBJECTIVES[p] and f"{p}:{o}" not in results]
    phases.append(phase)
  if args.sequential:
    phases = [[name] for phase in phases for name in phase]
  # bf16 workers are measured against the bf16 matmul peak, a second peak worker in the same rounds.
  any_bf16 = any(precision(name, args.variant_list[0]) == "bf16" for phase in phases for name in phase)
  argv = [f"--{k}" if getattr(args, k) is True else f"--{k}={getattr(args, k)}" for k in FORWARDED
          if getattr(args, k) is not False]
  samples: dict[str, list[float]] = {}
  cpu: dict[str, list[float]] = collections.defaultdict(list)
  with tempfile.TemporaryDirectory(prefix="jaxtextgan_bench_") as log_dir:
    live: dict[str, Proc] = {}
    try:
      for i, phase in enumerate(phases or [[]]):
        # The peak workers join the first phase and stay for every round of every phase.
        names = (list(PEAKS[:2 if any_bf16 else 1]) if i == 0 else []) + phase
        groups = [names] if args.parallel_setup else [[n] for n in names]
        for group in groups:
          _setup_all([Proc(n, argv, log_dir, args.verbose) for n in group], live, results, samples, args)
        order = [n for n in live]
        for r in range(args.steps):
          for name in order[r % len(order):] + order[:r % len(order)]:
            if name not in live:
              continue
            out = live[name].ask(cmd="step")
            if out.get("ok"):
              samples[name].append(out["seconds"])
              cpu[name].append(out["cpu_seconds"])
            else:
              results[name].update(status="error", reason=out["error"])
              live.pop(name).close()
          _progress(f"round {r + 1}/{args.steps} done")
        for name in phase:
          if name not in live:
            continue
          if args.profile and name.split(":")[0] in ("jaxtextgan", "flax"):
            out = live[name].ask(cmd="profile", dir=os.path.abspath(args.profile))
            if out.get("ok"):
              results[name]["profile"] = out["profile"]
            else:
              results[name]["profile_error"] = out["error"]
              _progress(f"{name}: profile failed: {out['error']}")
          stats = live[name].ask(cmd="stats")
          if stats.get("ok"):
            results[name]["peak_rss_mb"] = stats["peak_rss_mb"]
          live.pop(name).close()
    finally:
      for proc in live.values():
        proc.close()
  _finish(report, samples, cpu)
  report["machine"]["loadavg_end"] = list(os.getloadavg())
  return report


def _progress(msg: str):
  print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _setup_all(procs: list[Proc], live: dict, results: dict, samples: dict, args):
  """Sends `setup` to every proc (all at once with --parallel_setup, else one by one); keeps those that work."""
  for proc in procs:
    _progress(f"setting up {proc.name}")
    proc.send(cmd="setup")
    if not args.parallel_setup:
      _setup_done(proc, live, results, samples)
  if args.parallel_setup:
    for proc in procs:
      _setup_done(proc, live, results, samples)


def _setup_done(proc: Proc, live: dict, results: dict, samples: dict):
  out = proc.receive()
  if not out.get("ok"):
    results[proc.name] = {"status": "error", "reason": out.get("error", "?")}
    _progress(f"{proc.name} failed: {out.get('error')}")
    proc.close()
    return
  results[proc.name] = {"status": "ok", **out["info"], "peak_rss_mb": out["peak_rss_mb"]}
  samples[proc.name] = []
  live[proc.name] = proc
  _progress(f"{proc.name}: compile {out['info'].get('compile_seconds', 0):.1f} s, "
            f"first step {out['info']['first_step_seconds']:.2f} s")


def _finish(report: dict, samples: dict, cpu: dict):
  """Medians, rates, the fraction of the matmul peak, and ours / peer ratios."""
  results = report["results"]
  for name, times in samples.items():
    res = results[name]
    if not times:
      res.setdefault("status", "error")
      res.setdefault("reason", "no timed step")
      continue
    med = statistics.median(times)
    # CPU seconds per step (all threads) over wall seconds: how many cores the worker really got.
    res.update(step_seconds=times, step_seconds_median=med, timed_steps=len(times),
               cpu_seconds_median=statistics.median(cpu[name]),
               cores_used=statistics.median(c / t for c, t in zip(cpu[name], times)))
    if "tokens_per_step" in res:
      res["tokens_per_second"] = res["tokens_per_step"] / med
    flops = res.get("flops_per_step") or res.get("jaxpr_matmul_flops_per_step")
    if flops and "flops_per_step" not in res:
      res["flops_per_step"] = flops
    if flops:
      res["gflops_per_second"] = flops / med / 1e9
  first = report["config"]["variants"].split(",")[0]
  peaks = {"fp32": results.get("peak:matmul", {}).get("gflops_per_second"),
           "bf16": results.get("peak:matmul_bf16", {}).get("gflops_per_second")}
  report["peak_gflops"] = peaks["fp32"]
  report["peak_gflops_bf16"] = peaks["bf16"]
  # MFU as the training runs compute it (jaxtextgan.mfu): the step's jaxpr matmul FLOPs over the step time and the
  # measured CPU peak. A peer does the same model's work, so it is credited with our jaxpr's FLOPs.
  mfu_peaks = {"fp32": results.get("peak:matmul", {}).get("mfu_peak_flops"),
               "bf16": results.get("peak:matmul_bf16", {}).get("mfu_peak_flops")}
  report["mfu_peak_gflops"] = {k: v / 1e9 if v else None for k, v in mfu_peaks.items()}
  for name, res in results.items():
    if name in PEAKS or "step_seconds_median" not in res:
      continue
    objective = name.partition(":")[2].partition("@")[0]
    flops = res.get("jaxpr_matmul_flops_per_step") or results.get(f"jaxtextgan:{objective}", {}).get(
      "jaxpr_matmul_flops_per_step")
    peak = mfu_peaks[precision(name, first)]
    if flops and peak:
      res["mfu_flops_per_step"] = flops
      res["mfu"] = flops / res["step_seconds_median"] / peak
    if "flops_per_step" not in res and flops:  # a peer of a jaxpr-counted objective
      res.update(flops_per_step=flops, flops_source="our step's jaxpr (the same model)",
                 gflops_per_second=flops / res["step_seconds_median"] / 1e9)
  for name, res in results.items():
    peak_gflops = peaks[precision(name, first)]
    if name not in PEAKS and peak_gflops and "gflops_per_second" in res:
      res["fraction_of_peak"] = res["gflops_per_second"] / peak_gflops
  ratios = {}
  for name, ours in results.items():
    if not name.startswith("jaxtextgan:"):
      continue
    objective = name.partition(":")[2].partition("@")[0]
    for peer in PEERS:
      other = results.get(f"{peer}:{objective}", {})
      if precision(name, first) != precision(f"{peer}:{objective}"):
        continue
      if ours.get("tokens_per_second") and other.get("tokens_per_second"):
        ratios[f"{name.partition(':')[2]}_vs_{peer}"] = {
          "tokens_per_second": ours["tokens_per_second"] / other["tokens_per_second"],
          "peak_rss": ours["peak_rss_mb"] / other["peak_rss_mb"],
          "compile_seconds": (ours["compile_seconds"] / other["compile_seconds"]
                              if other.get("compile_seconds") else None),
        }
  report["ratios"] = ratios


def format_table(report: dict) -> str:
  head = (f"{'worker':20s} {'step s':>8s} {'tokens/s':>9s} {'compile s':>9s} {'1st step':>8s} {'RSS MB':>8s} "
          f"{'GFLOP/s':>8s} {'% peak':>7s} {'MFU %':>6s}  FLOPs")
  lines = [head, "-" * len(head)]

  def num(x, fmt):
    return format(x, fmt) if isinstance(x, (int, float)) and not math.isnan(x) else "-"

  for name, r in report["results"].items():
    if r.get("status") != "ok":
      lines.append(f"{name:20s} {r.get('status', '?')}: {r.get('reason', '')}")
      continue
    frac = r.get("fraction_of_peak")
    lines.append(f"{name:20s} {num(r.get('step_seconds_median'), '8.3f')} {num(r.get('tokens_per_second'), '9.1f')} "
                 f"{num(r.get('compile_seconds'), '9.1f')} {num(r.get('first_step_seconds'), '8.2f')} "
                 f"{num(r.get('peak_rss_mb'), '8.0f')} {num(r.get('gflops_per_second'), '8.1f')} "
                 f"{num(100 * frac if frac else None, '6.1f'):>6s}% "
                 f"{num(100 * r['mfu'] if r.get('mfu') else None, '6.1f'):>6s}  "
                 f"{num(r.get('flops_per_step'), '.3g')} ({r.get('flops_source', '')})")
  mfu_peak = report.get("mfu_peak_gflops", {}).get("fp32")
  if mfu_peak:
    lines.append(f"MFU: jaxpr matmul FLOPs / step time / {mfu_peak:.1f} GFLOP/s (jaxtextgan.mfu's measured fp32 peak"
                 f", as the training runs log it); % peak: of the peak worker's matmul")
  for key, ratio in report.get("ratios", {}).items():
    comp = ratio["compile_seconds"]
    lines.append(f"{key}: tokens/s x{ratio['tokens_per_second']:.2f}, peak RSS x{ratio['peak_rss']:.2f}"
                 + (f", compile time x{comp:.2f}" if comp is not None else ""))
  lines.append(machine_line(report["machine"]))
  return "\n".join(lines)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    return worker_main(args)
  report = run(args)
  print(format_table(report))
  save_json(args.json, report)
  bad = [n for n, r in report["results"].items() if r.get("status") == "error"]
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
