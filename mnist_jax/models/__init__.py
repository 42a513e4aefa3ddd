"""Model registry: a recurrent cell is one file plus one line in `CELLS` below.

Each cell is a `RecurrentCell` (see `base.py` for the contract and parameter layout);
`SequenceClassifier` stacks them and reads out class logits. A cell's own settings are
declared beside its code (`OPTIONS`, see `base.Option`); the config exposes them as
`config.model.options.<name>.<option>` and `build_model` passes them to the cell.
"""

from typing import Any

import flax.linen as nn

from mnist_jax.errors import ConfigError
from mnist_jax.models.base import HasOptions, Option, RecurrentCell
from mnist_jax.models.classifier import SequenceClassifier
from mnist_jax.models.gru import GRU
from mnist_jax.models.indrnn import IndRNN
from mnist_jax.models.irnn import IRNN
from mnist_jax.models.layernorm_lstm import LayerNormLSTM
from mnist_jax.models.lru import LRUBlock
from mnist_jax.models.lstm import LSTM
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
}

__all__ = ["CELLS", "HasOptions", "Option", "RecurrentCell", "SequenceClassifier",
           "build_model", "check_options"]


def check_options(name: str, values: dict[str, Any]) -> None:
  """Raises ConfigError naming the first invalid option of cell `name`."""
  cell: type[HasOptions] = CELLS[name]
  for key, option in cell.OPTIONS.items():
    value = values[key]
    if option.valid is not None and not option.valid(value):
      raise ConfigError(f"config.model.options.{name}.{key}={value!r} must be "
                        f"{option.requirement or 'valid'}.")
  problem = cell.options_error(values)
  if problem:
    raise ConfigError(f"config.model.options.{name}: {problem}.")


def build_model(model_config) -> SequenceClassifier:
  """Builds the classifier that `config.model` describes (already validated)."""
  options = model_config.options[model_config.name]
  return SequenceClassifier(
      cell=CELLS[model_config.name],
      hidden_size=model_config.hidden_size,
      num_layers=model_config.num_layers,
      bidirectional=model_config.bidirectional,
      dropout=model_config.dropout,
      readout=model_config.readout,
      unroll=model_config.unroll,
      num_classes=model_config.num_classes,
      cell_options=tuple(sorted(options.items())),
  )
