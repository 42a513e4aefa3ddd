"""LSTM with layer normalisation inside the recurrence (Ba, Kiros & Hinton, 2016)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models.base import Option, is_positive
from mnist_jax.models.lstm import (LSTM, gate_activations, gate_preactivation_grad,
                                   split_gates)

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

  # LSTM's own but "implementation": cuDNN runs only the plain LSTM's recurrence.
  OPTIONS = {
      **{k: v for k, v in LSTM.OPTIONS.items() if k != "implementation"},
      "recurrent_norm_init": Option(
          0.1, "Initial scale gamma_h of the normalised recurrent term.", is_positive,
          "a positive number")}

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
    dtype = projected.dtype  # The compute dtype of the matmul (see base.py).
    recurrent = h.astype(dtype) @ params["kernel"].astype(dtype)
    # The norm parameters stay float32: they scale the float32 element-wise part.
    c, h = _normalized_update(projected, recurrent, c,
                              params["recurrent_norm_scale"], params["cell_norm_scale"],
                              params["cell_norm_bias"])
    return (c, h), h.astype(dtype)


_EPSILON = 1e-5  # jax.nn.standardize's default.


def _standardize(x):
  """(x - mean) / sigma over the last axis, and 1 / sigma, as jax.nn.standardize.

  Written out (not jax.nn.standardize) because the hand-written backward needs 1 / sigma.
  """
  mean = jnp.mean(x, axis=-1, keepdims=True)
  variance = jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean
  inv_sigma = jax.lax.rsqrt(variance + _EPSILON)
  return (x - mean) * inv_sigma, inv_sigma


def _standardize_grad(d_normalized, normalized, inv_sigma):
  """Backpropagates through `_standardize`: (dn - mean(dn) - n mean(dn n)) / sigma."""
  return inv_sigma * (d_normalized - jnp.mean(d_normalized, axis=-1, keepdims=True)
                      - normalized * jnp.mean(d_normalized * normalized, axis=-1,
                                              keepdims=True))


def _forward(projected, recurrent, c, recurrent_scale, cell_scale, cell_bias):
  """Every intermediate of one step, for the forward and the backward pass.

  All in c's dtype (float32) whatever the matmuls' dtype: the layer norms' mean and
  variance (E[x^2] - E[x]^2 cancels badly in bfloat16), the gates and the state.
  """
  projected, recurrent = projected.astype(c.dtype), recurrent.astype(c.dtype)
  recurrent_normalized, recurrent_inv_sigma = _standardize(recurrent)
  gates = gate_activations(projected + recurrent_scale * recurrent_normalized,
                           c.shape[-1])
  i, f, g, o = split_gates(gates)
  c_new = f * c + i * g
  cell_normalized, cell_inv_sigma = _standardize(c_new)
  tanh_cell = jnp.tanh(cell_scale * cell_normalized + cell_bias)
  return (gates, c_new, o * tanh_cell, recurrent_normalized, recurrent_inv_sigma,
          cell_normalized, cell_inv_sigma, tanh_cell)


@jax.custom_vjp
def _normalized_update(projected, recurrent, c, recurrent_scale, cell_scale, cell_bias):
  """New (c, h) from W_x x + b, W_h h and c; shapes as in `LayerNormLSTM`.

  The backward pass is written out (`_update_bwd`), like the plain LSTM's: it keeps
  the step's inputs only, recomputes the rest, and backpropagates through the two
  layer norms by their closed form: faster than autodiff through the rematerialised
  step (docs/performance.md), same values (tests/test_models.py, in float64).
  """
  _, c_new, h, *_ = _forward(projected, recurrent, c, recurrent_scale, cell_scale,
                              cell_bias)
  return c_new, h


def _update_fwd(*args):
  return _normalized_update(*args), args


def _update_bwd(residuals, cotangents):
  projected, recurrent, c, recurrent_scale, cell_scale, cell_bias = residuals
  d_c_new, d_h = cotangents
  (gates, _, _, recurrent_normalized, recurrent_inv_sigma, cell_normalized,
   cell_inv_sigma, tanh_cell) = _forward(*residuals)
  i, f, g, o = split_gates(gates)
  d_cell_in = d_h * o * (1.0 - tanh_cell * tanh_cell)  # Into gamma_c * LN(c) + beta_c.
  d_c = d_c_new + _standardize_grad(d_cell_in * cell_scale, cell_normalized,
                                    cell_inv_sigma)
  d_gates = jnp.stack([d_c * g, d_c * c, d_c * i, d_h * tanh_cell], axis=1)
  d_z = gate_preactivation_grad(gates, d_gates)
  d_recurrent = _standardize_grad(d_z * recurrent_scale, recurrent_normalized,
                                  recurrent_inv_sigma)
  # Each gradient in its primal's dtype (the matmul outputs may be bfloat16).
  return (d_z.astype(projected.dtype), d_recurrent.astype(recurrent.dtype), d_c * f,
          jnp.sum(d_z * recurrent_normalized, axis=0),
          jnp.sum(d_cell_in * cell_normalized, axis=0),
          jnp.sum(d_cell_in, axis=0))


_normalized_update.defvjp(_update_fwd, _update_bwd)
