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
