"""Fashion-MNIST, row-wise: 2 x LSTM(128), dropout, shift augmentation, AdamW cosine.

    python -m mnist_jax.main --config=experiments/fashion_lstm.py --workdir=runs/fashion_lstm

Same recipe as experiments/lstm.py on Fashion-MNIST (offline: MNIST_JAX_MANUAL_DIR
must hold fashion_mnist/). Target: >= 90.0% test accuracy. Measured here: see README
"Results".
"""

from mnist_jax.config import get_config as base_config


def get_config():
  config = base_config()
  config.num_epochs = 20
  config.batch_size = 128
  config.data.name = "fashion_mnist"
  config.data.augment_max_shift = 1
  config.model.name = "lstm"
  config.model.hidden_size = 128
  config.model.num_layers = 2
  config.model.dropout = 0.2
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 1e-2
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.grad_clip_norm = 1.0
  return config
