"""Training-state plumbing shared by every objective.

A `TrainState` is one pytree (step, params, opt_state) plus static fields (the model's graphdef and the optax
transformation) that never enter a checkpoint. Shardings come from `jax.eval_shape` of the initialiser plus the
logical-axis rules, and the state is created directly in its sharded layout by a jitted initialiser.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxtextgan import sharding as shd


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  graphdef: Any = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def model(self, params=None) -> nnx.Module:
    """The module with these (or the given) parameters; call inside jitted code."""
    return nnx.merge(self.graphdef, self.params if params is None else params)

  def apply_gradients(self, grads) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state)


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int, end_fraction: float = 0.1,
                           kind: str = "cosine") -> optax.Schedule:
  """Linear warmup to `peak`, then cosine (or linear) decay to `end_fraction * peak` at `total_steps`."""
  warmup_steps = max(0, min(warmup_steps, total_steps - 1))
  decay_steps = max(1, total_steps - warmup_steps)
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end_fraction)
  elif kind == "linear":
    decay = optax.linear_schedule(peak, peak * end_fraction, decay_steps)
  elif kind == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"unknown schedule {kind!r}: use cosine, linear or constant")
  if warmup_steps == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup_steps), decay], [warmup_steps])


def make_optimizer(opt_cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with global-norm clipping and warmup + decay; `opt_cfg` is a ConfigDict or mapping."""
  get = opt_cfg.get if hasattr(opt_cfg, "get") else (lambda k, d=None: getattr(opt_cfg, k, d))
  schedule = learning_rate_schedule(get("lr"), get("total_steps"), get("warmup_steps", 0),
                                    get("end_lr_fraction", 0.1), get("schedule", "cosine"))
  chain = []
  if get("grad_clip_norm", 0.0):
    chain.append(optax.clip_by_global_norm(get("grad_clip_norm")))
  chain.append(optax.adamw(schedule, b1=get("b1", 0.9), b2=get("b2", 0.999), eps=get("eps", 1e-8),
                           weight_decay=get("weight_decay", 0.0), mask=_layer_aware_decay_mask))
  return optax.chain(*chain), schedule


def _layer_aware_decay_mask(params):
  """Decay weight matrices only, as in GPT-2 practice; names, not ndim, decide, since stacked layers add an axis."""
  def decays(path, x):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return not any(n in ("bias", "scale", "content_bias", "position_bias", "out_bias") for n in names) and x.ndim >= 2
  return jax.tree_util.tree_map_with_path(decays, params)


def init_sharded_state(make_state: Callable[[jax.Array], TrainState], rng: jax.Array, mesh: Mesh):
  """Builds the state inside `jit` so each array is created directly with its derived sharding.

  Returns (state, state_shardings). `make_state(rng)` must be a pure function of the key.
  """
  abstract = jax.eval_shape(make_state, rng)
  shardings = shd.state_shardings(abstract, mesh)
  state = jax.jit(make_state, out_shardings=shardings)(rng)
  return state, shardings


def abstract_state(make_state: Callable[[jax.Array], TrainState], rng: jax.Array, mesh: Mesh):
  """(abstract state with shardings attached, shardings): the target of a sharded checkpoint restore."""
  abstract = jax.eval_shape(make_state, rng)
  shardings = shd.state_shardings(abstract, mesh)
  with_shardings = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return with_shardings, shardings


def place_like(new_tree, like_tree):
  """`new_tree`'s host values, each placed in the sharding of the array at the same place in `like_tree`. (Steps
  donate their state: a fresh device_put copy never aliases, and so never deletes, an array a later run needs.)"""
  return jax.tree.map(lambda new, old: jax.device_put(np.asarray(new), old.sharding), new_tree, like_tree)


def tree_l2_norm(tree) -> jax.Array:
  return optax.tree.norm(tree)


def step_rng(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The per-step key: fold_in(rng, step), so a resumed run draws exactly the keys of an uninterrupted one."""
  return jax.random.fold_in(rng, step)


def cast_floating(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def lm_compiler_options() -> dict | None:
  """XLA options for GPT-2 train steps: on CPU, LLVM -O1 instead of -O3.

  The step's time is in matmul library calls (unaffected) and memory-bound fusions, so -O1 leaves the step time
  unchanged while compiling GPT-2 small in 25-50% less time (results/perf.md). Other backends keep their defaults.
  """
  return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


# XLA's LLVM optimisation off: compiles several times faster and runs about 2x slower, the right trade for small
# models where compiling dominates (tests, notebooks, smoke runs). Pass as `compiler_options=`.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


_JITTED: dict = {}


def jit_step(step_fn, mesh: Mesh, state_shardings, batch_shardings, *, frozen_shardings=None, donate: bool = True,
             compiler_options: dict | None = None):
  """The one jit of a pure step, with explicit shardings: the state's (from its logical axes), the batch's and a
  replicated key; the old state donated. With `frozen_shardings` the step is `(state, frozen, batch, rng)`: frozen
  parameters (read, never trained) travel as an argument, not as constants baked into the program.

  Memoised on the step function, the mesh and the shardings: stages that run the same program (dfine's two
  discriminators, repeated runs in one process) compile once.
  """
  key = (step_fn, mesh, _sharding_key(state_shardings), _sharding_key(batch_shardings),
         _sharding_key(frozen_shardings), donate, tuple(sorted((compiler_options or {}).items())))
  if key not in _JITTED:
    rep = NamedSharding(mesh, jax.sharding.PartitionSpec())
    middle = (batch_shardings, rep) if frozen_shardings is None else (frozen_shardings, batch_shardings, rep)

    def on_mesh(*args):  # traced under the mesh, so the model's `sharding.constrain_batch` knows its axes
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return step_fn(*args)

    _JITTED[key] = jax.jit(on_mesh, in_shardings=(state_shardings, *middle), out_shardings=(state_shardings, rep),
                           donate_argnums=(0,) if donate else (), compiler_options=compiler_options)
  return _JITTED[key]


def _sharding_key(tree):
  return None if tree is None else (jax.tree.structure(tree), tuple(jax.tree.leaves(tree)))
