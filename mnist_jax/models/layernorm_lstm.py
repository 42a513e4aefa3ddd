"""LSTM with layer normalisation inside the recurrence (Ba, Kiros & Hinton, 2016)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models.base import fused_sigmoid_tanh
from mnist_jax.models.lstm import LSTM

class LayerNormLSTM(LSTM):
  """Layer-normalised LSTM layer: [batch, time, features] -> [batch, time, hidden].

      z = W_x x_t + b + gamma_h * LN(W_h h_{t-1})        [batch, 4 * hidden]
      c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
      h_t = sigmoid(o) * tanh(gamma_c * LN(c_t) + beta_c)

  Gates i, f, g, o as in `LSTM` (same initialisers, chrono init included). Normalising
  the recurrent term keeps each step's pre-activations at a fixed scale however the
  hidden state drifts over 784 steps, which is what lets normalised LSTMs learn
  sequential MNIST in a fraction of the updates (Cooijmans et al., 2017, "Recurrent
  Batch Normalization", report the same for batch statistics). The input term is not
  normalised: with one pixel per step, W_x x_t is a rank-1 vector and its layer norm
  would keep only the pixel's sign. gamma_h starts at 0.1, as in Cooijmans et al., so
  that gates do not start saturated.

  Parameters: those of `LSTM`, plus `recurrent_norm_scale` [4 * hidden],
  `cell_norm_scale` and `cell_norm_bias` [hidden].
  """
  recurrent_norm_init: float = 0.1

  def setup(self):
    super().setup()
    gates = self.num_gates * self.hidden_size
    self.recurrent_norm_scale = self.param(
        "recurrent_norm_scale", nn.initializers.constant(self.recurrent_norm_init),
        (gates,))
    self.cell_norm_scale = self.param("cell_norm_scale", nn.initializers.ones,
                                      (self.hidden_size,))
    self.cell_norm_bias = self.param("cell_norm_bias", nn.initializers.zeros,
                                     (self.hidden_size,))

  def recurrent_params(self):
    return {"kernel": self.recurrent_kernel,
            "recurrent_norm_scale": self.recurrent_norm_scale,
            "cell_norm_scale": self.cell_norm_scale,
            "cell_norm_bias": self.cell_norm_bias}

  @nn.nowrap
  def recurrence(self, params, carry, projected):
    c, h = carry
    c, h = _normalized_update(projected, h @ params["kernel"], c,
                              params["recurrent_norm_scale"], params["cell_norm_scale"],
                              params["cell_norm_bias"])
    return (c, h), h


@jax.checkpoint
def _normalized_update(projected, recurrent, c, recurrent_scale, cell_scale, cell_bias):
  """New (c, h); rematerialised in the backward pass like the plain LSTM's gates."""
  batch, hidden = c.shape
  z = projected + recurrent_scale * jax.nn.standardize(recurrent, axis=-1)
  gates = fused_sigmoid_tanh(z.reshape(batch, 4, hidden),
                             jnp.array([0, 0, 1, 0])[:, None])
  i, f, g, o = gates[:, 0], gates[:, 1], gates[:, 2], gates[:, 3]
  c = f * c + i * g
  return c, o * jnp.tanh(cell_scale * jax.nn.standardize(c, axis=-1) + cell_bias)
