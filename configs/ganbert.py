"""GAN-BERT (seed: Croce et al. 2020) with the bundled MiniLM encoder, sized for a 2-core CPU.

One model (TREC fine, the release's 109-labeled split), then label texts with it:
  python -m jaxtextgan.main --config=configs/ganbert.py --workdir=workdirs/ganbert
  python -m jaxtextgan.predict --workdir=workdirs/ganbert --input=questions.txt
Experiments (GAN-BERT vs. fine-tuning at equal steps, its supervised-only ablation, a frozen-encoder logistic
regression and SetFit, >= 3 seeds; write results/ganbert_<dataset>.md and .png; SetFit needs its own venv, README):
  python -m jaxtextgan.main --config=configs/ganbert.py:trec_experiment --workdir=workdirs/ganbert_trec
  python -m jaxtextgan.main --config=configs/ganbert.py:bbc_experiment --workdir=workdirs/ganbert_bbc
Other data: --config.data.source=files --config.data.train_file=train.csv --config.data.test_file=test.csv
(rows without a label are unlabeled; --config.data.text_column / label_column name the columns).
"""

import os
import pathlib

import ml_collections

_SHARED = pathlib.Path(os.environ.get("JAXTEXTGAN_SHARED", pathlib.Path(__file__).resolve().parents[1].parent
                                      / "shared"))


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.objective = "ganbert"
  c.mode = "train"  # 'train' one model, or 'experiment' (fractions x seeds x methods)
  c.method = "ganbert"  # or 'finetune', 'ganbert-sup-only', 'baseline' (tasks/ganbert.py's docstring)
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)

  c.data = ml_collections.ConfigDict(dict(
    source="trec",  # trec | bbc | files
    trec_dir=str(_SHARED / "data" / "trec"), granularity="fine",
    labeled_fraction=0.1, test_fraction=0.2, bbc_dir="",  # bbc: labeled share of the non-test articles
    train_file="", test_file="", unlabeled_file="", text_column="text", label_column="label", label_names="",
    unlabeled_multiplier=100,  # |U| <= 100 |L| (paper, sec. 4); 0: all
    max_unlabeled=0,  # a further cap on |U| for compute; 0: none
    max_len=64, batch_size=64,  # the release's max_seq_length and train_batch_size
    pad_multiple=16))  # batches are cut to their longest row rounded up to this (0: always max_len)
  c.model = ml_collections.ConfigDict(dict(
    encoder_dir="",  # a Hugging Face BERT directory; '' = the bundled all-MiniLM-L6-v2
    encoder_dropout=-1.0,  # < 0: the checkpoint's own dropout rates
    # MiniLM was trained as a sentence encoder with mean pooling; its pooler is a leftover. 'pooler' = release.
    pooling="mean",
    latent_dim=100, d_hidden=0, g_hidden=0,  # 0: the encoder width, as in the release
    dropout=0.1, epsilon=1e-8, feature_matching="mean", noise="normal",
    freeze_layers=0,  # N > 0: embeddings and the bottom N encoder layers frozen (a CPU budget option)
    cache_frozen=True))  # with freeze_layers: their output computed once (no dropout there), not in every step
  c.optimizer = ml_collections.ConfigDict(dict(
    lr=5e-5, g_lr=0.0,  # g_lr 0: same as lr (release)
    head_lr=0.0,  # > 0: the classifier head (D) at its own rate, the encoder at lr; 0: lr for both (release)
    warmup_proportion=0.1, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, grad_clip_norm=1.0))
  # GAN-BERT trains `steps` iterations if > 0, else `epochs` over its replicated training set; the baseline gets the
  # same number of passes over each labeled example.
  c.train = ml_collections.ConfigDict(dict(epochs=2.0, steps=0, log_every=10, checkpoint_every=0,
                                           keep_checkpoints=1, tensorboard=True,
                                           fast_compile=False))  # True: XLA -O0, for tiny models
  c.eval = ml_collections.ConfigDict(dict(batch_size=64))
  c.experiment = ml_collections.ConfigDict(dict(
    fractions=(), seeds=(0, 1, 2),
    methods=("ganbert", "finetune", "ganbert-sup-only", "frozen-lr", "setfit", "setfit-cv", "contrastive-lr",
             "contrastive-ganbert"),
    report="", figure="", title="", compile_cache=False, progress=True, command="",
    lr_cs=(0.01, 0.1, 1.0, 10.0, 100.0),  # frozen-lr, contrastive-lr, setfit-cv: C by k-fold CV on the labeled rows
    setfit_python=os.environ.get("SETFIT_PYTHON", ""),  # SetFit's own venv's python (README)
    setfit_steps=300, setfit_batch_size=16,  # fixed in advance (issue 14's SetFit run)
    # The contrastive Stage (SetFit's first stage in JAX; 'contrastive-lr', 'contrastive-ganbert'): SetFit's values.
    contrastive_steps=300, contrastive_batch_size=16, contrastive_lr=2e-5))

  if preset == "trec_experiment":
    c.mode = "experiment"
    c.train.tensorboard = False
    c.experiment.update(dict(report="results/ganbert_trec.md", figure="results/ganbert_trec.png",
                             title="TREC fine (109 labeled, GAN-BERT release split)"))
  elif preset == "bbc_experiment":
    # Issue 14's BBC target: 1, 2 and 5 % labeled, 3 seeds. max_len 64 (headline and first sentence), batch 16, a
    # fixed 150 GAN-BERT iterations per run (1.25 epochs of the 1,915 training articles; every fine-tuned method gets
    # the same steps, and every run shares one compiled program), a 10% test split (213 articles).
    c.mode = "experiment"
    c.data.update(dict(source="bbc", max_len=64, batch_size=16, test_fraction=0.1))
    c.train.update(dict(epochs=0.0, steps=150, tensorboard=False))
    c.experiment.update(dict(fractions=(0.01, 0.02, 0.05), report="results/ganbert_bbc_equal.md",
                             figure="results/ganbert_bbc_equal.png", title="BBC News (5 classes)"))
  elif preset:
    raise ValueError(f"unknown preset {preset!r}: use trec_experiment or bbc_experiment")
  return c
