"""Shared fixtures: real MNIST prepared once from the local canonical files.

The data folder comes from $MNIST_JAX_MANUAL_DIR (a folder holding `mnist/` and
`fashion_mnist/`, each with the four canonical .gz files); tests fail at once without
it. Nothing is read from or written to the user's home: tfds prepares the data once
into $MNIST_JAX_TEST_TFDS_DIR and JAX keeps compiled programs in
$MNIST_JAX_COMPILATION_CACHE, both by default under the repository's .pytest_cache/
(kept between runs; delete it to start afresh). Nothing needs the network.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from mnist_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
_CACHE = REPO / ".pytest_cache" / "mnist_jax"
# Subprocesses inherit these: `mnist_jax.main` reads its default cache folder from it,
# and tfds' default data dir is kept off ~/tensorflow_datasets.
os.environ.setdefault("MNIST_JAX_COMPILATION_CACHE", str(_CACHE / "jax_compilation_cache"))
os.environ.setdefault("TFDS_DATA_DIR", str(_CACHE / "tfds_default"))


def _data_root() -> pathlib.Path | None:
  env = os.environ.get(config_lib.MANUAL_DIR_ENV)
  return pathlib.Path(env).resolve() if env else None


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
  root = _data_root()
  if root is None or not (root / "mnist" / "train-images-idx3-ubyte.gz").exists():
    pytest.fail(f"MNIST files not found under {root}; set {config_lib.MANUAL_DIR_ENV} "
                f"to the folder holding mnist/ (see README.md).")
  return root


@pytest.fixture(scope="session")
def tfds_dir(data_root) -> str:
  """A tfds data_dir with mnist prepared (from the manual files, offline)."""
  path = os.environ.get("MNIST_JAX_TEST_TFDS_DIR", str(_CACHE / "tfds"))
  from mnist_jax import datasets
  cfg = config_lib.get_config()
  cfg.data.manual_dir = str(data_root / "mnist")
  cfg.data.tfds_dir = path
  datasets.prepare(cfg.data)
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
  return config_lib.override(cfg, overrides)


@pytest.fixture
def make_tiny_config(tfds_dir, data_root):
  return lambda **overrides: tiny_config(tfds_dir, data_root, **overrides)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
  """The single `error: ...` line of a failed command; no traceback before it."""
  assert proc.returncode != 0
  lines = proc.stderr.splitlines()
  errors = [i for i, l in enumerate(lines) if l.startswith("error: ")]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert "Traceback" not in "\n".join(lines[:errors[0]]), proc.stderr[-2000:]
  return lines[errors[0]]


def run_main(*args: str, env: dict | None = None, timeout: float = 600
             ) -> subprocess.CompletedProcess:
  """Runs `python -m mnist_jax.main ARGS` in a fresh process."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, "-m", "mnist_jax.main", *args], cwd=REPO,
                        env=full_env, capture_output=True, text=True, timeout=timeout)
