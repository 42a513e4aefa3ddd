"""Permuted sequential MNIST: LSTM(128) on pixels under a fixed random permutation.

    python -m mnist_jax.main --config=experiments/psmnist_lstm.py --workdir=runs/psmnist_lstm

The permutation is `np.random.default_rng(0).permutation(784)` (data.permutation =
"random", data.permutation_seed = 0), saved as WORKDIR/permutation.npy.
Published: 88.0% test accuracy for LSTM(128) on psMNIST (Arjovsky, Shah & Bengio
2016). Not yet measured with this config here (784-step epochs take minutes on the
2-core CPU).
"""

import os

from mnist_jax.config import from_experiment


def get_config():
  config = from_experiment(os.path.join(os.path.dirname(__file__), "smnist_lstm.py"))
  config.data.sequence = "permuted_pixels"
  config.data.permutation = "random"
  config.data.permutation_seed = 0
  return config
