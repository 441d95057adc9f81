"""Loading config files with dotted overrides, and the errors for mistyped keys."""

import pytest

from jaxtextgan.config import load_config
from jaxtextgan.errors import InputError
from cli_helpers import REPO


def test_overrides_apply_and_references_follow():
  config = load_config(REPO / "configs" / "lm.py", {"train.steps": 17, "model.n_layer": 3})
  assert config.train.steps == 17 and config.model.n_layer == 3
  # The schedule length is tied to the number of steps.
  assert config.optimizer.total_steps == 17


def test_preset_argument_sets_the_model():
  config = load_config(f"{REPO / 'configs' / 'lm.py'}:gpt2_24l")
  assert (config.model.n_layer, config.model.d_model, config.model.n_head) == (24, 1024, 16)


def test_unknown_key_and_missing_file():
  with pytest.raises(InputError, match=r"unknown config key 'trian.steps': did you mean 'train'\?"):
    load_config(REPO / "configs" / "lm.py", {"trian.steps": 1})
  with pytest.raises(InputError, match="valid keys here"):
    load_config(REPO / "configs" / "lm.py", {"model.zzzzzz": 1})
  with pytest.raises(InputError, match="does not exist"):
    load_config(REPO / "configs" / "nope.py")
