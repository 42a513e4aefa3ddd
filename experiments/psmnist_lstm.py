"""Permuted sequential MNIST: LSTM(128) on pixels under a fixed random permutation.

    python -m mnist_jax.main --config=experiments/psmnist_lstm.py --workdir=runs/psmnist_lstm

The permutation is `np.random.default_rng(0).permutation(784)` (data.permutation =
"random", data.permutation_seed = 0), saved as WORKDIR/permutation.npy.
Published: 88.0% test accuracy for LSTM(128) on psMNIST (Arjovsky, Shah & Bengio
2016). Not yet measured with this config here (784-step epochs take minutes on the
2-core CPU).
"""

from mnist_jax.config import get_config as base_config


def get_config():
  config = base_config()
  config.num_epochs = 30
  config.batch_size = 100
  config.data.sequence = "permuted_pixels"
  config.data.permutation = "random"
  config.data.permutation_seed = 0
  config.model.name = "lstm"
  config.model.hidden_size = 128
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.grad_clip_norm = 1.0
  config.checkpoint_every_steps = 100
  return config
