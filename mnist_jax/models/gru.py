"""Gated recurrent unit (Cho et al., 2014), cuDNN/PyTorch/Keras `reset_after` variant."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models.base import RecurrentCell


class GRU(RecurrentCell):
  """GRU layer: [batch, time, features] -> [batch, time, hidden].

  Gates, in this order along the last axis: reset r, update z, candidate n.

      a = W_x x_t + b_x                     [batch, 3 * hidden]
      u = W_h h_{t-1} + b_h                 [batch, 3 * hidden]
      r = sigmoid(a_r + u_r);  z = sigmoid(a_z + u_z)
      n = tanh(a_n + r * u_n)
      h_t = (1 - z) * n + z * h_{t-1}

  The reset gate multiplies the recurrent product *after* the matmul, as PyTorch's
  `nn.GRU`, cuDNN and Keras (`reset_after=True`) do; Flax's `GRUCell` applies it before
  (r * h_{t-1}) @ W_hn, which needs a second matmul per step. The difference is why the
  recurrent bias b_h exists.
  """
  num_gates = 3
  uses_recurrent_bias = True

  @nn.nowrap
  def recurrence(self, params, carry, projected):
    h = carry
    u = h @ params["kernel"] + params["bias"]
    hidden = self.hidden_size
    rz = jax.nn.sigmoid(projected[:, :2 * hidden] + u[:, :2 * hidden])
    r, z = rz[:, :hidden], rz[:, hidden:]
    n = jnp.tanh(projected[:, 2 * hidden:] + r * u[:, 2 * hidden:])
    h = n + z * (h - n)  # == (1 - z) * n + z * h, one fewer multiply.
    return h, h
