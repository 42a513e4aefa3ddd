"""Model registry: a recurrent cell is one file plus one line in `CELLS` below.

Each cell is a `RecurrentCell` (see `base.py` for the contract and parameter layout);
`SequenceClassifier` stacks them and reads out class logits. A cell's own settings are
declared beside its code (`OPTIONS`, see `base.Option`); the config exposes them as
`config.model.options.<name>.<option>` and `build_model` passes them to the cell.

`config.model.name` may instead be a "module:Class" import path of a RecurrentCell or
flax `nn.RNNCellBase` subclass, with its settings in `config.model.options.external`:
see `external.py`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mnist_jax.errors import ConfigError
from mnist_jax.models import external
from mnist_jax.models.base import HasOptions, Option, RecurrentCell
from mnist_jax.models.classifier import SequenceClassifier
from mnist_jax.models.gru import GRU
from mnist_jax.models.indrnn import IndRNN
from mnist_jax.models.irnn import IRNN
from mnist_jax.models.layernorm_lstm import LayerNormLSTM
from mnist_jax.models.lru import LRUBlock
from mnist_jax.models.lstm import LSTM
from mnist_jax.models.min_rnn import MinGRU, MinLSTM
from mnist_jax.models.simple_rnn import SimpleRNN

# Name (as in `config.model.name`) -> cell class.
CELLS: dict[str, type[nn.Module]] = {
    "simple_rnn": SimpleRNN,
    "lstm": LSTM,
    "layernorm_lstm": LayerNormLSTM,
    "gru": GRU,
    "irnn": IRNN,
    "indrnn": IndRNN,
    "lru": LRUBlock,  # Residual LRU block, not a RecurrentCell; same interface.
    "min_gru": MinGRU,
    "min_lstm": MinLSTM,
}

__all__ = ["CELLS", "HasOptions", "Option", "RecurrentCell", "SequenceClassifier",
           "build_model", "cell_layer", "check_model", "check_options",
           "complete_model", "compute_dtype", "fit_to_machine", "layer_class",
           "machine_error"]


def check_options(name: str, values: dict[str, Any], model_config=None) -> None:
  """Raises ConfigError naming the first invalid option of registered cell `name`;
  with `model_config`, also what this machine or the rest of the model refuses."""
  where = f"config.model.options.{name}"
  cell = CELLS[name]
  external.check_option_values(cell, values, where)
  if model_config is None:
    return
  values = {**{k: o.default for k, o in cell.OPTIONS.items()}, **values}
  problem = cell.machine_error(values) or cell.model_error(values, model_config)
  if problem:
    raise ConfigError(f"{where}: {problem}.")


def machine_error(model_config) -> str | None:
  """Why this machine cannot run the model `config.model` names, in one line (None: it
  can, or the cell does not say). Starts no JAX backend."""
  name = model_config.name
  if external.is_import_path(name) or name not in CELLS:
    return None
  cell = CELLS[name]
  values = {**{k: o.default for k, o in cell.OPTIONS.items()},
            **model_config.options[name].to_dict()}
  problem = cell.machine_error(values)
  return f"config.model.options.{name}: {problem}." if problem else None


def fit_to_machine(model_config) -> str | None:
  """A trained workdir's (unlocked) `config.model`, for this machine: `runtime` options
  it refuses (cuDNN on a CPU) go back to their defaults, which compute the same model.

  Returns:
    What was changed, for the log; None when nothing was.
  """
  problem = machine_error(model_config)
  if not problem:
    return None
  name = model_config.name
  values, changed = model_config.options[name], []
  for key, option in CELLS[name].OPTIONS.items():
    if option.runtime and values[key] != option.default:
      changed.append(f"{key}={values[key]!r} -> {option.default!r}")
      values[key] = option.default
  if not changed:  # Not a runtime option's doing: validation names the problem.
    return None
  why = problem.split(": ", 1)[1].split(";")[0]
  return (f"config.model.options.{name}: {', '.join(changed)} on this machine "
          f"({why}); the parameters are the same.")


def check_model(model_config, search_dirs: Sequence[str] = ()) -> None:
  """Raises ConfigError unless `config.model.name` names a cell that takes its options.

  Args:
    model_config: `config.model`.
    search_dirs: folders where an import-path cell's module may sit (experiment
      files' folders), for a config that `complete_model` has not seen yet.
  """
  name = model_config.name
  if external.is_import_path(name):
    external.check(model_config, search_dirs)
    return
  if name not in CELLS:
    raise ConfigError(f"config.model.name={name!r} is not valid; choose one of: "
                      f"{', '.join(sorted(CELLS))}, or give {external.EXPECTED}.")
  check_options(name, model_config.options[name].to_dict(), model_config)


def complete_model(model_config, search_dirs: Sequence[str]) -> None:
  """Resolve time (unlocked `config.model`): an import-path cell's module file goes to
  `model.cell_file` and its default settings into `model.options.external`."""
  if external.is_import_path(model_config.name):
    external.complete(model_config, search_dirs)


def cell_layer(model_config) -> tuple[type[HasOptions], tuple[tuple[str, Any], ...]]:
  """The layer class `config.model` names and its constructor options, (name, value)
  pairs (for a flax cell: the adapter, `flax_layer.FlaxCellLayer`)."""
  if external.is_import_path(model_config.name):
    return external.layer(model_config)
  options = model_config.options[model_config.name]
  return CELLS[model_config.name], tuple(sorted(options.items()))


def layer_class(model_config) -> type[HasOptions]:
  """The layer class, for what it declares (`RECURRENCE_PARAMS`, `OPTIONS`)."""
  return cell_layer(model_config)[0]


def build_model(model_config) -> SequenceClassifier:
  """Builds the classifier that `config.model` describes (already validated)."""
  cell, options = cell_layer(model_config)
  return SequenceClassifier(
      cell=cell,
      hidden_size=model_config.hidden_size,
      num_layers=model_config.num_layers,
      bidirectional=model_config.bidirectional,
      dropout=model_config.dropout,
      readout=model_config.readout,
      unroll=model_config.unroll,
      num_classes=model_config.num_classes,
      cell_options=options,
      dtype=compute_dtype(model_config.dtype),
      remat=model_config.remat,
  )


def compute_dtype(name: str) -> Any:
  """The layers' `dtype` for `config.model.dtype`: None for "float32" (compute in the
  parameters' dtype, as before the option existed), else that jnp dtype."""
  return None if name == "float32" else jnp.dtype(name)
