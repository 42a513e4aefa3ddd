"""Bad input: damaged or missing data files and invalid config values each give one
line naming the file or the field, without a traceback."""

import gzip
import pathlib
import socket
import time

from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

from conftest import one_line_error, run_main
from mnist_jax import config as config_lib
from mnist_jax import config_checks
from mnist_jax import data
from mnist_jax import datasets
from mnist_jax import models
from mnist_jax.errors import ConfigError, DataError

pytestmark = [pytest.mark.faults, pytest.mark.slow]


# ----------------------------------------------------------------------------------
# Bad data files: one line naming the file; no files and no network: fast.
# ----------------------------------------------------------------------------------
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _manual_copy(data_root, dest: pathlib.Path, victim: str, kind: str) -> None:
  """Links the good files into `dest` and writes a damaged `victim`."""
  dest.mkdir()
  for name in FILES:
    if name != victim:
      (dest / name).symlink_to(data_root / "mnist" / name)
  raw = (data_root / "mnist" / victim).read_bytes()
  if kind == "missing":
    return
  if kind == "truncated":
    bad = raw[:len(raw) // 2]
  elif kind == "not_gzip":
    bad = gzip.decompress(raw)  # The raw IDX bytes, uncompressed.
  elif kind == "wrong_magic":
    content = bytearray(gzip.decompress(raw))
    content[3] ^= 0x02  # 2051 <-> 2049: images and labels swapped.
    bad = gzip.compress(bytes(content))
  elif kind == "checksum":
    content = bytearray(gzip.decompress(raw))
    content[-1] ^= 0x01  # One pixel / label changed; the IDX header is fine.
    bad = gzip.compress(bytes(content))
  else:
    raise ValueError(kind)
  (dest / victim).write_bytes(bad)


@pytest.mark.parametrize("kind,victim,phrase", [
    ("missing", "t10k-images-idx3-ubyte.gz", "is missing"),
    ("truncated", "train-images-idx3-ubyte.gz", "truncated"),
    ("not_gzip", "t10k-labels-idx1-ubyte.gz", "not a gzip file"),
    ("wrong_magic", "train-labels-idx1-ubyte.gz", "IDX magic number"),
    ("checksum", "t10k-labels-idx1-ubyte.gz", "SHA-256"),
])
def test_bad_data_file_is_named_in_one_line(tmp_path, data_root, kind, victim, phrase):
  manual = tmp_path / "manual"
  _manual_copy(data_root, manual, victim, kind)
  cfg = config_lib.get_config().data
  cfg.manual_dir = str(manual)
  cfg.tfds_dir = str(tmp_path / "fresh_tfds")  # Nothing prepared: tfds must build.
  with pytest.raises(DataError) as info:
    datasets.prepare(cfg)
  message = str(info.value)
  assert "\n" not in message and phrase in message
  assert str(manual / victim) in message
  assert not (tmp_path / "fresh_tfds" / "mnist").exists() or not any(
      (tmp_path / "fresh_tfds" / "mnist").rglob("*.tfrecord*"))


def test_bad_data_file_via_cli(tmp_path, data_root):
  manual = tmp_path / "manual"
  _manual_copy(data_root, manual, "train-labels-idx1-ubyte.gz", "checksum")
  proc = run_main("--config=experiments/seed_lstm.py", f"--workdir={tmp_path / 'w'}",
                  f"--config.data.manual_dir={manual}",
                  f"--config.data.tfds_dir={tmp_path / 'fresh_tfds'}")
  line = one_line_error(proc)
  assert "train-labels-idx1-ubyte.gz" in line and "SHA-256" in line


def test_no_files_and_no_network_explains_offline_use(tmp_path, monkeypatch):
  def unreachable(*args, **kwargs):
    raise OSError("network unreachable (test)")

  monkeypatch.setattr(socket, "create_connection", unreachable)
  monkeypatch.delenv(config_lib.MANUAL_DIR_ENV, raising=False)
  cfg = config_lib.get_config()
  cfg.data.name = "fashion_mnist"  # Not shipped (MNIST is: it needs no network).
  cfg.data.tfds_dir = str(tmp_path / "fresh_tfds")
  cfg = config_lib.resolve(cfg)
  assert cfg.data.manual_dir is None
  start = time.monotonic()
  with pytest.raises(DataError) as info:
    data.load_splits(cfg)
  assert time.monotonic() - start < 10
  message = str(info.value)
  assert "\n" not in message and "offline" in message
  assert "manual_dir" in message and config_lib.MANUAL_DIR_ENV in message


def test_empty_manual_dir_names_first_missing_file(tmp_path):
  (tmp_path / "manual").mkdir()
  cfg = config_lib.get_config().data
  cfg.manual_dir = str(tmp_path / "manual")
  cfg.tfds_dir = str(tmp_path / "fresh_tfds")
  with pytest.raises(DataError, match=r"idx\d-ubyte\.gz is missing"):
    datasets.prepare(cfg)


# ----------------------------------------------------------------------------------
# Invalid config values: ConfigError naming the field.
# ----------------------------------------------------------------------------------
# No booleans: ConfigDict turns them into 0 / 1 when a numeric field is copied, and the
# command line refuses them for numeric fields before the config is built.
_BAD_NUMBER = st.one_of(st.floats(max_value=0.0), st.sampled_from(
    [float("nan"), float("inf"), float("-inf")]), st.text(max_size=4))
_BAD_NON_NEGATIVE = st.one_of(st.floats(max_value=-1e-9), st.sampled_from(
    [float("nan"), float("inf"), float("-inf")]), st.text(max_size=4))
_BAD_POSITIVE_INT = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True),
                              st.text(max_size=4))
_BAD_NON_NEGATIVE_INT = st.one_of(st.integers(max_value=-1), st.floats(allow_nan=True),
                                  st.text(max_size=4))
_BAD_UNIT = st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9),
                      st.sampled_from([float("nan"), float("inf")]), st.text(max_size=4))


def _bad_choice(choices):
  return st.text(max_size=12).filter(lambda s: s not in choices)


# field -> (strategy of invalid values, other fields the check needs)
INVALID = {
    "num_epochs": (_BAD_POSITIVE_INT, {}),
    "batch_size": (_BAD_POSITIVE_INT, {}),
    "eval_batch_size": (_BAD_POSITIVE_INT, {}),
    "log_every_steps": (_BAD_POSITIVE_INT, {}),
    "keep_checkpoints": (_BAD_POSITIVE_INT, {}),
    "checkpoint_every_steps": (_BAD_POSITIVE_INT, {}),
    "early_stopping_patience": (_BAD_POSITIVE_INT, {}),
    "max_train_examples": (_BAD_POSITIVE_INT, {}),
    "max_eval_examples": (_BAD_POSITIVE_INT, {}),
    "seed": (st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32),
                       st.floats(), st.text(max_size=4)), {}),
    "eval_checkpoint": (_bad_choice(config_lib.EVAL_CHECKPOINTS), {}),
    "data.name": (_bad_choice(config_lib.DATASETS), {}),
    "data.sequence": (_bad_choice(config_lib.SEQUENCE_MODES), {}),
    "data.validation_size": (_BAD_NON_NEGATIVE_INT, {}),
    "data.augment_max_shift": (st.one_of(_BAD_NON_NEGATIVE_INT,
                                         st.integers(min_value=14)), {}),
    "data.resize": (_BAD_POSITIVE_INT, {}),
    "data.permutation": (_bad_choice(config_lib.PERMUTATIONS),
                         {"data.sequence": "permuted_pixels"}),
    "data.permutation_seed": (_BAD_NON_NEGATIVE_INT,
                              {"data.sequence": "permuted_pixels"}),
    "model.name": (_bad_choice(tuple(models.CELLS)), {}),
    "model.hidden_size": (_BAD_POSITIVE_INT, {}),
    "model.num_layers": (_BAD_POSITIVE_INT, {}),
    "model.unroll": (_BAD_POSITIVE_INT, {}),
    "model.num_classes": (st.one_of(_BAD_POSITIVE_INT, st.integers(1, 9)), {}),
    "model.dropout": (_BAD_UNIT, {}),
    "model.readout": (_bad_choice(config_lib.READOUTS), {}),
    # float16 is a listed dtype that is refused (it needs loss scaling).
    "model.dtype": (st.one_of(_bad_choice(config_checks.DTYPES), st.just("float16")),
                    {}),
    "model.remat": (st.one_of(st.integers(), st.floats(), st.text(max_size=4)), {}),
    "model.options.simple_rnn.activation": (_bad_choice(("tanh", "relu")),
                                            {"model.name": "simple_rnn"}),
    "model.options.irnn.identity_scale": (_BAD_NUMBER, {"model.name": "irnn"}),
    "model.options.indrnn.recurrent_max": (_BAD_NUMBER, {"model.name": "indrnn"}),
    "model.options.layernorm_lstm.recurrent_norm_init": (
        _BAD_NUMBER, {"model.name": "layernorm_lstm"}),
    "model.options.lstm.chrono_max_timescale": (
        st.one_of(st.integers(max_value=2), st.floats(), st.text(max_size=4)), {}),
    "model.options.layernorm_lstm.chrono_max_timescale": (
        st.one_of(st.integers(max_value=2), st.floats(), st.text(max_size=4)),
        {"model.name": "layernorm_lstm"}),
    "model.options.lru.state_size": (_BAD_POSITIVE_INT, {"model.name": "lru"}),
    "model.options.lru.max_phase": (_BAD_NUMBER, {"model.name": "lru"}),
    "model.options.lru.r_min": (_BAD_UNIT, {"model.name": "lru"}),
    "model.options.lru.r_max": (_BAD_UNIT, {"model.name": "lru"}),
    "model.options.lru.scan": (_bad_choice(("parallel", "sequential")),
                               {"model.name": "lru"}),
    "model.options.lru.mix": (_bad_choice(("glu", "mlp")), {"model.name": "lru"}),
    "optimizer.name": (_bad_choice(config_lib.OPTIMIZERS), {}),
    "optimizer.schedule": (_bad_choice(config_lib.SCHEDULES), {}),
    "optimizer.learning_rate": (_BAD_NUMBER, {}),
    "optimizer.warmup_epochs": (_BAD_NON_NEGATIVE, {}),
    "optimizer.weight_decay": (_BAD_NON_NEGATIVE, {"optimizer.name": "adamw"}),
    "optimizer.end_learning_rate_factor": (_BAD_NON_NEGATIVE, {}),
    "optimizer.momentum": (_BAD_UNIT, {}),
    "optimizer.label_smoothing": (_BAD_UNIT, {}),
    "optimizer.grad_clip_norm": (_BAD_NUMBER, {}),
    "optimizer.recurrent_lr_factor": (_BAD_NUMBER, {}),
    "optimizer.recurrent_weight_decay": (_BAD_NON_NEGATIVE, {"optimizer.name": "adamw"}),
    "optimizer.ema_decay": (_BAD_UNIT, {}),
    # "ema" is valid only with an EMA (optimizer.ema_decay > 0; 0 by default).
    "eval_params": (st.one_of(_bad_choice(config_checks.EVAL_PARAMS), st.just("ema")),
                    {}),
}


def _set(cfg, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  target = cfg
  for p in parents:
    target = target[p]
  with target.ignore_type():
    target[leaf] = value


@st.composite
def _invalid_field(draw):
  field = draw(st.sampled_from(sorted(INVALID)))
  strategy, context = INVALID[field]
  return field, draw(strategy), context


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_invalid_field())
def test_invalid_config_value_names_the_field(case):
  field, value, context = case
  cfg = config_lib.get_config()
  for key, good in context.items():
    _set(cfg, key, good)
  _set(cfg, field, value)
  with pytest.raises(ConfigError) as info:
    config_lib.resolve(cfg)
  message = str(info.value)
  assert field in message and "\n" not in message


def test_swept_fields_exist():
  def leaves(d, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from leaves(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}"

  assert set(INVALID) <= set(leaves(config_lib.get_config().to_dict()))
