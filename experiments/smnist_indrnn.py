"""Sequential MNIST with a 2-layer IndRNN(128) (784 steps x 1 pixel).

    python -m mnist_jax.main --config=experiments/smnist_indrnn.py --workdir=runs/smnist_indrnn

IndRNN (Li et al., 2018, arXiv:1803.04831): h_t = relu(W x_t + b + u * h_{t-1}) with a
diagonal recurrence u clipped to |u| <= 1. The paper's model is deeper (6 layers with
batch normalisation between them: 99.0% sMNIST, 96.0% psMNIST); this one is sized for
about an hour on one CPU core.

Not a good recipe yet: without the normalisation between layers that the paper uses,
these stacked ReLU IndRNN layers learn slowly and stalled near 60% validation
accuracy (docs/results.md); a normalised or residual variant is the next thing
to try. For sMNIST models that train well on a CPU, see smnist_lru.py and
smnist_lstm.py.
"""

from mnist_jax.config import get_config as base_config


def get_config():
  config = base_config()
  config.num_epochs = 12
  config.batch_size = 50
  config.data.sequence = "pixels"
  config.data.standardize = True
  config.model.name = "indrnn"
  config.model.hidden_size = 128
  config.model.num_layers = 2
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 5e-4
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_epochs = 0.25
  config.optimizer.grad_clip_norm = 1.0
  config.checkpoint_every_steps = 200  # Long epochs: lose little on preemption.
  return config
