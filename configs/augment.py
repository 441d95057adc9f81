"""GAN data augmentation of an LM (GAN seed section 4.3, eq. 11-12), with the two controls a gain needs.

python -m jaxtextgan.main --config=configs/augment.py                 # workdir: workdirs/augment

1. The base LM: `lm_workdir` (a finished `objective='lm'` workdir), or trained here from `model`/`optimizer`/`train`.
2. A GAN whose generator starts from that LM (`gan`: a full configs/gan.py config; its data, tokenizer, seed and
   init_from are set from this config, its generator length to data.seq_len).
3. N = ratio x |D_real| synthetic sequences from G (hard Gumbel-Softmax one-hots -> ids -> text), and N plain LM
   samples at the same temperature (a hard Gumbel-Softmax sample is an exact draw from softmax(logits / T)).
4. The base LM fine-tuned for the same steps on D_real, D_real + LM samples and D_real + GAN samples (eq. 12);
   validation/test perplexity and next-token accuracy of each, and of the base LM, in results.md.
"""

import ml_collections

from jaxtextgan.config import gpt2_model_config as model_config, refer_to, sibling_config, sub_run_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.objective = "augment"
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)
  c.data = ml_collections.ConfigDict(dict(
    source="ptb", train_file="", valid_file="", test_file="", tfds_name="", tfds_data_dir="", text_key="text",
    seq_len=32, batch_size=32, shards_dir="", workers=0))  # the GAN's data keys (augment itself reads text)
  c.tokenizer = ml_collections.ConfigDict(dict(spec="word", vocab_size=0))

  # The base LM: an existing LM workdir, or trained here (into <workdir>/base) when empty.
  c.lm_workdir = ""
  c.model = model_config(vocab_size=0, n_layer=2, d_model=128, n_head=4, d_ff=512, max_len=64, dropout=0.1)
  c.optimizer = ml_collections.ConfigDict(dict(
    lr=3e-3, total_steps=1000, warmup_steps=100, end_lr_fraction=0.05, schedule="cosine", b1=0.9, b2=0.98,
    eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0))
  c.train = ml_collections.ConfigDict(dict(steps=1000, log_every=100, eval_every=0, checkpoint_every=500,
                                           keep_checkpoints=1))
  c.optimizer.total_steps = c.train.get_ref("steps")

  c.gan = sibling_config(__file__, "gan")
  c.gan.gan.steps = 200

  # ratio: synthetic sequences per real training sequence in D_aug = D_real + D_synthetic (eq. 11).
  c.augment = ml_collections.ConfigDict(dict(ratio=0.1, temperature=1.0, sample_batch=256, steps=300,
                                             log_every=100, checkpoint_every=0, splits=("valid", "test")))
  c.finetune_optimizer = ml_collections.ConfigDict(dict(
    lr=3e-4, warmup_steps=0, end_lr_fraction=0.1, schedule="cosine", b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.1,
    grad_clip_norm=1.0))
  c.eval = ml_collections.ConfigDict(dict(batch_size=64, perplexity="sliding", stride=0))  # jaxtextgan.evaluation
  c.sample = ml_collections.ConfigDict(dict(num=16, length=32, temperature=1.0, top_k=0, top_p=1.0, seed=0))

  # The sub-runs, built from this config's fields by reference, so an override of data, seed, ... reaches them:
  # the base LM as configs/lm.py would train it, and the GAN, whose G emits data.seq_len tokens and starts from the
  # base LM (its generator.init_from is the base LM's workdir, known only when the run starts).
  c.base_lm = sub_run_config(c, "lm", shared=("data", "tokenizer", "model", "optimizer", "train", "eval", "sample"))
  c.gan.seed, c.gan.mesh_shape = c.get_ref("seed"), c.get_ref("mesh_shape")
  refer_to(c.gan.data, c.data, skip=("trigram",))
  refer_to(c.gan.tokenizer, c.tokenizer)
  c.gan.generator.length = c.data.get_ref("seq_len")
  c.gan.pretrain.steps = 0
  return c
