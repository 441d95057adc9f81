"""GPT-2 LM pre-training on Penn Treebank (word level), sized to finish on a 2-core CPU in under 10 minutes.

python -m jaxtextgan.main --config=configs/lm.py --workdir=workdirs/lm
A preset replaces the model block: --config=configs/lm.py:gpt2_24l (see jaxtextgan.models.gpt2.PRESETS).
"""

import ml_collections

from jaxtextgan.config import gpt2_model_config as model_config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.objective = "lm"
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)

  c.data = ml_collections.ConfigDict(dict(
    source="ptb", train_file="", valid_file="", test_file="", tfds_name="", tfds_data_dir="", text_key="text",
    seq_len=64, batch_size=32, shards_dir="", workers=0))
  # source "shards": train from shards_dir, written by python -m jaxtextgan.prepare (same tokenizer.spec and
  # seq_len); workers: Grain prefetch processes per host (0: read in the training process).
  c.tokenizer = ml_collections.ConfigDict(dict(spec="word", vocab_size=0))
  # vocab_size 0: taken from the tokenizer.
  if preset:
    from jaxtextgan.models.gpt2 import PRESETS
    c.model = model_config(vocab_size=0, **PRESETS[preset])
  else:
    c.model = model_config(vocab_size=0, n_layer=2, d_model=256, n_head=4, d_ff=1024, max_len=128, dropout=0.1)
  c.optimizer = ml_collections.ConfigDict(dict(
    lr=3e-3, total_steps=600, warmup_steps=75, end_lr_fraction=0.05, schedule="cosine", b1=0.9, b2=0.98,
    eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0))
  c.train = ml_collections.ConfigDict(dict(steps=600, log_every=50, eval_every=300, checkpoint_every=300,
                                           keep_checkpoints=2))
  c.optimizer.total_steps = c.train.get_ref("steps")
  # Perplexity scores every token of the valid/test stream once (jaxtextgan.evaluation): sliding windows of seq_len
  # targets, each scoring its last `stride` (0: seq_len // 2 = 32, context 33-64 tokens; about 2x the cost of
  # "blocks", the non-overlapping blocks whose first token is never scored and whose mean context is ~32).
  c.eval = ml_collections.ConfigDict(dict(batch_size=64, perplexity="sliding", stride=0))
  c.sample = ml_collections.ConfigDict(dict(num=16, length=40, temperature=1.0, top_k=0, top_p=0.95, seed=0))
  return c
