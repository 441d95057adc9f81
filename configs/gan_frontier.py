"""Quality-diversity frontiers (issue 15): the MLE G against G after minimax and WGAN-GP, 3 seeds on the trigram
oracle and 1 on PTB, over a temperature grid (Caccia et al. 2020).

python -m jaxtextgan.main --config=configs/gan_frontier.py     # workdir: workdirs/gan_frontier
  -> results/gan_frontier.md, results/gan_frontier_trigram.png, results/gan_frontier_ptb.png

Each (source, seed) trains one GAN per loss from one MLE-pre-trained G (configs/gan.py's recipe, with that seed),
then samples and scores every G at every temperature (jaxtextgan/frontier.py; on PTB also the LM plane,
jaxtextgan/frontier_lm.py). `--config.seeds.ptb='()'` skips PTB.
"""

import ml_collections

from jaxtextgan.config import gpt2_model_config as model_config
from jaxtextgan.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.objective = "gan_frontier"
  c.seed = 0  # unused: each run's seed is one of `seeds`
  c.mesh_shape = (-1, 1, 1)
  c.seeds = ml_collections.ConfigDict(dict(trigram=(0, 1, 2), ptb=(0,)))
  c.losses = ("minimax", "wgan-gp")
  # The sweep: T in [0.6, 1.5], `num_samples` draws per point, G's NLL-test at T over `num_z` latents.
  c.frontier = ml_collections.ConfigDict(dict(temperatures=(0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5),
                                              num_samples=500, num_z=8, max_test=0))
  # The LM plane on text (jaxtextgan/frontier_lm.py; text_lm_scores=False skips it): LM score, the NLL of G's samples
  # under a judge LM, against reverse-LM score, the NLL of the real test rows under a small LM trained on G's samples.
  # The judge: a GPT-2 larger than G's (2 x 128) and trained longer than G's MLE pre-training (800 steps of 24 x 32
  # tokens), once per (source, seed) in <source>_s<seed>/judge (resumed). One reverse LM per (generator, T) for T in
  # reverse_lm.temperatures (() = every T), trained on reverse_lm.num_samples draws of G at T (0: the sweep's).
  c.frontier.text_lm_scores = True
  c.frontier.judge = ml_collections.ConfigDict(dict(
    model=model_config(vocab_size=0, n_layer=3, d_model=192, n_head=4, d_ff=768, max_len=64, dropout=0.1),
    seq_len=32, batch_size=32, steps=1500, lr=3e-3, warmup_steps=100, weight_decay=0.1))
  c.frontier.reverse_lm = ml_collections.ConfigDict(dict(
    model=model_config(vocab_size=0, n_layer=1, d_model=64, n_head=2, d_ff=256, max_len=32, dropout=0.1),
    batch_size=32, steps=300, lr=3e-3, warmup_steps=30, weight_decay=0.1, num_samples=2000,
    temperatures=(0.6, 0.8, 1.0, 1.2, 1.5)))
  # The GAN runs: configs/gan.py on the trigram oracle (vocabulary 30, sentences of 10 words; G's length is the
  # sentence length) and on PTB, unchanged.
  c.trigram = sibling_config(__file__, "gan")
  c.trigram.data.source = "trigram"
  c.trigram.generator.length = c.trigram.data.trigram.sentence_len
  c.ptb = sibling_config(__file__, "gan")
  # Per-loss changes to the GAN config (nested like it; keys with '-' written '_'): WGAN-GP's critic takes more
  # steps per G step (Gulrajani et al. use 5) at a lower learning rate.
  c.loss_overrides = ml_collections.ConfigDict(dict(wgan_gp=dict(gan=dict(n_critic=3), d_optimizer=dict(lr=1e-3))))
  c.results = "results/gan_frontier"
  return c
