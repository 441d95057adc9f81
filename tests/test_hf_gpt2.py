"""Parity: a random transformers GPT2LMHeadModel, saved and imported, gives the same logits (fp32, <= 1e-4)."""

import numpy as np
import pytest

from jaxtextgan.errors import InputError
from jaxtextgan.models import hf_gpt2

torch = pytest.importorskip("torch", reason="torch is a test extra: pip install -e .[test]")
transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e .[test]")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  model = transformers.GPT2LMHeadModel(cfg).eval()
  # Non-trivial biases and norms, so a transposed or mis-split weight cannot pass by accident.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("hf_gpt2")
  model.save_pretrained(path, safe_serialization=True)
  return path, model


@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers(hf_dir, scan_layers):
  path, torch_model = hf_dir
  ids = np.random.RandomState(0).randint(0, 97, size=(2, 17))
  with torch.no_grad():
    expected = torch_model(torch.tensor(ids)).logits.numpy()
  model, cfg = hf_gpt2.load_gpt2(path, dropout=0.0, scan_layers=scan_layers)
  got = np.asarray(model(ids))
  assert cfg.n_layer == 3 and cfg.d_ff == 4 * 48 and cfg.scan_layers == scan_layers
  assert got.shape == expected.shape
  assert np.max(np.abs(got - expected)) <= 1e-4


def test_missing_weights_file(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(InputError, match="model.safetensors is missing"):
    hf_gpt2.load_gpt2(tmp_path)


def test_missing_directory(tmp_path):
  with pytest.raises(InputError, match="does not exist"):
    hf_gpt2.load_gpt2(tmp_path / "nope")
