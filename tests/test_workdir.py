"""The workdir: preprocessing constants fixed at training time, older layouts migrated."""

import csv
import json

import numpy as np
import pytest

from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import evaluate
from mnist_jax import train
from mnist_jax.predict import Predictor
from mnist_jax.workdir import Workdir


def _probabilities(csv_path) -> np.ndarray:
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  return np.array([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])


@pytest.mark.slow
def test_permuted_standardised_run_trains_evaluates_and_predicts(make_tiny_config,
                                                                 tmp_path):
  """psMNIST with standardised pixels, end to end: the constants saved at training
  time are the ones evaluation and prediction use (prediction without the dataset)."""
  cfg = make_tiny_config(**{"data.sequence": "permuted_pixels", "data.standardize": True,
                            "model.hidden_size": 8, "num_epochs": 1,
                            "max_train_examples": 100, "max_eval_examples": 128})
  workdir = tmp_path / "psmnist"
  assert train.train_and_evaluate(cfg, str(workdir)) is not None
  resolved = config_lib.resolve(cfg)
  train_split = data.load_splits(resolved)["train"]
  pixels = train_split.images.astype(np.float64) / 255.0
  saved = json.loads((workdir / "preprocessing.json").read_text())
  assert saved == {"mean": pixels.mean(), "std": pixels.std()}
  np.testing.assert_array_equal(np.load(workdir / "permutation.npy"),
                                data.permutation(resolved.data))
  # Prediction applies the same permutation and standardisation as evaluation did.
  [csv_path] = (workdir / "eval").glob("test_step*_predictions.csv")
  predictor = Predictor(str(workdir))
  test_images = data.load_splits(resolved)["test"].images
  np.testing.assert_allclose(predictor(test_images), _probabilities(csv_path),
                             atol=2e-6)


def _legacy_layout(config: dict) -> dict:
  """config.json as written before cells owned their options."""
  model = config["model"]
  options = model.pop("options")
  model["activation"] = options["simple_rnn"]["activation"]
  model["irnn_scale"] = options["irnn"]["identity_scale"]
  model["lstm_chrono_max_timescale"] = options["lstm"]["chrono_max_timescale"]
  for key, value in options["lru"].items():
    model[f"lru_{key}"] = value
  return config


def test_workdir_of_the_older_layout_still_evaluates(make_tiny_config, tmp_path):
  """A relu SimpleRNN: if the legacy `model.activation` were not migrated, the restored
  model would run tanh and predict differently."""
  cfg = make_tiny_config(**{"model.name": "simple_rnn", "num_epochs": 1,
                            "model.options.simple_rnn.activation": "relu"})
  workdir = tmp_path / "old"
  train.train(cfg, str(workdir))
  now = evaluate.evaluate_workdir(str(workdir), "latest")
  [csv_path] = (workdir / "eval").glob("test_step*_predictions.csv")
  probabilities = _probabilities(csv_path)
  config_path = workdir / "config.json"
  config_path.write_text(json.dumps(_legacy_layout(json.loads(config_path.read_text()))))
  (workdir / "preprocessing.json").unlink()  # Not written by the older layout either.
  assert Workdir.open(str(workdir)).config.model.options.simple_rnn.activation == "relu"
  again = evaluate.evaluate_workdir(str(workdir), "latest")
  assert again == now
  np.testing.assert_array_equal(_probabilities(csv_path), probabilities)


def test_restore_params_needs_no_optimizer(make_tiny_config, tmp_path):
  """Parameters come back alone, shaped from the config, whatever the optimizer."""
  cfg = make_tiny_config(num_epochs=1)
  workdir = tmp_path / "run"
  train.train(cfg, str(workdir))
  step, params = Workdir.open(str(workdir)).restore_params("best")
  assert step == 6 and set(params) == {"layer0_fwd", "head"}
  assert params["layer0_fwd"]["recurrent_kernel"].shape == (16, 64)
  # Another optimizer in the saved config changes nothing for evaluation.
  config_path = workdir / "config.json"
  saved = json.loads(config_path.read_text())
  saved["optimizer"].update(name="sgd", schedule="cosine")
  config_path.write_text(json.dumps(saved))
  _, again = Workdir.open(str(workdir)).restore_params("best")
  np.testing.assert_array_equal(again["head"]["kernel"], params["head"]["kernel"])
