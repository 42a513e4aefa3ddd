"""Sequential MNIST: a layer-normalised LSTM(128) reads one pixel per step (784 x 1).

    python -m mnist_jax.main --config=experiments/smnist_lstm.py --workdir=runs/smnist_lstm

Published: 98.2% test accuracy for a plain LSTM(128) on sMNIST (Arjovsky, Shah &
Bengio 2016) and 99.0% for a batch-normalised LSTM (Cooijmans et al. 2017), both after
far more updates than a 2-hour CPU budget allows. Here: an LSTM with layer norm on the
recurrent term and the cell (`layernorm_lstm`, Ba et al. 2016), chrono-initialised
gate biases (Tallec & Ollivier 2018), standardised pixels, batch 50, gradient clipping.
Measured on this 2-core CPU (2026-11-26, pinned to one core while another run used
the other): 98.32% test accuracy, macro F1 0.983, 18 epochs, 106 min start to report
(validation passed 97% after epoch 7). Target >= 97% within 2 hours: met. With 5
epochs (before the 2026-11-26 speed-ups, both cores): 94.45%, 42 min. The plain
LSTM(128) with the same recipe (`--config.model.name=lstm`) was at only 84.0%
validation accuracy after 6 of 10 epochs (58 min on one core), while the
layer-normalised one passed 80% training accuracy within its first epoch. See
experiments/RESULTS.md.
"""

from mnist_jax.config import get_config as base_config


def get_config():
  config = base_config()
  config.num_epochs = 18  # ~105 min at ~165 examples/s on one core.
  config.batch_size = 50
  config.data.sequence = "pixels"
  config.data.standardize = True
  config.model.name = "layernorm_lstm"  # "lstm" for the plain cell (see docstring).
  config.model.hidden_size = 128
  config.model.options.layernorm_lstm.chrono_max_timescale = 784  # Whole sequence.
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_epochs = 0.25
  config.optimizer.grad_clip_norm = 1.0  # 784-step BPTT: clipping avoids blow-ups.
  config.checkpoint_every_steps = 200  # Long epochs: lose little on preemption.
  return config
