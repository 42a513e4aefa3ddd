"""optimizer.ema_decay and config.eval_params: the parameter EMA, kept in the optimizer
state, is what validation, test evaluation and prediction use; runs without one (and
workdirs from before it) evaluate their raw parameters."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mnist_jax import checkpoints
from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import ema
from mnist_jax import evaluate
from mnist_jax import models
from mnist_jax import steps
from mnist_jax import train
from mnist_jax.errors import ConfigError, WorkdirError
from mnist_jax.predict import Predictor
from mnist_jax.workdir import Workdir

EMA_RUN = {"num_epochs": 2, "optimizer.ema_decay": 0.9}  # 6 steps an epoch.


def _state_and_batch(**overrides):
  cfg = config_lib.get_config()
  cfg.model.hidden_size = 8
  cfg = config_lib.resolve(config_lib.override(cfg, overrides))
  state = steps.create_train_state(cfg, jax.random.PRNGKey(0), steps_per_epoch=10)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (16, 28, 28), np.uint8)),
           "label": jnp.asarray(rng.integers(0, 10, 16, np.int32))}
  return cfg, state, batch


def test_the_ema_is_the_hand_computed_average_of_the_parameters():
  """Four train steps; decay 0.3 is above the warm-up's d_t for t = 1, 2 and below it
  for t = 3, 4, so both branches of d_t = min(decay, (1 + t) / (10 + t)) count. The
  updates themselves are those of the optimizer without the EMA."""
  decay = 0.3
  cfg, state, batch = _state_and_batch(**{"optimizer.ema_decay": decay})
  plain_cfg, plain, _ = _state_and_batch()
  step = jax.jit(functools.partial(steps.train_step,
                                   preprocess=data.make_preprocess(cfg.data)))
  average = jax.tree.map(np.asarray, state.params)
  for t in range(1, 5):
    state, metrics = step(state, batch)
    plain, _ = step(plain, batch)
    assert bool(metrics["finite"])
    d = min(decay, (1 + t) / (10 + t))
    average = jax.tree.map(lambda e, p: d * e + (1 - d) * np.asarray(p), average,
                           state.params)
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6,
                                                            atol=1e-7),
               steps.eval_params(state.params, state.opt_state, "ema"), average)
  jax.tree.map(np.testing.assert_array_equal, state.params, plain.params)
  assert ema.find(plain.opt_state) is None
  assert steps.eval_params(state.params, state.opt_state, "raw") is state.params


def test_eval_params_defaults_to_the_ema_when_there_is_one():
  cfg = config_lib.get_config()
  assert config_lib.resolve(cfg).eval_params == "raw"
  cfg.optimizer.ema_decay = 0.999
  assert config_lib.resolve(cfg).eval_params == "ema"
  cfg.eval_params = "raw"
  assert config_lib.resolve(cfg).eval_params == "raw"
  cfg.optimizer.ema_decay, cfg.eval_params = 0.0, "ema"
  with pytest.raises(ConfigError, match="eval_params='ema' needs .*ema_decay"):
    config_lib.resolve(cfg)
  cfg.eval_params, cfg.optimizer.ema_decay = None, 1.0
  with pytest.raises(ConfigError, match=r"optimizer.ema_decay=1.0 must be in \[0, 1\)"):
    config_lib.resolve(cfg)


def _saved_state(workdir, step=None):
  """The whole train state of a checkpoint (latest when `step` is None)."""
  config = Workdir.open(str(workdir)).config
  store = checkpoints.CheckpointStore(str(workdir / "checkpoints"), read_only=True)
  step = store.latest_step() if step is None else step
  target = steps.create_train_state(config, jax.random.PRNGKey(config.seed), 6)
  state, _ = store.restore(step, target)
  store.close()
  return config, state


def _probabilities(config, params, images) -> np.ndarray:
  """The model applied by hand: softmax of the logits, float64 [n, classes]."""
  preprocess = data.make_preprocess(config.data)  # Not standardised: no constants.
  logits = models.build_model(config.model).apply({"params": params},
                                                  preprocess(jnp.asarray(images)))
  return evaluate.softmax(np.asarray(logits, np.float64))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, tfds_dir, data_root):
  from conftest import tiny_config
  workdir = tmp_path_factory.mktemp("ema") / "run"
  config = tiny_config(tfds_dir, data_root, **EMA_RUN)
  train.train(config, str(workdir))
  return config, workdir


def test_validation_evaluation_and_prediction_use_the_ema(ema_run):
  _, workdir = ema_run
  config, state = _saved_state(workdir)
  assert config.eval_params == "ema"
  averaged = ema.find(state.opt_state)
  split = data.load_splits(config)["validation"]
  result = evaluate.evaluate(str(workdir), "latest", "validation")
  want = _probabilities(config, averaged, split.images)
  np.testing.assert_allclose(result.probabilities, want, rtol=1e-5, atol=1e-6)
  raw = _probabilities(config, state.params, split.images)
  assert np.abs(raw - want).max() > 1e-3  # The EMA is not the raw parameters.
  # Model selection saw the same numbers: the last logged validation accuracy.
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text()
          .splitlines()]
  logged = [r for r in rows if r["split"] == "validation"][-1]
  assert logged["step"] == 12 and logged["accuracy"] == result.metrics["accuracy"]
  predicted = Predictor(str(workdir), checkpoint="latest")(split.images[:20])
  np.testing.assert_allclose(predicted, want[:20], rtol=1e-5, atol=1e-6)
  _, raw_params = Workdir.open(str(workdir)).restore_params("latest", kind="raw")
  jax.tree.map(np.testing.assert_array_equal, raw_params, state.params)


def test_resuming_restores_the_ema_bit_for_bit(ema_run, tmp_path):
  """The run resumed from its epoch-1 checkpoint ends with the uninterrupted run's
  optimizer state, EMA and its count included, bit for bit; another ema_decay is
  another run."""
  config, workdir = ema_run
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / "checkpoints" / "12")
  assert train.train(config, str(resumed))["step"] == 12
  _, want = _saved_state(workdir)
  _, got = _saved_state(resumed)
  assert ema.find(got.opt_state) is not None and int(got.step) == 12
  leaves = jax.tree.leaves(got.opt_state)
  assert len(leaves) == len(jax.tree.leaves(want.opt_state))
  for a, b in zip(leaves, jax.tree.leaves(want.opt_state)):
    np.testing.assert_array_equal(a, b, strict=True)
  jax.tree.map(np.testing.assert_array_equal, got.params, want.params)
  other = config_lib.override(ml_collections.ConfigDict(config.to_dict()),
                              {"optimizer.ema_decay": 0.5})
  with pytest.raises(WorkdirError, match=r"optimizer.ema_decay=0.9 -> 0.5"):
    Workdir.create(config_lib.resolve(other), str(resumed))


def test_a_workdir_without_ema_evaluates_and_predicts_its_raw_parameters(
    make_tiny_config, tmp_path):
  """ema_decay 0: the optimizer state keeps its pre-EMA layout, and a config.json
  written before the EMA keys existed resolves to the raw parameters."""
  workdir = tmp_path / "run"
  train.train(make_tiny_config(num_epochs=1), str(workdir))
  path = workdir / "config.json"
  saved = json.loads(path.read_text())
  for section, key in (("model", "dtype"), ("model", "remat"),
                       ("optimizer", "ema_decay")):
    del saved[section][key]
  del saved["eval_params"]
  path.write_text(json.dumps(saved))
  config, state = _saved_state(workdir)
  assert config.eval_params == "raw" and ema.find(state.opt_state) is None
  split = data.load_splits(config)["validation"]
  result = evaluate.evaluate(str(workdir), "latest", "validation")
  want = _probabilities(config, state.params, split.images)
  np.testing.assert_allclose(result.probabilities, want, rtol=1e-5, atol=1e-6)
  predicted = Predictor(str(workdir), checkpoint="latest")(split.images[:20])
  np.testing.assert_allclose(predicted, want[:20], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="no parameter EMA"):
    steps.eval_params(state.params, state.opt_state, "ema")
