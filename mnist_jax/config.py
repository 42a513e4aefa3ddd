"""The base config: every key the library reads, with its default, and validation.

Experiments in `experiments/` call `get_config()` and override a few fields. On the
command line any field can be overridden, e.g. `--config.num_epochs=1
--config.model.hidden_size=64`; the config is locked, so a misspelt key is an error.
In Python, `override(config, {"model.hidden_size": 64})` does the same.

A cell's own settings are declared beside the cell (`models/*.py`, `OPTIONS`) and
appear here as `model.options.<cell>.<option>`, e.g.
`--config.model.options.lru.state_size=64`; only the chosen cell's are used. An
import-path cell's ("module:Class", models/external.py) are in model.options.external.
"""

import importlib.util
import os
import types
from typing import Any

import ml_collections
from ml_collections import config_dict

from mnist_jax import config_checks
from mnist_jax.config_checks import NUMBER as _NUMBER
from mnist_jax.config_checks import OPTIMIZERS, SCHEDULES  # With their rule.
from mnist_jax.config_checks import choice as _choice
from mnist_jax.config_checks import positive as _positive
from mnist_jax.errors import ConfigError

# Environment variable naming a folder with the canonical files of each dataset
# (`<folder>/mnist/*.gz`, `<folder>/fashion_mnist/*.gz`).
MANUAL_DIR_ENV = "MNIST_JAX_MANUAL_DIR"

DATASETS = ("mnist", "fashion_mnist")
SEQUENCE_MODES = ("rows", "pixels", "permuted_pixels")
PERMUTATIONS = ("random", "bit_reversal")
READOUTS = ("last", "mean", "max")
EVAL_CHECKPOINTS = ("best", "latest")


def get_config() -> ml_collections.ConfigDict:
  """Returns the base config. Defaults are the seed notebook's LSTM recipe."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameters, dropout, batch order and augmentation.
  config.num_epochs = 10  # Passes over the training split.
  config.batch_size = 100  # Global training batch (summed over all devices).
  config.eval_batch_size = 1000  # Batch for validation/test; the last one is padded.
  config.data = _data_config()

  config.model = model = ml_collections.ConfigDict()
  # A cell in the registry (`mnist_jax.models.CELLS`: lstm, gru, ...) or the import
  # path "module:Class" of a RecurrentCell or flax.linen.RNNCellBase subclass, e.g.
  # "flax.linen:GRUCell"; its module on PYTHONPATH or beside the experiment file.
  model.name = "lstm"
  model.hidden_size = 100  # Units per direction in each recurrent layer.
  model.num_layers = 1  # Stacked recurrent layers.
  model.bidirectional = False  # Add a time-reversed layer beside each forward one.
  model.dropout = 0.0  # Dropout on each layer's output (between layers, before readout).
  model.readout = "last"  # last: final step; mean / max: pooled over time.
  model.unroll = 1  # Time steps per iteration of the compiled scan loop.
  model.num_classes = 10  # Output classes (both datasets have ten).
  # Compute dtype of matmuls and layer outputs: float32 or bfloat16 (float16 is refused:
  # it needs loss scaling, config_checks.py). Parameters, recurrent state, layer-norm
  # statistics and the loss stay float32 (docs/performance.md explains).
  model.dtype = "float32"
  model.remat = False  # Recompute each time step in the backward pass: less memory.
  # Each cell's own settings, declared (with their meaning) in its file's `OPTIONS`.
  # An import-path cell's go in options.external, empty here: the experiment file adds
  # them (`config.model.options.external.reset_gate = False`; str/int/float/bool
  # constructor arguments only), then the command line may override them.
  model.options = cell_options()
  # An import-path cell's module file; resolve records it so that a restored workdir
  # imports it again where the module is not importable by name.
  model.cell_file = config_dict.placeholder(str)

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = "adam"  # One of OPTIMIZERS.
  opt.learning_rate = 1e-3  # Peak learning rate.
  opt.schedule = "constant"  # One of SCHEDULES.
  opt.warmup_epochs = 0.0  # warmup_cosine: linear warmup length; onecycle: peak position.
  opt.end_learning_rate_factor = 0.0  # cosine schedules end at lr * this factor.
  opt.weight_decay = 0.0  # adamw only (decoupled).
  opt.momentum = 0.9  # sgd only (Nesterov).
  opt.grad_clip_norm = config_dict.placeholder(float)  # Clip by global norm if set.
  opt.label_smoothing = 0.0  # optax.smooth_labels alpha (0: one-hot targets).
  # The recurrence's own parameters (each cell names them: the LRU's eigenvalues and
  # input matrix, other cells' recurrent kernel) train with this learning-rate factor
  # and, with adamw, this weight decay (None: weight_decay), as in the S5/LRU papers.
  opt.recurrent_lr_factor = 1.0
  opt.recurrent_weight_decay = config_dict.placeholder(float)
  # Exponential moving average of the parameters, kept in the optimizer state (and so in
  # checkpoints) with this decay per step, e.g. 0.999; 0: none (mnist_jax/ema.py).
  opt.ema_decay = 0.0

  config.checkpoint_every_steps = config_dict.placeholder(int)  # Also mid-epoch if set.
  config.keep_checkpoints = 3  # The latest N checkpoints are kept, plus the best one.
  config.eval_checkpoint = "best"  # Which checkpoint the final test evaluation uses.
  # Parameters for validation (model selection), test evaluation and prediction: "ema"
  # or "raw". None: "ema" when optimizer.ema_decay > 0, else "raw".
  config.eval_params = config_dict.placeholder(str)
  config.early_stopping_patience = config_dict.placeholder(int)  # Epochs w/o val gain.
  config.log_every_steps = 100  # Training metrics and progress line period.
  config.max_train_examples = config_dict.placeholder(int)  # Subset for smoke tests.
  config.max_eval_examples = config_dict.placeholder(int)  # Subset for smoke tests.

  # Weights & Biases, beside metrics.jsonl and TensorBoard (mnist_jax/wandb_writer.py;
  # `pip install -e '.[wandb]'`). Off: wandb is never imported.
  config.wandb = wandb = ml_collections.ConfigDict()
  wandb.enabled = False  # Log metrics, the config and the test metrics to a W&B run.
  wandb.project = "mnist_jax"  # W&B project.
  wandb.entity = config_dict.placeholder(str)  # Team or user. None: W&B's default.
  # Runs shown together; a sweep sets it to its folder's name. None: no group.
  wandb.group = config_dict.placeholder(str)
  wandb.tags = ""  # Comma-separated, e.g. "baseline,rows".
  # "online", "offline" (WORKDIR/wandb/ only, no account; `wandb sync` uploads it) or
  # "disabled". None: $WANDB_MODE, else online.
  wandb.mode = config_dict.placeholder(str)
  return config


def _data_config() -> ml_collections.ConfigDict:
  """config.data: the dataset, its split and how images become sequences."""
  data = ml_collections.ConfigDict()
  data.name = "mnist"  # One of DATASETS (tfds names).
  # Folder holding the dataset's four canonical .gz files. None: $MNIST_JAX_MANUAL_DIR/
  # <data.name> when that variable is set, else the MNIST files shipped with the
  # package (mnist_jax/dataset_files/), else tfds downloads as usual.
  data.manual_dir = config_dict.placeholder(str)
  data.tfds_dir = config_dict.placeholder(str)  # tfds data_dir. None: tfds' default.
  data.validation_size = 5000  # Held out from the head of tfds' train split.
  data.sequence = "rows"  # rows: 28 x 28; pixels: 784 x 1; permuted_pixels: 784 x 1.
  # permuted_pixels only: "random" (from permutation_seed) or "bit_reversal".
  data.permutation = config_dict.placeholder(str)
  data.permutation_seed = config_dict.placeholder(int)  # "random" only; default 0.
  data.standardize = False  # Subtract the train mean, divide by the std (after /255).
  data.resize = config_dict.placeholder(int)  # Resize images to N x N before sequencing.
  data.augment_max_shift = 0  # Random translation by up to this many pixels (train).
  return data


def cell_options() -> ml_collections.ConfigDict:
  """{cell name: {option: default}} for every registered cell (`models.CELLS`)."""
  from mnist_jax import models
  options = ml_collections.ConfigDict()
  for name, cell in models.CELLS.items():
    options[name] = ml_collections.ConfigDict({
        key: (config_dict.placeholder(option.value_type()) if option.default is None
              else option.default)
        for key, option in cell.OPTIONS.items()})
  options[models.external.OPTIONS_KEY] = ml_collections.ConfigDict()
  return options


def override(config: ml_collections.ConfigDict,
             values: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields in place, as `--config.a.b=v` does: `{"a.b": v}`.

  Raises:
    ConfigError: a key names no field of the config.
  """
  for dotted, value in values.items():
    *parents, leaf = dotted.split(".")
    target = config
    try:
      for part in parents:
        target = target[part]
      if leaf not in target:
        raise KeyError(leaf)
    except (KeyError, TypeError):
      raise ConfigError(f"config has no field {dotted!r}.") from None
    target[leaf] = value
  return config


def from_experiment(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of another experiment file, for experiments that vary one.

  Config files are loaded by path (`--config=experiments/x.py`), not as a package, so
  they cannot import each other; `experiments/psmnist_lru.py` starts from its sibling
  with `from_experiment(os.path.join(os.path.dirname(__file__), "smnist_lru.py"))`.

  Args:
    path: the config file.
  """
  return load_experiment(path).get_config()


# Folders of the experiment files `load_experiment` loaded, the latest first: a cell
# module named in model.name ("my_cells:MyCell") may sit beside its experiment file.
_EXPERIMENT_DIRS: list[str] = []


def experiment_dirs() -> list[str]:
  """Where an import-path cell's module is looked for when it is not importable by
  name: the --config file's folder, then those of the files `load_experiment` read."""
  from absl import flags
  from ml_collections import config_flags
  try:  # mnist-jax and mnist-jax-sweep load --config with config_flags, not here.
    flag_dirs = [os.path.dirname(os.path.abspath(config_flags.get_config_filename(
        flags.FLAGS["config"]).split(":")[0]))]
  except (KeyError, TypeError, flags.Error):  # No such flag or not parsed: a library.
    flag_dirs = []
  return list(dict.fromkeys(flag_dirs + _EXPERIMENT_DIRS))


def load_experiment(path: str) -> types.ModuleType:
  """The experiment config file at `path`, loaded as a module (`get_config`, and
  `get_sweep` where it has one)."""
  if not os.path.isfile(path):
    raise ConfigError(f"experiment config file {path} does not exist.")
  folder = os.path.dirname(os.path.abspath(path))
  _EXPERIMENT_DIRS[:] = [folder] + [d for d in _EXPERIMENT_DIRS if d != folder]
  module_name = "_mnist_jax_experiment_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills defaults that depend on other fields or the environment, then validates.

  Args:
    config: a config from `get_config()` (possibly overridden).

  Returns:
    A new, locked config that `validate` accepts.

  Raises:
    ConfigError: if any field is invalid.
  """
  from mnist_jax import models  # Local import: models know nothing of the config.
  config = config_dict.ConfigDict(config.to_dict())  # Copy: never mutate the caller's.
  data = config.data
  if data.manual_dir is None and os.environ.get(MANUAL_DIR_ENV):
    candidate = os.path.join(os.environ[MANUAL_DIR_ENV], data.name)
    if os.path.isdir(candidate):
      data.manual_dir = os.path.abspath(candidate)
  if data.manual_dir is not None:
    data.manual_dir = os.path.abspath(os.path.expanduser(data.manual_dir))
  if data.tfds_dir is not None:
    data.tfds_dir = os.path.abspath(os.path.expanduser(data.tfds_dir))
  if data.sequence == "permuted_pixels":
    if data.permutation is None:
      data.permutation = "random"
    if data.permutation == "random" and data.permutation_seed is None:
      data.permutation_seed = 0
  models.complete_model(config.model, experiment_dirs())
  if config.eval_params is None:
    config.eval_params = config_checks.default_eval_params(config)
  validate(config)
  config.lock()
  return config


def _dotted_keys(values: dict, prefix: str = "") -> set[str]:
  keys = set()
  for key, value in values.items():
    keys.add(prefix + key)
    if isinstance(value, dict):
      keys |= _dotted_keys(value, f"{prefix}{key}.")
  return keys


# Keys of `config.model` before cells declared their own options (workdirs written
# then still load: `workdir.py` moves them): old key -> the cells whose option it
# set, and that option's name.
LEGACY_MODEL_KEYS = {
    "activation": (("simple_rnn",), "activation"),
    "irnn_scale": (("irnn",), "identity_scale"),
    "lstm_chrono_max_timescale": (("lstm", "layernorm_lstm"), "chrono_max_timescale"),
    **{f"lru_{key}": (("lru",), key)
       for key in ("state_size", "r_min", "r_max", "max_phase", "scan", "mix")},
}


def _check_known_keys(config: ml_collections.ConfigDict) -> None:
  """An experiment file can add keys to the unlocked base config: refuse them."""
  from mnist_jax.models import external  # Its keys are the experiment file's choice.
  known = _dotted_keys(get_config().to_dict())
  unknown = sorted(key for key in _dotted_keys(config.to_dict()) - known
                   if not key.startswith(f"model.options.{external.OPTIONS_KEY}."))
  if unknown:
    legacy = [k for k in unknown if k.split(".")[-1] in LEGACY_MODEL_KEYS]
    hint = (" (cell settings now live in model.options.<cell>, e.g. "
            "model.options.lstm.chrono_max_timescale)" if legacy else "")
    raise ConfigError(f"config.{unknown[0]} is not a config field{hint}; see "
                      f"mnist_jax/config.py for the fields.")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field before any work starts.

  Raises:
    ConfigError: naming the first invalid field and what would be valid.
  """
  _check_known_keys(config)
  _validate_run(config)
  _validate_data(config.data)
  _validate_model(config.model, config.data.name)
  config_checks.validate_optimizer(config.optimizer, config.num_epochs)
  config_checks.validate_numerics(config)  # dtype, remat, EMA, eval_params.
  from mnist_jax import wandb_writer  # Does not import wandb.
  wandb_writer.validate(config.wandb)


def _validate_run(config: ml_collections.ConfigDict) -> None:
  _positive(config.num_epochs, "num_epochs")
  _positive(config.batch_size, "batch_size")
  _positive(config.eval_batch_size, "eval_batch_size")
  _positive(config.log_every_steps, "log_every_steps")
  _positive(config.keep_checkpoints, "keep_checkpoints")
  # NumPy's batch order needs seed >= 0; jax.random.PRNGKey keeps only 32 bits.
  if (not isinstance(config.seed, int) or isinstance(config.seed, bool)
      or not 0 <= config.seed < 2**32):
    raise ConfigError(f"config.seed={config.seed!r} must be an integer in "
                      f"[0, 2**32).")
  for name in ("checkpoint_every_steps", "early_stopping_patience",
               "max_train_examples", "max_eval_examples"):
    if config[name] is not None:
      _positive(config[name], name)
  _choice(config.eval_checkpoint, "eval_checkpoint", EVAL_CHECKPOINTS)


def _validate_data(data: ml_collections.ConfigDict) -> None:
  _choice(data.name, "data.name", DATASETS)
  _choice(data.sequence, "data.sequence", SEQUENCE_MODES)
  _positive(data.validation_size, "data.validation_size", allow_zero=True)
  _positive(data.augment_max_shift, "data.augment_max_shift", allow_zero=True)
  if data.augment_max_shift > 13:
    raise ConfigError("config.data.augment_max_shift must be at most 13 pixels.")
  if data.resize is not None:
    _positive(data.resize, "data.resize")
  if data.sequence == "permuted_pixels":
    _choice(data.permutation, "data.permutation", PERMUTATIONS)
    if data.permutation_seed is not None:
      _positive(data.permutation_seed, "data.permutation_seed", allow_zero=True)
    if data.permutation == "bit_reversal" and data.permutation_seed is not None:
      raise ConfigError("config.data.permutation_seed is only used by "
                        "data.permutation='random'; unset it for bit_reversal.")
    if data.permutation == "bit_reversal" and data.resize is not None:
      raise ConfigError("data.permutation='bit_reversal' needs the 28 x 28 images; "
                        "unset data.resize.")
  else:
    for key in ("permutation", "permutation_seed"):
      if data[key] is not None:
        raise ConfigError(
            f"config.data.{key}={data[key]!r} is set, but it and the other "
            f"permutation options only apply to data.sequence='permuted_pixels', "
            f"not {data.sequence!r}; unset it.")
  if data.manual_dir is not None and not os.path.isdir(data.manual_dir):
    raise ConfigError(f"config.data.manual_dir={data.manual_dir!r} is not a folder; "
                      f"point it at the folder holding the dataset's four .gz files.")


def _validate_model(model: ml_collections.ConfigDict, dataset: str) -> None:
  from mnist_jax import models  # Local import: models know nothing of the config.
  models.check_model(model, experiment_dirs())  # The name, then the cell's options.
  _positive(model.hidden_size, "model.hidden_size")
  _positive(model.num_layers, "model.num_layers")
  _positive(model.unroll, "model.unroll")
  _positive(model.num_classes, "model.num_classes")
  if model.num_classes < 10:  # Both DATASETS have labels 0..9.
    raise ConfigError(f"config.model.num_classes={model.num_classes} is smaller than "
                      f"the 10 classes of {dataset}.")
  if not isinstance(model.dropout, _NUMBER) or not 0.0 <= model.dropout < 1.0:
    raise ConfigError(f"config.model.dropout={model.dropout!r} must be in [0, 1).")
  _choice(model.readout, "model.readout", READOUTS)
