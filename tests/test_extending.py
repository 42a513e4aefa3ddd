"""A new cell with an option of its own, defined here alone: one class, one registry line.

It must train, checkpoint, and come back through `workdir.py` with its option, as the
README's "Add your own model" promises.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax import train
from mnist_jax.errors import ConfigError
from mnist_jax.models.base import Option, RecurrentCell, is_positive
from mnist_jax.predict import Predictor
from mnist_jax.workdir import Workdir


class ToyCell(RecurrentCell):
  """h_t = tanh(W_x x_t + b + scale * W_h h_{t-1})."""
  scale: float = 1.0

  num_gates = 1
  OPTIONS = {"scale": Option(1.0, "Multiplies the recurrent term.", is_positive,
                             "a positive number")}

  @nn.nowrap
  def recurrence(self, params, carry, projected):
    h = jnp.tanh(projected + self.scale * carry @ params["kernel"])
    return h, h


@pytest.fixture
def toy_registered(monkeypatch):
  monkeypatch.setitem(models.CELLS, "toy", ToyCell)  # The one registry line.


def test_toy_cell_option_is_a_config_field_and_checked(toy_registered):
  cfg = config_lib.get_config()
  assert cfg.model.options.toy.scale == 1.0
  config_lib.override(cfg, {"model.name": "toy", "model.options.toy.scale": 0.5})
  assert models.build_model(config_lib.resolve(cfg).model).cell_options == (
      ("scale", 0.5),)
  cfg.model.options.toy.scale = -2.0
  with pytest.raises(ConfigError, match=r"model\.options\.toy\.scale=-2\.0 must be "
                     r"a positive number"):
    config_lib.resolve(cfg)


def test_toy_cell_trains_checkpoints_and_restores_through_the_workdir(
    toy_registered, make_tiny_config, tmp_path):
  cfg = make_tiny_config(**{"model.name": "toy", "model.options.toy.scale": 0.5,
                            "num_epochs": 1})
  workdir = str(tmp_path / "toy")
  result = train.train(cfg, workdir)
  assert result["completed"] and result["step"] == 6

  opened = Workdir.open(workdir)
  assert opened.config.model.name == "toy"
  assert opened.config.model.options.toy.scale == 0.5
  step, params = opened.restore_params("latest")
  assert step == 6
  assert params["layer0_fwd"]["recurrent_kernel"].shape == (16, 16)
  # The option reaches the restored model: scale changes its outputs.
  images = np.zeros((2, 28, 28), np.uint8)
  images[:, 10:18, 12:16] = 255
  probabilities = Predictor(workdir, "latest")(images)
  assert probabilities.shape == (2, 10)
  inputs = jnp.asarray(images, jnp.float32) / 255.0  # Rows, not standardised.
  logits = {}
  for scale in (0.5, 2.0):
    model = models.build_model(config_lib.override(
        config_lib.get_config(), {"model.name": "toy", "model.hidden_size": 16,
                                  "model.options.toy.scale": scale}).model)
    logits[scale] = model.apply({"params": params}, inputs)
  np.testing.assert_allclose(jax.nn.softmax(logits[0.5]), probabilities, rtol=1e-5,
                             atol=1e-6)
  assert not np.allclose(logits[0.5], logits[2.0])
