"""Logical-axis rules: specs from metadata, divisibility fallback, one mesh axis per array, mesh construction."""

import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxtextgan import sharding as shd
from jaxtextgan.models import gpt2


def test_make_mesh_shapes_and_errors():
  mesh = shd.make_mesh((-1, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="needs 12 devices"):
    shd.make_mesh((3, 2, 2))
  assert shd.make_mesh((1, 1, 2)).devices.size == 2
  with pytest.raises(ValueError, match="3 entries"):
    shd.make_mesh((8, 1))


def test_logical_to_spec_rules_and_divisibility():
  mesh = shd.make_mesh((1, 2, 4))
  assert shd.logical_to_spec(("embed", "mlp"), (64, 128), mesh) == P("fsdp", "tensor")
  # 50257 is not divisible by 4 tensor shards: the vocabulary is replicated, the width still FSDP-sharded.
  assert shd.logical_to_spec(("vocab", "embed"), (50257, 64), mesh) == P(None, "fsdp")
  assert shd.logical_to_spec(("layers", "norm"), (4, 64), mesh) == P(None, None)
  # Batch uses ('data', 'fsdp'); axes of size 1 are dropped.
  assert shd.logical_to_spec(("batch", None), (8, 3), mesh) == P("fsdp", None)
  # A mesh axis is used at most once per array.
  assert shd.logical_to_spec(("heads", "mlp"), (8, 8), mesh) == P("tensor", None)
  with pytest.raises(KeyError, match="no sharding rule"):
    shd.logical_to_spec(("bogus",), (4,), mesh)


def test_state_shardings_follow_model_metadata():
  mesh = shd.make_mesh((2, 2, 2))
  abstract = nnx.eval_shape(lambda: gpt2.GPT2(gpt2.preset("tiny", vocab_size=64), rngs=nnx.Rngs(0)))
  shardings = shd.state_shardings(nnx.state(abstract), mesh)
  get = lambda *path: dict(nnx.to_flat_state(shardings))[path].get_value().spec
  assert get("wte", "embedding") == P("tensor", "fsdp")
  assert get("blocks", "attn", "out", "kernel") == P(None, "tensor", None, "fsdp")
  assert get("blocks", "mlp", "proj", "kernel") == P(None, "tensor", "fsdp")
  assert get("norm_f", "scale") == P(None)


def _lm_step_memory(mesh_shape, scan_layers=True):
  """(temporary bytes per device, argument bytes per device) of the LM train step, compiled for 8 CPU devices."""
  from jaxtextgan import training
  from jaxtextgan.objectives import lm
  mesh = shd.make_mesh(mesh_shape)
  cfg = gpt2.GPT2Config(vocab_size=512, max_len=64, n_layer=2, d_model=64, n_head=4, d_ff=256, scan_layers=scan_layers)
  opt = {"lr": 1e-3, "total_steps": 10}
  abstract, shardings = training.abstract_state(lm.make_state_fn(cfg, opt), jax.random.key(0), mesh)
  batch_sh = {k: shd.batch_sharding(mesh) for k in ("inputs", "targets")}
  batch = {k: jax.ShapeDtypeStruct((32, 64), jax.numpy.int32, sharding=s) for k, s in batch_sh.items()}
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=shd.replicated(mesh))
  compiled = training.jit_step(lm.train_step, mesh, shardings, batch_sh).lower(abstract, batch, key).compile()
  mem = compiled.memory_analysis()
  return mem.temp_size_in_bytes, mem.argument_size_in_bytes


@pytest.mark.parametrize("scan_layers", [True, False])
def test_fsdp_keeps_activations_batch_sharded(scan_layers):
  """With fsdp the activations stay split over the batch (`constrain_batch`): each device's temporaries are those
  of its own rows, as with data parallelism, not of the whole global batch (6.4x more before the constraint)."""
  data_temp, data_args = _lm_step_memory((8, 1, 1), scan_layers)
  fsdp_temp, fsdp_args = _lm_step_memory((1, 8, 1), scan_layers)
  assert fsdp_args < 0.3 * data_args  # parameters and AdamW state sharded
  assert fsdp_temp < 1.5 * data_temp, (fsdp_temp, data_temp)


def test_constrain_batch_outside_a_mesh_is_the_identity():
  x = jax.numpy.ones((4, 3))
  assert shd.constrain_batch(x) is x


def _dropout_mask(mesh, key):
  """layers.dropout's keep mask of a (16, 4, 8) batch-major value, jitted under `mesh` as a training step is."""
  from jaxtextgan.models import layers

  def mask(key):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return layers.dropout(jax.numpy.ones((16, 4, 8)), 0.5, key) > 0

  jitted = jax.jit(mask, out_shardings=shd.batch_sharding(mesh, 3))
  lines = [line for line in jitted.lower(key).as_text().splitlines() if "rng_bit_generator" in line]
  return jitted(key), "\n".join(lines)


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 4, 2)])
def test_rbg_dropout_bits_are_drawn_per_batch_shard(mesh_shape):
  """rbg keys (TPU's hardware bits): batch shard i draws its rows from fold_in(key, i), so the compiled program
  makes words for 16 / shards rows, not for the global batch on every device (results/tpu.md, v5e-256)."""
  mesh = shd.make_mesh(mesh_shape)
  shards = mesh_shape[0] * mesh_shape[1]
  key = jax.random.key(3, impl="unsafe_rbg")
  keep, rng_ops = _dropout_mask(mesh, key)
  rows = 16 // shards
  want = jax.numpy.concatenate([jax.random.bernoulli(jax.random.fold_in(key, i), 0.5, (rows, 4, 8))
                                for i in range(shards)])
  assert (keep == want).all() and 0.3 < float(keep.mean()) < 0.7
  # The program's RngBitGenerator makes one shard's words (XLA would not split a global-shape one).
  assert f"tensor<{rows}x4x8xui32>" in rng_ops and "tensor<16x4x8xui32>" not in rng_ops
  # Threefry keys keep the plain draw: the same mask on any mesh.
  threefry = jax.random.key(3)
  assert (_dropout_mask(mesh, threefry)[0] == jax.random.bernoulli(threefry, 0.5, (16, 4, 8))).all()
