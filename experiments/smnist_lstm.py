"""Sequential MNIST: a layer-normalised LSTM(128) reads one pixel per step (784 x 1).

    python -m mnist_jax.main --config=experiments/smnist_lstm.py --workdir=runs/smnist_lstm

Published: 98.2% test accuracy for a plain LSTM(128) on sMNIST (Arjovsky, Shah &
Bengio 2016) and 99.0% for a batch-normalised LSTM (Cooijmans et al. 2017), both after
far more updates than a 2-hour CPU budget allows. Here: an LSTM with layer norm on the
recurrent term and the cell (`layernorm_lstm`, Ba et al. 2016), chrono-initialised
gate biases (Tallec & Ollivier 2018), standardised pixels, batch 50, gradient clipping.
Target: >= 97% test accuracy within 2 hours on one CPU core. The plain LSTM(128) with
the same recipe (`--config.model.name=lstm`) learns far more slowly here. Test
accuracy, times and what was tried: docs/results.md.
"""

from mnist_jax.config import get_config as base_config


def get_config():
  config = base_config()
  config.num_epochs = 18  # Fits a 2-hour budget on one CPU core.
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
