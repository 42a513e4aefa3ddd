"""Model registry: a recurrent cell is one file plus one line in `CELLS` below.

Each cell is a `RecurrentCell` (see `base.py` for the contract and parameter layout);
`SequenceClassifier` stacks them and reads out class logits.
"""

from mnist_jax.models.base import RecurrentCell
from mnist_jax.models.classifier import SequenceClassifier
from mnist_jax.models.gru import GRU
from mnist_jax.models.lstm import LSTM
from mnist_jax.models.simple_rnn import SimpleRNN

# Name (as in `config.model.name`) -> cell class.
CELLS: dict[str, type[RecurrentCell]] = {
    "simple_rnn": SimpleRNN,
    "lstm": LSTM,
    "gru": GRU,
}

__all__ = ["CELLS", "RecurrentCell", "SequenceClassifier", "build_model"]


def build_model(model_config) -> SequenceClassifier:
  """Builds the classifier that `config.model` describes (already validated)."""
  return SequenceClassifier(
      cell=CELLS[model_config.name],
      hidden_size=model_config.hidden_size,
      num_layers=model_config.num_layers,
      bidirectional=model_config.bidirectional,
      dropout=model_config.dropout,
      readout=model_config.readout,
      activation=model_config.activation,
      unroll=model_config.unroll,
      num_classes=model_config.num_classes,
  )
