"""Shared fixtures: real MNIST prepared once from the local canonical files.

The data folder is $MNIST_JAX_MANUAL_DIR when set (a folder holding `mnist/` and
`fashion_mnist/`, each with the four canonical .gz files), else the MNIST files shipped
in the package; Fashion-MNIST tests are skipped, with one reason line, when no
`fashion_mnist/` is there. Nothing is read from or written to the user's home: tfds prepares the data once
into $MNIST_JAX_TEST_TFDS_DIR and JAX keeps compiled programs in
$MNIST_JAX_COMPILATION_CACHE, both by default under the repository's .pytest_cache/
(kept between runs; delete it to start afresh). Nothing needs the network.
"""

import json
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


def _data_root() -> pathlib.Path:
  from mnist_jax import datasets
  env = os.environ.get(config_lib.MANUAL_DIR_ENV)
  return pathlib.Path(env or datasets.PACKAGED_ROOT).resolve()


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
  """A folder holding mnist/ (and, where available, fashion_mnist/)."""
  root = _data_root()
  if not (root / "mnist" / "train-images-idx3-ubyte.gz").exists():
    pytest.fail(f"MNIST files not found under {root}/mnist; unset "
                f"{config_lib.MANUAL_DIR_ENV} to use the shipped copy, or point it at "
                f"a folder holding mnist/ (see README.md).")
  return root


@pytest.fixture(scope="session")
def fashion_dir(data_root) -> pathlib.Path:
  """The Fashion-MNIST files; the test is skipped when there are none."""
  folder = data_root / "fashion_mnist"
  if not (folder / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(f"Fashion-MNIST files not found (not shipped with the package; set "
                f"{config_lib.MANUAL_DIR_ENV} to a folder holding fashion_mnist/)")
  return folder


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


# `python -m mnist_jax.main` whose training batches each take DELAY s longer, so a kill
# can be aimed at a step; EXTRA is more code run first (e.g. a patched save).
SLOW_MAIN = """
import time
from mnist_jax import data
_batches = data.train_batches
def _slow(*args, **kwargs):
  for batch in _batches(*args, **kwargs):
    time.sleep({delay})
    yield batch
data.train_batches = _slow
{extra}
from mnist_jax.main import run
run()
"""


# Files whose tests share a module-scoped fixture (a trained workdir, a cluster): with
# pytest-xdist (`--dist loadgroup`, pyproject.toml) each runs whole on one worker, so
# the fixture is built once; every other test is scheduled on its own.
_ONE_WORKER = ("test_api_docs.py", "test_benchmark.py", "test_cli.py",
               "test_distributed.py", "test_ema.py", "test_end_to_end.py",
               "test_faults.py", "test_population.py", "test_predict.py",
               "test_slurm.py", "test_xdist_groups.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """Slow tests first, so that the workers end together rather than one of them
  finishing a long test alone; and the file groups above."""
  del config
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
  for item in items:
    if item.path.name in _ONE_WORKER:
      item.add_marker(pytest.mark.xdist_group(item.path.stem))


def quick_subset(cases, keep) -> list:
  """`cases` for `pytest.mark.parametrize`, those not in `keep` marked slow: the quick
  subset (`-m "not slow"`) checks a contract on the representatives in `keep`, the full
  suite on every case. A case is one value, or a tuple of the arguments."""
  return [case if case in keep else
          pytest.param(*(case if isinstance(case, tuple) else (case,)),
                       marks=pytest.mark.slow)
          for case in cases]


def metric_rows(workdir) -> dict[tuple[int, str], dict]:
  """WORKDIR/metrics.jsonl as {(step, split): row without examples_per_sec}; asserts
  each (step, split) is logged once."""
  rows = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    key = (record["step"], record["split"])
    assert key not in rows, f"{key} logged twice in {workdir}"
    rows[key] = {k: v for k, v in record.items() if k != "examples_per_sec"}
  return rows
