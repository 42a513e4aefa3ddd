"""Elman recurrent network (Elman, 1990), as Keras' SimpleRNN."""

import flax.linen as nn
import jax

from mnist_jax.models.base import Option, RecurrentCell

_ACTIVATIONS = {"tanh": jax.numpy.tanh, "relu": jax.nn.relu}


class SimpleRNN(RecurrentCell):
  """Elman RNN layer: [batch, time, features] -> [batch, time, hidden].

      h_t = act(W_x x_t + b + W_h h_{t-1}),   act = tanh or relu (`activation`).

  Attributes:
    activation: "tanh" or "relu".
  """
  activation: str = "tanh"

  num_gates = 1
  OPTIONS = {"activation": Option("tanh", "The nonlinearity: tanh or relu.",
                                  lambda v: v in _ACTIVATIONS, "tanh or relu")}

  @nn.nowrap
  def recurrence(self, params, carry, projected):
    dtype = projected.dtype  # Matmul in the compute dtype, state in float32 (base.py).
    z = projected + carry.astype(dtype) @ params["kernel"].astype(dtype)
    h = _ACTIVATIONS[self.activation](z.astype(carry.dtype))
    return h, h.astype(dtype)
