"""Sequential MNIST with a deep LRU: 4 residual LRU blocks (width 32, 64 complex states).

    python -m mnist_jax.main --config=experiments/smnist_lru.py --workdir=runs/smnist_lru

Linear Recurrent Unit (Orvieto et al., 2023, arXiv:2303.06349): LayerNorm -> LRU ->
GELU -> GLU -> residual, mean over time -> Dense. The paper's models are far wider; this
one is sized so that 30 epochs fit a 3-hour budget on a 2-core CPU. As in the S5/LRU
papers, the recurrence's parameters (eigenvalues, input matrix) get no weight decay.
Target: >= 99.0% test accuracy; measured: docs/results.md.
"""

from mnist_jax.config import get_config as base_config


def get_config():
  config = base_config()
  config.num_epochs = 30
  config.batch_size = 50
  config.data.sequence = "pixels"
  config.data.standardize = True
  config.model.name = "lru"
  config.model.hidden_size = 32
  config.model.num_layers = 4
  config.model.options.lru.state_size = 64
  config.model.options.lru.scan = "sequential"  # Faster than the parallel scan on CPU.
  config.model.readout = "mean"
  config.model.dropout = 0.1
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 0.01
  config.optimizer.recurrent_weight_decay = 0.0  # Decay would pull |lambda| off 1.
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_epochs = 0.5
  config.optimizer.grad_clip_norm = 1.0
  config.checkpoint_every_steps = 200  # Long epochs: lose little on preemption.
  return config
