"""Gumbel-Softmax text GAN on Penn Treebank (word level), sized to finish on a 2-core CPU in under 10 minutes.

python -m jaxtextgan.main --config=configs/gan.py                   # workdir: workdirs/gan

Phase 1 pre-trains G's GPT-2 with MLE (GAN seed eq. 1-2); phase 2 trains G against D with Gumbel-Softmax tokens
(eq. 4-6). Both phases checkpoint: the same command on the same workdir resumes, and a finished run prints its
results. `--config.data.source=trigram` uses the synthetic trigram oracle instead (then NLL-oracle is reported).
"""

import ml_collections

from jaxtextgan.config import gpt2_model_config as model_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.objective = "gan"
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)

  # source: ptb | text | tfds | trigram | shards. seq_len / batch_size are the MLE pre-training blocks of G; shards:
  # G's pre-training reads shards_dir (python -m jaxtextgan.prepare) through Grain with `workers` processes.
  c.data = ml_collections.ConfigDict(dict(
    source="ptb", train_file="", valid_file="", test_file="", tfds_name="", tfds_data_dir="", text_key="text",
    seq_len=32, batch_size=24, shards_dir="", workers=0,
    # The synthetic trigram oracle (data/trigram.py): vocabulary, sentence length and split sizes.
    trigram=dict(vocab_size=30, sentence_len=10, seed=0, train=20000, valid=1000, test=1000)))
  c.tokenizer = ml_collections.ConfigDict(dict(spec="word", vocab_size=0))
  # G's GPT-2 (ignored when generator.init_from names an LM workdir: its checkpoint's model is used).
  c.model = model_config(vocab_size=0, n_layer=2, d_model=128, n_head=4, d_ff=512, max_len=64, dropout=0.1)
  # kind: gpt2 | mlp. length: tokens per sample. init_from: an LM objective workdir (or its checkpoints folder).
  c.generator = ml_collections.ConfigDict(dict(kind="gpt2", length=16, latent_dim=32, mlp_hidden=(256,),
                                               init_from=""))
  # kind: transformer | cnn; pooling: mean | last (transformer); widths/filters (cnn). init_from_lm: D's encoder
  # starts as a copy of G's pre-trained GPT-2 (then n_layer/d_model/n_head/d_ff are G's). The CNN is the default
  # because it learns fastest: against the frozen MLE G, 400 batches of 64 give held-out accuracy 0.75 (CNN, lr 3e-3)
  # vs 0.63 for the 1x64 transformer (at lr 1e-3 or 3e-3) and 0.68 for a transformer copied from G's LM.
  c.discriminator = ml_collections.ConfigDict(dict(kind="cnn", n_layer=1, d_model=64, n_head=2, d_ff=128,
                                                   dropout=0.1, pooling="mean", widths=(2, 3, 4), filters=64,
                                                   init_from_lm=False))

  # Phase 1: MLE pre-training of G's GPT-2 (0 steps: G starts from init_from, or from scratch).
  c.pretrain = ml_collections.ConfigDict(dict(steps=800, log_every=100, checkpoint_every=400))
  c.pretrain.optimizer = ml_collections.ConfigDict(dict(
    lr=3e-3, total_steps=800, warmup_steps=80, end_lr_fraction=0.05, schedule="cosine", b1=0.9, b2=0.98,
    eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0))
  c.pretrain.optimizer.total_steps = c.pretrain.get_ref("steps")

  # Phase 2: the GAN. loss: minimax (eq. 4-5, non-saturating G) | wgan-gp. tau: constant | linear | exponential
  # from start to end over `steps` generator steps. fast_compile: XLA -O0 for the GAN step (tiny models only).
  # d_warmup_steps: critic-only steps against the initial G before GAN step 0, so G's first steps follow a D that
  # already separates its samples from real text. D must out-learn G: with batch 16, D at lr 1e-3 and G at 1e-4, G
  # matched what D picked up (its sentence length went 12.5 -> 14.0, PTB's is 14.1) faster than D learnt it, so D
  # stayed at 0.50 / 0.50 while G's test perplexity rose 10% (280 -> 310).
  c.gan = ml_collections.ConfigDict(dict(
    loss="minimax", steps=300, batch_size=64, n_critic=1, d_warmup_steps=100, gp_weight=10.0, hard=True,
    temperature=1.0, log_every=25, checkpoint_every=100, eval_every=0, eval_samples=200, fast_compile=False,
    tau=dict(kind="exponential", start=1.0, end=0.3)))
  c.g_optimizer = ml_collections.ConfigDict(dict(lr=5e-5, warmup_steps=0, schedule="constant", b1=0.5, b2=0.999,
                                                 eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0))
  c.d_optimizer = ml_collections.ConfigDict(dict(lr=3e-3, warmup_steps=0, schedule="constant", b1=0.5, b2=0.999,
                                                 eps=1e-8, weight_decay=0.0, grad_clip_norm=10.0))

  # Evaluation of G: `num` samples before and after the GAN phase, scored against held-out (valid) sentences;
  # nll_test: also G's NLL on the test split (its LM likelihood of real text).
  # perplexity/stride: NLL-test of G's LM on the test stream by sliding windows (stride 0: seq_len // 2;
  # jaxtextgan.evaluation); a trigram source always uses its blocks (independent sentences, exact).
  c.eval = ml_collections.ConfigDict(dict(batch_size=64, max_references=1000, nll_test=True, perplexity="sliding",
                                          stride=0))
  c.sample = ml_collections.ConfigDict(dict(num=300, seed=0))
  # After the before/after table: a short quality-diversity frontier (jaxtextgan/frontier.py), the MLE G against the
  # GAN's G, each sampled at every temperature T (softmax(logits / T)): BLEU-5 vs Self-BLEU-5 on text (NLL-oracle vs
  # G's NLL-test at T on the trigram oracle), and G's own NLL of test sentences at T over `num_z` latents.
  # temperatures=() skips it; max_test: the first 1000 test sentences are scored (0: all; this keeps it in the
  # budget). num_samples is sample.num, so the GAN's point at T = 1 is the "after GAN" sample set (same key, count and
  # BLEU references).
  c.frontier = ml_collections.ConfigDict(dict(temperatures=(0.8, 1.0, 1.2), num_samples=0, num_z=4, max_test=1000))
  c.frontier.num_samples = c.sample.get_ref("num")
  return c
