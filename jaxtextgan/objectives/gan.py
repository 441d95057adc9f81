"""The Gumbel-Softmax text GAN objective: minimax (GAN seed eq. 4-5) or WGAN-GP, as pure jitted steps.

One `GANState` pytree {step, g, d} holds both players (each a `TrainState`: params, opt_state), so it is
checkpointed as one. A step is `(state, batch, rng) -> (state, metrics)`:

  for i < n_critic:   D <- D - lr grad_D L_D(real_i, sg(G(z_i)))      L_D = eq. (4), or E D(fake) - E D(real) + GP
  once:               G <- G - lr grad_G L_G(G(z))                    L_G = eq. (5) (non-saturating), or -E D(fake)

with GP = lambda E[(||grad_x D(x)||_2 - 1)^2] at x = eps onehot(real) + (1 - eps) y_fake in the one-hot space.
One critic, the one that is trained (Gulrajani et al. regularise it), serves all three terms: D's dropout is on in
its scores, in the penalty (the fakes' dropout masks: GP is the gradient of the very function that scored them) and
in G's loss (again the fakes' masks of the last critic step), so G follows the critic D was fitted and penalised as.
The critic's fakes pass through stop_gradient and G's loss is differentiated only in G's params, so neither
loss leaks into the other player's update. The Gumbel-Softmax temperature tau follows a schedule that is a pure
function of the GAN step. Keys: fold_in(rng, step), then fold_in(., i) for critic step i and fold_in(., n_critic)
for the generator, so a resumed run draws the keys of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxtextgan import losses, training
from jaxtextgan.errors import InputError
from jaxtextgan.models import discriminator as disc_lib
from jaxtextgan.models import generator as gen_lib
from jaxtextgan.models import gpt2

Array = jax.Array

LOSSES = ("minimax", "wgan-gp")
TAU_KINDS = ("constant", "linear", "exponential")


@dataclasses.dataclass(frozen=True)
class TauSchedule:
  """tau(step) from `start` to `end` over `total_steps` GAN steps: constant, linear or exponential (geometric)."""
  kind: str = "constant"
  start: float = 1.0
  end: float = 1.0
  total_steps: int = 1

  def __post_init__(self):
    if self.kind not in TAU_KINDS:
      raise InputError(f"tau schedule {self.kind!r} is unknown: use one of {', '.join(TAU_KINDS)}")
    for name in ("start", "end"):
      value = getattr(self, name)
      if not value > 0:
        raise InputError(f"tau {name}={value} is not positive (zero tau): Gumbel-Softmax temperatures must be > 0")
    if self.total_steps < 1:
      raise InputError(f"tau schedule total_steps={self.total_steps} is invalid: use the number of GAN steps (>= 1)")


def tau_at(step, schedule: TauSchedule) -> Array:
  """tau(step): start; start + (end - start) f; or start (end / start)^f, with f = min(step / total_steps, 1)."""
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / schedule.total_steps, 0.0, 1.0)
  if schedule.kind == "constant":
    return jnp.asarray(schedule.start, jnp.float32)
  if schedule.kind == "linear":
    return schedule.start + (schedule.end - schedule.start) * frac
  return schedule.start * (schedule.end / schedule.start) ** frac


@dataclasses.dataclass(frozen=True)
class GANConfig:
  """Static hyper-parameters of a GAN step."""
  loss: str = "minimax"
  n_critic: int = 1
  gp_weight: float = 10.0
  batch_size: int = 32
  tau: TauSchedule = TauSchedule()
  hard: bool = True
  temperature: float = 1.0

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise InputError(f"gan loss={self.loss!r} is unknown: use one of {', '.join(LOSSES)}")
    if self.n_critic < 1:
      raise InputError(f"n_critic={self.n_critic} is invalid: use at least 1 critic step per generator step")
    if self.batch_size < 1:
      raise InputError(f"gan batch_size={self.batch_size} is invalid: use a positive batch size")
    if not self.temperature > 0:
      raise InputError(f"sampling temperature={self.temperature} is not positive: use e.g. 1.0")
    if self.gp_weight < 0:
      raise InputError(f"gp_weight={self.gp_weight} is negative: use lambda >= 0 (10 is the WGAN-GP default)")


@flax.struct.dataclass
class GANState:
  """Both players in one pytree; `step` counts generator steps (one per `train_step`)."""
  step: jax.Array
  g: training.TrainState
  d: training.TrainState


# The builders below are memoised on their (hashable, static) configs: equal configs give the same function
# objects, and jax.jit reuses a compiled executable for the same function, so a second run in one process (a
# resumed run, the augmentation stage reloading a GAN, tests) does not compile again.


def _frozen(opt_cfg) -> tuple:
  return tuple(sorted(dict(opt_cfg).items()))


def make_state_fn(gen_cfg: gen_lib.GeneratorConfig, lm_cfg: gpt2.GPT2Config,
                  disc_cfg: disc_lib.DiscriminatorConfig, g_opt_cfg, d_opt_cfg):
  """A pure `rng -> GANState` initialiser (for `jax.eval_shape` and sharded init)."""
  return _make_state_fn(gen_cfg, lm_cfg, disc_cfg, _frozen(g_opt_cfg), _frozen(d_opt_cfg))


@functools.lru_cache(maxsize=32)
def _make_state_fn(gen_cfg, lm_cfg, disc_cfg, g_opt: tuple, d_opt: tuple):
  g_tx, _ = training.make_optimizer(dict(g_opt))
  d_tx, _ = training.make_optimizer(dict(d_opt))

  def player(module, tx):
    graphdef, params = nnx.split(module, nnx.Param)
    return training.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                               graphdef=graphdef, tx=tx)

  def make_state(rng):
    g_key, d_key = jax.random.split(rng)
    g = gen_lib.make_generator(gen_cfg, lm_cfg, rngs=nnx.Rngs(params=g_key))
    d = disc_lib.make_discriminator(disc_cfg, rngs=nnx.Rngs(params=d_key))
    return GANState(step=jnp.zeros((), jnp.int32), g=player(g, g_tx), d=player(d, d_tx))

  return make_state


def with_lm_params(state: GANState, lm_params, *, discriminator: bool = False) -> GANState:
  """The state with G's GPT-2 (and, with `discriminator`, D's encoder) replaced by LM params (MLE pre-training or
  an LM checkpoint). Adam's moments are zero at init whatever the params, so the optimizer states stay valid."""
  state = state.replace(g=state.g.replace(params=gen_lib.inject_lm_params(state.g.graphdef, state.g.params,
                                                                          lm_params)))
  if discriminator:
    state = state.replace(d=state.d.replace(params=disc_lib.inject_encoder_params(state.d.graphdef, state.d.params,
                                                                                  lm_params)))
  return state


def _batch_constraint(x: Array, mesh: Mesh | None) -> Array:
  """Pins the leading (batch) axis of a value made inside the step to ('data','fsdp'), as the real batch is."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(("data", "fsdp"), *([None] * (x.ndim - 1)))))


def generate(g_graphdef, g_params, key: Array, batch_size: int, latent_dim: int, tau, *, hard: bool = True,
             temperature=1.0, mesh: Mesh | None = None):
  """G(z) with z ~ N(0, I): (y_BTV straight-through one-hots, ids_BT, logits_BTV)."""
  z_key, noise_key = jax.random.split(key)
  z_BZ = _batch_constraint(jax.random.normal(z_key, (batch_size, latent_dim)), mesh)
  return nnx.merge(g_graphdef, g_params)(z_BZ, noise_key, tau, hard=hard, temperature=temperature)


def _critic_keys(key: Array) -> tuple[Array, Array, Array]:
  """(dropout key of the real scores, dropout key of the fake scores (also the penalty's and G's), eps key)."""
  return tuple(jax.random.split(key, 3))


@functools.lru_cache(maxsize=32)
def make_steps(cfg: GANConfig, latent_dim: int, mesh: Mesh | None = None):
  """Pure `d_step(state, real_BT, key)`, `g_step(state, key)` and `train_step(state, batch, rng)`.

  `batch["real"]` is (B, n_critic, T) int32: one real batch per critic step, batch-major so it shards on B.
  `train_step` equals n_critic `d_step`s followed by one `g_step` (keys fold_in(step_key, i), the last critic step
  and the generator step sharing key n_critic - 1), but computes G's forward pass for the last critic step once
  and reuses it, with its VJP, for the generator update: the same numbers for one decode less per step.
  """
  gen = functools.partial(generate, batch_size=cfg.batch_size, latent_dim=latent_dim, hard=cfg.hard,
                          temperature=cfg.temperature, mesh=mesh)
  wgan = cfg.loss == "wgan-gp"

  def d_loss_fn(d_params, d_graphdef, real_BT, fake_BTV, key):
    critic = nnx.merge(d_graphdef, d_params)
    drop_real, drop_fake, eps_key = _critic_keys(key)
    real_B = critic(real_BT, dropout_key=drop_real)
    fake_B = critic(fake_BTV, dropout_key=drop_fake, one_hot=cfg.hard)
    if wgan:
      eps_B = _batch_constraint(jax.random.uniform(eps_key, (real_BT.shape[0],)), mesh)
      real_BTV = jax.nn.one_hot(real_BT, fake_BTV.shape[-1], dtype=jnp.float32)
      # The critic that scored the fakes, dropout masks included (module docstring).
      gp, grad_norm = losses.gradient_penalty(lambda x: critic(x, dropout_key=drop_fake), real_BTV, fake_BTV, eps_B)
      loss = losses.wgan_critic_loss(real_B, fake_B) + cfg.gp_weight * gp
      aux = {"d_real": real_B.mean(), "d_fake": fake_B.mean(), "gp": gp, "critic_grad_norm": grad_norm,
             "wasserstein": real_B.mean() - fake_B.mean()}
    else:
      loss = losses.gan_discriminator_loss(real_B, fake_B)
      aux = {"d_real": jax.nn.sigmoid(real_B).mean(), "d_fake": jax.nn.sigmoid(fake_B).mean()}
    return loss, aux

  def d_update(state: GANState, real_BT: Array, fake_BTV: Array, key: Array):
    """One critic update; the fakes enter through stop_gradient, so nothing flows back to G."""
    fake_BTV = jax.lax.stop_gradient(fake_BTV)
    (loss, aux), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d.params, state.d.graphdef, real_BT,
                                                                     fake_BTV, key)
    metrics = {"d_loss": loss, "d_grad_norm": training.tree_l2_norm(grads), **aux}
    return state.replace(d=state.d.apply_gradients(grads)), metrics

  def d_step(state: GANState, real_BT: Array, key: Array):
    """One critic update on a real batch and fresh fakes; G's params are only read."""
    fake_key, loss_key = jax.random.split(key)
    fake_BTV, _, _ = gen(state.g.graphdef, state.g.params, fake_key, tau=tau_at(state.step, cfg.tau))
    return d_update(state, real_BT, fake_BTV, loss_key)

  def g_loss_of_fakes(fake_BTV, state: GANState, loss_key):
    """L_G as a function of G's output; D's params enter as constants. D's dropout is on, with the masks its
    fakes got from `loss_key` in the critic step (module docstring)."""
    _, drop_fake, _ = _critic_keys(loss_key)
    fake_B = nnx.merge(state.d.graphdef, state.d.params)(fake_BTV, dropout_key=drop_fake, one_hot=cfg.hard)
    return losses.wgan_generator_loss(fake_B) if wgan else losses.gan_generator_loss(fake_B)

  def g_metrics(loss, grads, logits_BTV):
    # Mean entropy of the distributions G draws tokens from: a cheap mode-collapse signal.
    entropy = -jnp.mean(jnp.sum(jax.nn.softmax(logits_BTV) * jax.nn.log_softmax(logits_BTV), axis=-1))
    return {"g_loss": loss, "g_grad_norm": training.tree_l2_norm(grads), "g_entropy": entropy}

  def g_step(state: GANState, key: Array):
    """One generator update against the current D; D's params are only read."""
    fake_key, loss_key = jax.random.split(key)
    tau = tau_at(state.step, cfg.tau)

    def loss_fn(g_params):
      fake_BTV, _, logits_BTV = gen(state.g.graphdef, g_params, fake_key, tau=tau)
      return g_loss_of_fakes(fake_BTV, state, loss_key), logits_BTV

    (loss, logits_BTV), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g.params)
    return state.replace(g=state.g.apply_gradients(grads)), g_metrics(loss, grads, logits_BTV)

  def train_step(state: GANState, batch, rng):
    step_key = training.step_rng(rng, state.step)
    tau = tau_at(state.step, cfg.tau)
    real_NBT = jnp.swapaxes(batch["real"], 0, 1)
    d_metrics = []
    if cfg.n_critic > 1:
      def critic_iter(st, xs):
        real_BT, i = xs
        return d_step(st, real_BT, jax.random.fold_in(step_key, i))
      state, first = jax.lax.scan(critic_iter, state, (real_NBT[:-1], jnp.arange(cfg.n_critic - 1)))
      d_metrics.append(first)
    # Last critic step and the generator step share one forward pass of G (and so its fakes).
    fake_key, loss_key = jax.random.split(jax.random.fold_in(step_key, cfg.n_critic - 1))
    gen_fn = lambda p: (lambda y, ids, logits: (y, logits))(*gen(state.g.graphdef, p, fake_key, tau=tau))
    fake_BTV, vjp_fn, logits_BTV = jax.vjp(gen_fn, state.g.params, has_aux=True)
    state, last = d_update(state, real_NBT[-1], fake_BTV, loss_key)
    d_metrics.append(jax.tree.map(lambda x: x[None], last))
    g_loss, dfake_BTV = jax.value_and_grad(g_loss_of_fakes)(fake_BTV, state, loss_key)
    (g_grads,) = vjp_fn(dfake_BTV)
    state = state.replace(g=state.g.apply_gradients(g_grads))
    d_all = jax.tree.map(lambda *xs: jnp.concatenate(xs), *d_metrics)
    metrics = {**{k: v.mean() for k, v in d_all.items()}, **g_metrics(g_loss, g_grads, logits_BTV), "tau": tau}
    return state.replace(step=state.step + 1), metrics

  return d_step, g_step, train_step


@functools.lru_cache(maxsize=32)
def make_sampler(cfg: GANConfig, latent_dim: int, g_graphdef, num: int):
  """jitted `(g_params, key) -> ids (num, T)`: hard samples of G (exact categorical draws, whatever tau)."""

  @jax.jit
  def sample(g_params, key):
    _, ids_BT, _ = generate(g_graphdef, g_params, key, num, latent_dim, 1.0, hard=True,
                            temperature=cfg.temperature)
    return ids_BT

  return sample


def make_temperature_sampler(latent_dim: int, g_graphdef, num: int):
  """jitted `(g_params, key, temperature) -> ids (num, T)`: exact draws of G at softmax(logits / temperature).

  As `make_sampler`, with the temperature a traced argument, so a sweep over temperatures compiles once (at
  temperature = cfg.temperature and the same key it draws the same ids as `make_sampler`).
  """
  return _make_temperature_sampler(latent_dim, g_graphdef, num)


@functools.lru_cache(maxsize=32)
def _make_temperature_sampler(latent_dim: int, g_graphdef, num: int):
  @jax.jit
  def sample(g_params, key, temperature):
    _, ids_BT, _ = generate(g_graphdef, g_params, key, num, latent_dim, 1.0, hard=True, temperature=temperature)
    return ids_BT

  return sample


def conditional_log_probs(g_graphdef, g_params, targets_BT: Array, z_BZ: Array, temperature) -> Array:
  """log p_G(x_t | x_<t, z) of given sequences under G's sampling distribution, teacher-forced: (B, T) fp32.

  The distribution G draws token t from: softmax(logits_t / temperature + forbid), with logits from G's GPT-2 fed
  x_0 = E[bos] + W z (position 0), then x_1..x_{t-1} (the GPT-2 generator), or from MLP(z) at position t (the MLP
  generator). Forbidden ids (e.g. the trigram start token) get probability ~0. No dropout.
  """
  g = nnx.merge(g_graphdef, g_params)
  if isinstance(g, gen_lib.MLPGenerator):  # its logits are already / temperature + forbid
    _, _, logits_BTV = g(z_BZ, jax.random.key(0), 1.0, hard=True, temperature=temperature)
  else:
    lm = g.lm
    mask_V = gen_lib._forbid_mask(lm.cfg.vocab_size, g.cfg.forbidden_ids)
    batch, length = targets_BT.shape
    positions_T = jnp.arange(length, dtype=jnp.int32)
    inputs_BT = jnp.concatenate([jnp.full((batch, 1), g.cfg.bos_id, jnp.int32), targets_BT[:, :-1]], axis=1)
    x_BTD = lm.embed(inputs_BT, positions_T)
    x_BTD = x_BTD.at[:, 0].add(g.latent(z_BZ).astype(x_BTD.dtype))
    h_BTD, _ = lm.backbone(x_BTD, positions_T)
    logits_BTV = lm.logits(h_BTD) / temperature + mask_V
  return losses.token_log_probs(logits_BTV, targets_BT)


def sequence_nll(g_graphdef, g_params, targets_BT: Array, key: Array, temperature, num_z: int) -> Array:
  """-log p_G(x) per sequence at `temperature`, (B,), with the latent marginalised by Monte Carlo:

    log p_G(x) ~= log (1/K) sum_k prod_t p_G(x_t | x_<t, z_k),   z_k ~ N(0, I), K = num_z.

  By Jensen the estimate is a lower bound of log p_G(x) in expectation (so the NLL an upper bound); it is exact
  when z has no effect (W = 0, as in the MLE-pretrained G, where K = 1 suffices).
  """
  z_KBZ = jax.random.normal(key, (num_z, targets_BT.shape[0], _latent_dim(g_graphdef, g_params)))
  seq_KB = jax.vmap(lambda z: conditional_log_probs(g_graphdef, g_params, targets_BT, z, temperature).sum(-1))(z_KBZ)
  return -(jax.nn.logsumexp(seq_KB, axis=0) - jnp.log(num_z))


def _latent_dim(g_graphdef, g_params) -> int:
  return nnx.merge(g_graphdef, g_params).cfg.latent_dim
