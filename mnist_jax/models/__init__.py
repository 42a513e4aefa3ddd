"""Model registry: a recurrent cell is one file plus one line in `CELLS` below.

Each cell is a `RecurrentCell` (see `base.py` for the contract and parameter layout);
`SequenceClassifier` stacks them and reads out class logits.
"""

import flax.linen as nn

from mnist_jax.models.base import RecurrentCell
from mnist_jax.models.classifier import SequenceClassifier
from mnist_jax.models.gru import GRU
from mnist_jax.models.indrnn import IndRNN
from mnist_jax.models.irnn import IRNN
from mnist_jax.models.layernorm_lstm import LayerNormLSTM
from mnist_jax.models.lru import LRUBlock
from mnist_jax.models.lstm import LSTM
from mnist_jax.models.simple_rnn import SimpleRNN

# Name (as in `config.model.name`) -> cell class. A cell that needs settings beyond
# hidden_size / unroll / activation defines a classmethod `config_options(model_config)`
# returning its extra constructor arguments (see irnn.py, lru.py).
CELLS: dict[str, type[nn.Module]] = {
    "simple_rnn": SimpleRNN,
    "lstm": LSTM,
    "layernorm_lstm": LayerNormLSTM,
    "gru": GRU,
    "irnn": IRNN,
    "indrnn": IndRNN,
    "lru": LRUBlock,  # Residual LRU block, not a RecurrentCell; same interface.
}

__all__ = ["CELLS", "RecurrentCell", "SequenceClassifier", "build_model"]


def build_model(model_config) -> SequenceClassifier:
  """Builds the classifier that `config.model` describes (already validated)."""
  cell = CELLS[model_config.name]
  options = getattr(cell, "config_options", None)
  return SequenceClassifier(
      cell=cell,
      hidden_size=model_config.hidden_size,
      num_layers=model_config.num_layers,
      bidirectional=model_config.bidirectional,
      dropout=model_config.dropout,
      readout=model_config.readout,
      activation=model_config.activation,
      unroll=model_config.unroll,
      num_classes=model_config.num_classes,
      cell_options=tuple(sorted(options(model_config).items())) if options else (),
  )
