"""Config: every key declared, typos caught, overrides work, bad values are one line."""

import pathlib

import pytest

from mnist_jax import config as config_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
REQUIRED = ["seed_rnn", "seed_lstm", "lstm", "gru", "smnist_lstm", "psmnist_lstm",
            "fashion_lstm", "smnist_lru", "psmnist_lru", "smnist_indrnn",
            "psmnist_indrnn"]


def load_experiment(name):
  return config_lib.load_experiment(str(EXPERIMENTS / f"{name}.py"))


@pytest.mark.parametrize("name", REQUIRED)
def test_required_experiments_resolve_and_document_themselves(name):
  module = load_experiment(name)
  config = config_lib.resolve(module.get_config())
  assert config.model.name and config.num_epochs > 0
  doc = module.__doc__
  assert f"--config=experiments/{name}.py" in doc  # The command to run it.
  assert "%" in doc  # Expected accuracy.


def test_every_experiment_file_resolves():
  for path in EXPERIMENTS.glob("*.py"):
    module = load_experiment(path.stem)
    if hasattr(module, "get_config"):
      config_lib.resolve(module.get_config())


@pytest.mark.parametrize("variant,base,changed", [
    ("psmnist_lstm", "smnist_lstm", {"num_epochs"}),
    ("psmnist_lru", "smnist_lru", {"num_epochs"}),
    ("psmnist_indrnn", "smnist_indrnn", set()),
    ("fashion_lstm", "lstm", set()),
])
def test_variants_differ_from_their_base_only_where_they_say(variant, base, changed):
  """Experiments built with config.from_experiment inherit the rest of their base."""
  a = config_lib.from_experiment(str(EXPERIMENTS / f"{variant}.py")).to_dict()
  b = config_lib.from_experiment(str(EXPERIMENTS / f"{base}.py")).to_dict()
  assert {k for k in a if a[k] != b[k]} == changed | {"data"}


def test_from_experiment_missing_file_is_config_error(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.from_experiment(str(tmp_path / "nope.py"))


def test_seed_recipes_are_the_notebooks():
  rnn = load_experiment("seed_rnn").get_config()
  lstm = load_experiment("seed_lstm").get_config()
  for cfg, name in ((rnn, "simple_rnn"), (lstm, "lstm")):
    assert cfg.model.name == name and cfg.model.hidden_size == 100
    assert cfg.model.num_layers == 1 and cfg.model.readout == "last"
    assert cfg.optimizer.name == "adam" and cfg.optimizer.learning_rate == 1e-3
    assert cfg.optimizer.schedule == "constant"
    assert cfg.batch_size == 100 and cfg.num_epochs == 10
    assert cfg.data.validation_size == 5000 and cfg.data.sequence == "rows"
  assert rnn.model.options.simple_rnn.activation == "relu"


def test_locked_config_rejects_typos():
  config = config_lib.resolve(config_lib.get_config())
  with pytest.raises(AttributeError):
    config.num_epoch = 3  # noqa: B018


def test_manual_dir_from_environment(monkeypatch, tmp_path):
  (tmp_path / "fashion_mnist").mkdir()
  monkeypatch.setenv(config_lib.MANUAL_DIR_ENV, str(tmp_path))
  cfg = config_lib.get_config()
  cfg.data.name = "fashion_mnist"
  assert config_lib.resolve(cfg).data.manual_dir == str(tmp_path / "fashion_mnist")
  cfg.data.name = "mnist"  # No mnist/ folder there: tfds would download as usual.
  assert config_lib.resolve(cfg).data.manual_dir is None


def test_json_round_trip_keeps_nesting():
  cfg = config_lib.get_config()
  cfg.model.hidden_size = 77
  cfg.data.sequence = "permuted_pixels"
  resolved = config_lib.resolve(cfg)
  text = workdir_lib.config_to_json(resolved)
  back = workdir_lib.config_from_json(text)
  assert back.to_dict() == resolved.to_dict()
  assert '"hidden_size": 77' in text and '"permutation_seed": 0' in text


@pytest.mark.parametrize("field,value,phrase", [
    ("model.name", "transformer", "choose one of: gru, "),
    ("data.sequence", "columns", "choose one of: rows, pixels, permuted_pixels"),
    ("data.name", "cifar10", "choose one of: mnist, fashion_mnist"),
    ("optimizer.name", "lamb", "choose one of"),
    ("optimizer.schedule", "step", "choose one of"),
    ("num_epochs", 0, "must be a positive integer"),
    ("batch_size", -5, "must be a positive integer"),
    ("optimizer.learning_rate", -1e-3, "must be a positive number"),
    ("model.dropout", 1.0, "must be in [0, 1)"),
    ("data.permutation_seed", 3, "only apply to data.sequence='permuted_pixels'"),
])
def test_invalid_values_name_the_field(field, value, phrase):
  cfg = config_lib.get_config()
  section, _, leaf = field.rpartition(".")
  (cfg[section] if section else cfg)[leaf] = value
  with pytest.raises(ConfigError) as err:
    config_lib.resolve(cfg)
  message = str(err.value)
  assert field in message and phrase in message and "\n" not in message
