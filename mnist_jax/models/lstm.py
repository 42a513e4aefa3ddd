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

  The carry is (c, h). The forget-gate bias starts at 1 (Jozefowicz et al., 2015), or,
  with `chrono_max_timescale=T`, by "chrono" initialisation (Tallec & Ollivier, 2018,
  "Can recurrent neural networks warp time?", ICLR): b_f = log(u), u ~ U[1, T - 1]
  per unit, and b_i = -b_f. Unit k then starts forgetting over ~u_k steps, so the
  layer begins with memories spread up to the sequence length T (784 for sMNIST).

  Attributes:
    chrono_max_timescale: T for chrono initialisation; None keeps forget bias 1.
  """
  chrono_max_timescale: int | None = None

  num_gates = 4

  @classmethod
  def config_options(cls, model_config) -> dict:
    """Extra constructor arguments read from `config.model` (see `build_model`)."""
    return {"chrono_max_timescale": model_config.lstm_chrono_max_timescale}

  def input_bias_init(self, key, shape, dtype=jnp.float32):
    hidden = shape[0] // 4
    bias = jnp.zeros(shape, dtype)
    if self.chrono_max_timescale is None:
      return bias.at[hidden:2 * hidden].set(1.0)
    timescales = jax.random.uniform(key, (hidden,), dtype, minval=1.0,
                                    maxval=self.chrono_max_timescale - 1.0)
    forget = jnp.log(timescales)
    return bias.at[:hidden].set(-forget).at[hidden:2 * hidden].set(forget)

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
