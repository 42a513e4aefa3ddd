"""Long short-term memory (Hochreiter & Schmidhuber, 1997), with a forget gate."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models.base import RecurrentCell, fused_sigmoid_tanh


class LSTM(RecurrentCell):
  """LSTM layer: [batch, time, features] -> [batch, time, hidden].

  Gates, in this order along the last axis: input i, forget f, candidate g, output o.

      z = W_x x_t + b + W_h h_{t-1}            [batch, 4 * hidden]
      c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
      h_t = sigmoid(o) * tanh(c_t)

  The carry is (c, h). The forget-gate bias starts at 1 (Jozefowicz et al., 2015).
  """
  num_gates = 4

  def input_bias_init(self, key, shape, dtype=jnp.float32):
    del key
    hidden = shape[0] // 4
    return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)

  def initial_carry(self, batch_size, dtype=jnp.float32):
    zeros = jnp.zeros((batch_size, self.hidden_size), dtype)
    return zeros, zeros

  @nn.nowrap
  def recurrence(self, params, carry, projected):
    c, h = carry
    z = projected + h @ params["kernel"]
    c, h = _gates_and_update(z, c)
    return (c, h), h


@jax.checkpoint
def _gates_and_update(z, c):
  """New (c, h) from the pre-activations z [batch, 4 * hidden] and c [batch, hidden].

  Rematerialised: the backward pass keeps only z and c per step and recomputes the
  gates, instead of stacking every intermediate gate array across time (measured
  here: ~15-20% faster training for LSTM(100) rows and ~40% for 784-step LSTM(128)).
  """
  batch, hidden = c.shape
  # One tanh for all four gates: g is a tanh, i/f/o are sigmoids.
  gates = fused_sigmoid_tanh(z.reshape(batch, 4, hidden),
                             jnp.array([0, 0, 1, 0])[:, None])
  i, f, g, o = gates[:, 0], gates[:, 1], gates[:, 2], gates[:, 3]
  c = f * c + i * g
  return c, o * jnp.tanh(c)
