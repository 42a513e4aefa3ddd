"""Shared fixtures: real MNIST prepared once from the local canonical files.

The data folder comes from $MNIST_JAX_MANUAL_DIR (a folder holding `mnist/` and
`fashion_mnist/`), defaulting to `../shared/data` beside the checkout. tfds prepares it
once into $MNIST_JAX_TEST_TFDS_DIR (default `~/.cache/mnist_jax/tfds`), reused later.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from mnist_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _data_root() -> pathlib.Path:
  env = os.environ.get(config_lib.MANUAL_DIR_ENV)
  return (pathlib.Path(env) if env else REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
  root = _data_root()
  if not (root / "mnist" / "train-images-idx3-ubyte.gz").exists():
    pytest.fail(f"MNIST files not found under {root}; set {config_lib.MANUAL_DIR_ENV} "
                f"to the folder holding mnist/ (e.g. ../shared/data).")
  return root


@pytest.fixture(scope="session")
def tfds_dir(data_root) -> str:
  """A tfds data_dir with mnist prepared (from the manual files, offline)."""
  path = os.environ.get("MNIST_JAX_TEST_TFDS_DIR",
                        os.path.expanduser("~/.cache/mnist_jax/tfds"))
  from mnist_jax import data
  cfg = config_lib.get_config()
  cfg.data.manual_dir = str(data_root / "mnist")
  cfg.data.tfds_dir = path
  data.prepare(cfg.data)
  return path


def tiny_config(tfds_dir: str, data_root, **overrides):
  """A config that trains a small LSTM on a few hundred real MNIST images."""
  cfg = config_lib.get_config()
  cfg.data.manual_dir = str(data_root / "mnist")
  cfg.data.tfds_dir = tfds_dir
  cfg.num_epochs = 2
  cfg.batch_size = 50
  cfg.eval_batch_size = 64  # Not a divisor of 300: exercises the padded last batch.
  cfg.max_train_examples = 300
  cfg.max_eval_examples = 300
  cfg.model.hidden_size = 16
  cfg.log_every_steps = 2
  for key, value in overrides.items():
    target = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return cfg


@pytest.fixture
def make_tiny_config(tfds_dir, data_root):
  return lambda **overrides: tiny_config(tfds_dir, data_root, **overrides)


def run_main(*args: str, env: dict | None = None, timeout: float = 600
             ) -> subprocess.CompletedProcess:
  """Runs `python -m mnist_jax.main ARGS` in a fresh process."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, "-m", "mnist_jax.main", *args], cwd=REPO,
                        env=full_env, capture_output=True, text=True, timeout=timeout)
