"""Sequential MNIST: LSTM(128) reads one pixel per step (784 steps x 1 feature).

    python -m mnist_jax.main --config=experiments/smnist_lstm.py --workdir=runs/smnist_lstm

Published: 98.2% test accuracy for LSTM(128) on sMNIST (Arjovsky, Shah & Bengio 2016,
"Unitary Evolution Recurrent Neural Networks"). Not yet measured with this config
here: 784 sequential steps make an epoch take minutes on the 2-core CPU (see README
"Results" for what has been run).
"""

from mnist_jax.config import get_config as base_config


def get_config():
  config = base_config()
  config.num_epochs = 12  # ~2 h on one core of the 2-core CPU (108 ex/s).
  config.batch_size = 50
  config.data.sequence = "pixels"
  config.data.standardize = True
  config.model.name = "lstm"
  config.model.hidden_size = 128
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.grad_clip_norm = 1.0  # 784-step BPTT: clipping avoids blow-ups.
  config.checkpoint_every_steps = 200  # Long epochs: lose little on preemption.
  return config
