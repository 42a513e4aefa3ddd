"""Permuted sequential MNIST with the 2-layer IndRNN(128) of smnist_indrnn.py.

    python -m mnist_jax.main --config=experiments/psmnist_indrnn.py --workdir=runs/psmnist_indrnn

The permutation is `np.random.default_rng(0).permutation(784)` (data.permutation =
"random", data.permutation_seed = 0), saved as WORKDIR/permutation.npy.
Published: 96.0% test accuracy on psMNIST for a 6-layer IndRNN with batch
normalisation (Li et al., 2018). Not measured with this config: the sMNIST run of
the same model (smnist_indrnn.py) was stopped at ~60% validation accuracy, so this
2-layer, unnormalised IndRNN is not expected to do well here either (< 60%).
"""

import os

from mnist_jax.config import from_experiment


def get_config():
  config = from_experiment(os.path.join(os.path.dirname(__file__), "smnist_indrnn.py"))
  config.data.sequence = "permuted_pixels"
  config.data.permutation = "random"
  config.data.permutation_seed = 0
  return config
