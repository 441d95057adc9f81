"""Device mesh and logical-axis sharding rules.

Parameters carry `logical_axes` metadata (see `models.layers.param`). One rules table maps each logical name to a
mesh axis of `('data', 'fsdp', 'tensor')`; shardings of a whole training state are derived from its
`jax.eval_shape` abstract value, never written out per array. A dimension that the mesh axis does not divide is
replicated instead (for example GPT-2's vocabulary of 50,257 over 4 tensor shards).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or tuple of axes, or None = replicated). FSDP shards the model width of every weight
# (and so the optimizer state, which has the same shardings); tensor parallelism shards heads, the MLP hidden
# dimension and the vocabulary; the batch is split over data and fsdp together.
LOGICAL_RULES: dict[str, Any] = {
  "batch": ("data", "fsdp"),
  "embed": "fsdp",
  "mlp": "tensor",
  "heads": "tensor",
  "vocab": "tensor",
  "classes": None,
  "head_dim": None,
  "norm": None,
  "layers": None,
  "seq": None,
  "latent": None,
}


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data','fsdp','tensor') mesh with Auto axes; one -1 entry takes the remaining devices.

  Axes are Auto, not JAX's default Explicit, because shardings are given per jit (in_shardings/out_shardings)
  and left to the partitioner inside the step.
  """
  devices = list(devices) if devices is not None else jax.devices()
  shape = list(shape)
  if len(shape) != 3:
    raise ValueError(f"mesh shape {shape} must have 3 entries for {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape} may have at most one -1")
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    shape[shape.index(-1)] = len(devices) // rest
  elif math.prod(shape) < len(devices) and jax.process_count() == 1:
    # A smaller explicit mesh on one host uses the first devices (e.g. (1,1,1) on an 8-device machine).
    devices = devices[:math.prod(shape)]
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, but {len(devices)} are available")
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _axis_size(mesh: Mesh, axis) -> int:
  if axis is None:
    return 1
  if isinstance(axis, tuple):
    return math.prod(mesh.shape[a] for a in axis)
  return mesh.shape[axis]


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, Any] = LOGICAL_RULES) -> P:
  """PartitionSpec for one array; each mesh axis is used once and must divide its dimension."""
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    axis = rules.get(name) if name is not None else None
    if name is not None and name not in rules:
      raise KeyError(f"logical axis {name!r} has no sharding rule; add it to LOGICAL_RULES")
    members = axis if isinstance(axis, tuple) else ((axis,) if axis else ())
    members = tuple(a for a in members if a not in used and mesh.shape[a] > 1)
    if members and dim % _axis_size(mesh, members) == 0:
      used.update(members)
      spec.append(members if len(members) > 1 else members[0])
    else:
      spec.append(None)
  return P(*spec)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _leaf_sharding(x, mesh: Mesh, rules):
  """A NamedSharding, boxed in the same nnx.Variable when x is one, so the result mirrors the input's structure."""
  if not isinstance(x, nnx.Variable):
    return NamedSharding(mesh, P())
  if not jax.tree.leaves(x.get_value()):  # no array inside (optax.multi_transform's MaskedNode): nothing to place
    return x
  axes = x.get_metadata().get("logical_axes")
  shape = getattr(x.get_value(), "shape", ())
  if axes is None or len(axes) != len(shape):
    return x.replace(NamedSharding(mesh, P()))
  return x.replace(NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules)))


def state_shardings(abstract_tree, mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES):
  """NamedShardings for a pytree from `jax.eval_shape`, with its structure; Variables' `logical_axes` decide."""
  return jax.tree.map(lambda x: _leaf_sharding(x, mesh, rules), abstract_tree, is_leaf=_is_variable)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Batch-major arrays: the leading dimension over ('data','fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def constrain_batch(x: jax.Array) -> jax.Array:
  """Keeps a value made inside a step batch-major over ('data', 'fsdp') on the mesh the step is traced under.

  Without it XLA may replicate activations whose producers are fsdp-sharded weights, so that every device holds the
  whole global batch's activations (results/tpu.md: 34.7 GB instead of 4.3 per v5e chip for gpt2_24l). Outside a
  mesh (eager use, notebooks, single-device helpers) it is the identity.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "data" not in mesh.axis_names or "fsdp" not in mesh.axis_names:
    return x
  return jax.lax.with_sharding_constraint(x, P(("data", "fsdp"), *([None] * (x.ndim - 1))))


def bernoulli(key: jax.Array, p: float, shape: Sequence[int]) -> jax.Array:
  """`jax.random.bernoulli(key, p, shape)` for a batch-major value of a step, drawn where its rows live.

  XLA does not partition the RngBitGenerator that JAX's `rbg`/`unsafe_rbg` keys lower to, so each device would draw
  the bits of the whole global batch (results/tpu.md: 16 GiB per chip for gpt2_24l's attention dropout on v5e-256).
  For those keys, under a step mesh whose ('data', 'fsdp') shards the leading axis, each batch shard i draws its own
  rows from fold_in(key, i) inside a `shard_map`. Threefry (partitionable, JAX's default) and everything outside
  a mesh take the plain draw, so their numbers do not depend on the mesh.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if (jax.random.key_impl(key) not in ("rbg", "unsafe_rbg") or mesh.empty
      or not {"data", "fsdp"} <= set(mesh.axis_names)):
    return jax.random.bernoulli(key, p, shape)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if shards == 1 or shape[0] % shards:
    return jax.random.bernoulli(key, p, shape)

  def rows(key):
    shard = jax.lax.axis_index(("data", "fsdp"))
    return jax.random.bernoulli(jax.random.fold_in(key, shard), p, (shape[0] // shards, *shape[1:]))

  return jax.shard_map(rows, mesh=mesh, in_specs=P(), out_specs=P(("data", "fsdp")),
                       axis_names=frozenset({"data", "fsdp"}))(key)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a host batch on the mesh. Each process passes its own rows of the global batch (multi-host)."""
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    sharding = batch_sharding(mesh, value.ndim)
    if jax.process_count() == 1:
      out[key] = jax.device_put(value, sharding)
    else:
      out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def put_replicated(value: np.ndarray, mesh: Mesh) -> jax.Array:
  """The same host value on every device of the mesh (every process passes the same value)."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(value, sharding)
  return jax.make_array_from_process_local_data(sharding, np.asarray(value))


def to_host(x: jax.Array) -> np.ndarray:
  """A NumPy copy of a global array on every process (gathers when it is not fully replicated)."""
  if jax.process_count() == 1 or x.is_fully_replicated:
    return np.asarray(x.addressable_shards[0].data) if jax.process_count() > 1 else np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
