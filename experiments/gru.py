"""Best row-wise GRU recipe: 2 x GRU(160), dropout, shift augmentation, AdamW cosine.

    python -m mnist_jax.main --config=experiments/gru.py --workdir=runs/gru

The experiments/lstm.py recipe with GRU cells, wider (160), more dropout (0.2), label
smoothing 0.1 and 30 epochs. Chosen on validation (seed 0) against GRU(128) with the
same changes and against the 20-epoch GRU(128) recipe; then, with those settings and
the epoch count fixed, the final fit trains on all 60,000 training images (no held-out
validation: the last checkpoint is evaluated). docs/results.md has both, with the test
accuracy of seeds 0-2. Target: >= 99.40% mean test accuracy.
"""

import os

from mnist_jax.config import from_experiment


def get_config():
  config = from_experiment(os.path.join(os.path.dirname(__file__), "lstm.py"))
  config.num_epochs = 30  # lstm.py: 20.
  config.model.name = "gru"
  config.model.hidden_size = 160  # lstm.py: 128.
  config.model.dropout = 0.2  # lstm.py: 0.1.
  config.optimizer.label_smoothing = 0.1  # lstm.py: 0.
  config.data.validation_size = 0  # Settings chosen on validation; now fit on all.
  return config
