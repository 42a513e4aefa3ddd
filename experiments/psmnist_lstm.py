"""Permuted sequential MNIST: the LayerNorm LSTM(128) of smnist_lstm.py, permuted.

    python -m mnist_jax.main --config=experiments/psmnist_lstm.py --workdir=runs/psmnist_lstm

The permutation is `np.random.default_rng(0).permutation(784)` (data.permutation =
"random", data.permutation_seed = 0), saved as WORKDIR/permutation.npy.
Published: 88.0% test accuracy for a plain LSTM(128) on psMNIST (Arjovsky, Shah &
Bengio 2016), 95.4% for a batch-normalised LSTM (Cooijmans et al. 2017). Test
accuracy here: docs/results.md; the LRU (`psmnist_lru.py`) does better on
psMNIST.
"""

import os

from mnist_jax.config import from_experiment


def get_config():
  config = from_experiment(os.path.join(os.path.dirname(__file__), "smnist_lstm.py"))
  config.data.sequence = "permuted_pixels"
  config.data.permutation = "random"
  config.data.permutation_seed = 0
  config.num_epochs = 12  # Sized for a 2-hour budget on one CPU core.
  return config
