"""Table 1 of the GAN seed at CPU scale: 12 vs 24 layers, + GAN augmentation, and the two controls, on PTB.

python -m jaxtextgan.main --config=configs/table1.py                  # workdir: workdirs/table1

Trains a 12-layer and a 24-layer GPT-2 (`lm12`, `lm24`: the depths of the gpt2 presets cpu_12l / cpu_24l, at the
width set in `width`), then runs
objective='augment' on the 24-layer model: a GAN from it, and three fine-tunings for the same steps (D_real,
D_real + LM samples, D_real + GAN samples). Writes `output` (results/table1.md) with the command, seed and wall
time. Every stage resumes from its checkpoints; sized for about 40 minutes on a 2-core CPU.
"""

import ml_collections

from jaxtextgan.config import gpt2_model_config, refer_to, sibling_config, sub_run_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.objective = "table1"
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)
  c.output = "results/table1.md"
  c.command = "python -m jaxtextgan.main --config=configs/table1.py"
  c.data = ml_collections.ConfigDict(dict(
    source="ptb", train_file="", valid_file="", test_file="", tfds_name="", tfds_data_dir="", text_key="text",
    seq_len=24, batch_size=16, shards_dir="", workers=0))  # the sub-runs' data keys (table1 reads text)
  c.tokenizer = ml_collections.ConfigDict(dict(spec="word", vocab_size=0))

  # Both depths share the width, the optimizer and the training intervals.
  c.width = ml_collections.ConfigDict(dict(d_model=64, n_head=4, d_ff=256, max_len=64, dropout=0.1))
  c.optimizer = ml_collections.ConfigDict(dict(
    lr=2e-3, warmup_steps=60, end_lr_fraction=0.05, schedule="cosine", b1=0.9, b2=0.98, eps=1e-8,
    weight_decay=0.1, grad_clip_norm=1.0))
  c.train = ml_collections.ConfigDict(dict(log_every=100, eval_every=0, checkpoint_every=300, keep_checkpoints=1))
  c.eval = ml_collections.ConfigDict(dict(batch_size=64, perplexity="sliding", stride=0))  # jaxtextgan.evaluation
  c.sample = ml_collections.ConfigDict(dict(num=8, length=24, temperature=1.0, top_k=0, top_p=1.0, seed=0))
  c.lm12 = _lm_run(c, n_layer=12, steps=600)
  c.lm24 = _lm_run(c, n_layer=24, steps=600)

  # The augmentation stage: configs/augment.py's GAN, ratio, temperature and fine-tuning (data etc. set from here).
  aug = sibling_config(__file__, "augment")
  c.gan = aug.gan
  c.gan.gan.update(dict(steps=80, batch_size=8, log_every=20, checkpoint_every=40, d_warmup_steps=0))
  # results/table1.md was made with configs/gan.py's earlier D and learning rates (before the CNN D and its warm-up
  # became the defaults); pinned here so this command still reproduces that table.
  c.gan.discriminator.kind = "transformer"
  c.gan.g_optimizer.lr = 1e-4
  c.gan.d_optimizer.lr = 1e-3
  c.gan.sample.num = 200
  c.gan.eval.nll_test = False  # the table's perplexities come from the fine-tuned LMs
  c.augment = aug.augment
  c.augment.update(dict(ratio=0.05, steps=150, splits=("test",)))
  c.finetune_optimizer = aug.finetune_optimizer
  # The augmentation run itself, on this config's seed, mesh, data, tokenizer, evaluation and samples; its base LM
  # is the 24-layer one (lm_workdir is set when the run starts).
  aug.seed, aug.mesh_shape = c.get_ref("seed"), c.get_ref("mesh_shape")
  for block in ("data", "tokenizer", "eval", "sample"):
    refer_to(aug[block], c[block])
  c.augment_run = aug
  return c


def _lm_run(c: ml_collections.ConfigDict, n_layer: int, steps: int) -> ml_collections.ConfigDict:
  """A configs/lm.py-style run of `n_layer` layers at `c.width`, on `c`'s data, optimizer and intervals."""
  lm = sub_run_config(c, "lm", shared=("data", "tokenizer", "eval", "sample"), referenced=("optimizer",))
  lm.model = gpt2_model_config(vocab_size=0, n_layer=n_layer, **{k: c.width.get_ref(k) for k in c.width})
  lm.train = ml_collections.ConfigDict(dict(steps=steps, **{k: c.train.get_ref(k) for k in c.train}))
  lm.optimizer.total_steps = lm.train.get_ref("steps")
  return lm
