"""Table 1 and Figure 1 of "Fine-tuning of Language Models with Discriminator" on the synthetic trigram corpus.

Appendix A's corpus (1000 words, 10-word sentences, 80k/10k/10k sentences) with exact p. Stages: the initial LM,
a discriminator against it and one against the perturbed model (the output bias of an 'almost frequent' word,
rank 51-150, set to a large negative value), then fine-tuning of both with eq. (12) and, for Figure 1, of the
perturbed model with plain cross-entropy:

python -m jaxtextgan.main --config=configs/dfine_trigram.py --workdir=workdirs/dfine_trigram
"""

import ml_collections

from jaxtextgan.config import gpt2_model_config as model_config, optimizer_config as optimizer


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.objective = "dfine"
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)
  c.keep_checkpoints = 2
  c.progress = True
  # seeds=(0, 1, 2): one run per seed in <workdir>/seed_<s>, then mean ± std tables (tasks.dfine.run_seeds).
  c.seeds = ()

  c.data = ml_collections.ConfigDict(dict(
    source="trigram", trigram_seed=0, trigram_vocab=1000, sentence_len=10, corpus_seed=0,
    train_sentences=80_000, valid_sentences=10_000, test_sentences=10_000, seq_len=10, batch_size=256))
  c.tokenizer = ml_collections.ConfigDict(dict(spec="", vocab_size=0))
  c.model = model_config(vocab_size=0, n_layer=2, d_model=128, n_head=4, d_ff=512, max_len=16, dropout=0.0,
                         tie_embeddings=False, output_bias=True)
  c.init_lm = ml_collections.ConfigDict(dict(workdir=""))
  c.lm = ml_collections.ConfigDict(dict(steps=1200, log_every=100, checkpoint_every=400,
                                        optimizer=optimizer(3e-3, warmup=100, weight_decay=0.0, clip=1.0)))
  c.discriminator = ml_collections.ConfigDict(dict(
    init="lm", bias_init="unigram", train_layers="all",
    bias_init_blocks=20000, model_overrides=ml_collections.ConfigDict(dict()), steps=400, log_every=100,
    checkpoint_every=200, optimizer=optimizer(3e-3, warmup=50, clip=1.0)))
  c.finetune = ml_collections.ConfigDict(dict(
    loss="dfine", eps=1e-7, dropout=0.0, runs=("initial:disc", "perturbed:disc", "perturbed:ce"), steps=250,
    log_every=50, checkpoint_every=125, probe_every=10, valid_every=50,
    optimizer=optimizer(1e-3, schedule="constant", clip=1.0)))
  c.perturb = ml_collections.ConfigDict(dict(enabled=True, rank=60, bias=-15.0))
  # The trigram oracle's sentences are independent (a block = one sentence): the block method is exact here.
  c.eval = ml_collections.ConfigDict(dict(batch_size=1000, perplexity="blocks", stride=0))
  c.report = ml_collections.ConfigDict(dict(title="LM fine-tuning with a discriminator: synthetic trigram data "
                                                  "(Table 1, Figure 1)",
                                            markdown="results/dfine_trigram.md",
                                            figure="results/dfine_trigram_fig1.png",
                                            frequent=50))
  return c
