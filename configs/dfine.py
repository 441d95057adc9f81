"""Fine-tuning a GPT-2 LM with a discriminator on Penn Treebank, Table 2 style (Popov & Kudinov §4.1).

One command runs initial LM -> discriminator -> fine-tuning with the discriminator, and the "without
discriminator" ablation (r ≡ 1/2); each stage checkpoints in its own subdirectory and resumes:

python -m jaxtextgan.main --config=configs/dfine.py --workdir=workdirs/dfine_ptb

Sized for a 2-core CPU: one seed took 13 minutes on a lightly loaded one (seed 2 of results/dfine_ptb_seeds_d1000.md). Start from an existing LM workdir
(configs/lm.py) with --config.init_lm.workdir=DIR and the matching --config.model.* fields.
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
    source="ptb", train_file="", valid_file="", test_file="", tfds_name="", tfds_data_dir="", text_key="text",
    seq_len=32, batch_size=32, shards_dir="", workers=0))  # source 'shards': every stage reads shards_dir
  c.tokenizer = ml_collections.ConfigDict(dict(spec="word", vocab_size=0))
  # The discriminator shares this architecture; an untied output layer and bias let it start at r = 1/2.
  c.model = model_config(vocab_size=0, n_layer=2, d_model=128, n_head=4, d_ff=512, max_len=32, dropout=0.1,
                         tie_embeddings=False, output_bias=True)
  # A non-empty workdir takes stage 1 from an existing LM run instead of training it here.
  c.init_lm = ml_collections.ConfigDict(dict(workdir=""))

  c.lm = ml_collections.ConfigDict(dict(steps=1000, log_every=50, checkpoint_every=250,
                                        optimizer=optimizer(3e-3, warmup=100, weight_decay=0.1, clip=1.0)))
  # §4.1: the discriminator is trained with the LM's dropout; 'lm' copies q0's weights with a zeroed output layer.
  # The unigram output bias (eq. 6's best context-free r, b_w = log Q_w/P_w) counts P_w on every training block and
  # sums Q_w = Σ_c q0(w|c) on `bias_init_blocks` random blocks (0: all; tasks.dfine.unigram_estimate): counts on a
  # sample were too noisy (D started above log 4), q0's smooth probabilities are not.
  # lr 1e-3 (Adam moves all 10k output rows at once) made D worse than its start; 400 steps at 1e-4 learned 0.002
  # nats over the unigram-only D, 1000 steps at 3e-4 learn 0.015 ± 0.004 (3 seeds, results/dfine_ptb_seeds_d1000.md).
  # train_layers: 'all' | 'head' (output layer + final norm) | 'top:N' (the head and the top N blocks); the rest of
  # q0's copy stays frozen (objectives.dfine.make_tx).
  c.discriminator = ml_collections.ConfigDict(dict(
    init="lm", bias_init="unigram", train_layers="all",
    bias_init_blocks=2000, model_overrides=ml_collections.ConfigDict(dict(dropout=0.1)), steps=1000, log_every=50,
    checkpoint_every=250, optimizer=optimizer(3e-4, warmup=50, clip=1.0)))
  # §4.1: fine-tuning without dropout. runs: 'base:variant', variant disc | nodisc (r ≡ 1/2) | ce.
  c.finetune = ml_collections.ConfigDict(dict(
    loss="dfine", eps=1e-7, dropout=0.0, runs=("initial:disc", "initial:nodisc"), steps=200, log_every=25,
    checkpoint_every=100, probe_every=0, valid_every=0, optimizer=optimizer(1e-4, schedule="constant", clip=0.25)))
  c.perturb = ml_collections.ConfigDict(dict(enabled=False, rank=60, bias=-20.0))
  # Validation and test numbers on the contiguous stream by sliding windows, stride 0 = seq_len // 2 = 16 (context
  # 17-32 tokens; jaxtextgan.evaluation).
  c.eval = ml_collections.ConfigDict(dict(batch_size=64, perplexity="sliding", stride=0))
  c.report = ml_collections.ConfigDict(dict(title="LM fine-tuning with a discriminator: PTB, Table 2 style",
                                            markdown="results/dfine_ptb.md", figure="", frequent=50))
  return c
