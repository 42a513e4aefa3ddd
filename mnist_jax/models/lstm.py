"""Long short-term memory (Hochreiter & Schmidhuber, 1997), with a forget gate."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.models import cudnn_lstm
from mnist_jax.models.base import (Option, RecurrentCell, fused_sigmoid_tanh,
                                   is_positive_int)

IMPLEMENTATIONS = ("scan", "cudnn")


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
    implementation: "scan" (`RecurrentCell.__call__`, any backend) or "cudnn" (cuDNN's
      fused LSTM on a CUDA GPU, same parameters: `cudnn_lstm.py`).
  """
  chrono_max_timescale: int | None = None
  implementation: str = "scan"

  num_gates = 4
  OPTIONS = {
      "chrono_max_timescale": Option(
          None, "Chrono init of the forget/input biases for memories up to this many "
          "steps (e.g. 784 for pixel sequences); None: forget bias 1.",
          lambda v: v is None or (is_positive_int(v) and v >= 3),
          "an integer of at least 3 (the longest memory in steps), or None", int),
      "implementation": Option(
          "scan", "How the layer runs: 'scan' (jax.lax.scan, any backend) or 'cudnn' "
          "(cuDNN's LSTM via jax.experimental.rnn, CUDA GPUs only; float32, no "
          "remat). Same parameters: a workdir trained with one runs with the other.",
          lambda v: v in IMPLEMENTATIONS, "'scan' or 'cudnn'", runtime=True),
  }

  @classmethod
  def model_error(cls, values, model):
    if values.get("implementation") != "cudnn":
      return None
    return cudnn_lstm.config_error(model)

  @classmethod
  def machine_error(cls, values):
    if values.get("implementation") != "cudnn":
      return None
    return cudnn_lstm.machine_error()

  def __call__(self, inputs, reverse=False):
    """[batch, time, features] -> [batch, time, hidden], by `implementation`."""
    if self.implementation != "cudnn":
      return super().__call__(inputs, reverse)
    if type(self).recurrence is not LSTM.recurrence:  # cuDNN knows only this one.
      raise ValueError(f"{type(self).__name__} changes the LSTM recurrence; cuDNN runs "
                       f"the plain LSTM only: use implementation='scan'.")
    self.input(inputs[:, :0])  # Creates input/kernel and input/bias, as the scan does.
    dense = self.input.variables["params"]
    return cudnn_lstm.lstm_layer(inputs, dense["kernel"], dense["bias"],
                                 self.recurrent_kernel, reverse)

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
    dtype = projected.dtype  # The compute dtype: z comes out of the matmul in it.
    z = projected + h.astype(dtype) @ params["kernel"].astype(dtype)
    c, h = _gates_and_update(z, c)  # In the carry's float32; see base.py.
    return (c, h), h.astype(dtype)


# The gate nonlinearities along the [batch, 4, hidden] view of z: tanh for the
# candidate g, sigmoid for i, f and o.
_TANH_GATES = np.array([False, False, True, False])[:, None]


def gate_activations(z: jax.Array, hidden: int) -> jax.Array:
  """Gate activations [batch, 4, hidden] (i, f, g, o) from z [batch, 4 * hidden]."""
  return fused_sigmoid_tanh(z.reshape(z.shape[0], 4, hidden), _TANH_GATES)


def gate_preactivation_grad(gates: jax.Array, d_gates: jax.Array) -> jax.Array:
  """dz [batch, 4 * hidden] from d_gates [batch, 4, hidden], through `gate_activations`.

  sigmoid' = s (1 - s) and tanh' = 1 - t^2, both from the activations themselves.
  """
  slope = jnp.where(_TANH_GATES, 1.0 - gates * gates, gates * (1.0 - gates))
  return (d_gates * slope).reshape(gates.shape[0], -1)


@jax.custom_vjp
def _gates_and_update(z, c):
  """New (c, h) from the pre-activations z [batch, 4 * hidden] and c [batch, hidden].

  The backward pass is written out (`_update_bwd`): it keeps only z and c per step,
  recomputes the gates, and emits dz in one element-wise pass. Autodiff of the same
  arithmetic (even rematerialised) splits, pads and re-adds the four gate slices,
  which made the layer gradient markedly slower (docs/performance.md).

  z may be in a lower compute dtype than c (bfloat16 against float32): the gates and
  the update run in c's dtype, since 1 - f decides how long the cell remembers and
  bfloat16 resolves it only to 2^-8 near f = 1. z stays the residual, in its own
  dtype, which is what halves the per-step memory.
  """
  i, f, g, o = split_gates(gate_activations(z.astype(c.dtype), c.shape[-1]))
  c = f * c + i * g
  return c, o * jnp.tanh(c)


def split_gates(gates):
  """i, f, g, o [batch, hidden] from the [batch, 4, hidden] activations."""
  return gates[:, 0], gates[:, 1], gates[:, 2], gates[:, 3]


def _update_fwd(z, c):
  return _gates_and_update(z, c), (z, c)


def _update_bwd(residuals, cotangents):
  z, c = residuals
  d_c_new, d_h = cotangents
  gates = gate_activations(z.astype(c.dtype), c.shape[-1])
  i, f, g, o = split_gates(gates)
  tanh_c = jnp.tanh(f * c + i * g)
  d_c = d_c_new + d_h * o * (1.0 - tanh_c * tanh_c)  # Total gradient into c_t.
  d_gates = jnp.stack([d_c * g, d_c * c, d_c * i, d_h * tanh_c], axis=1)
  # Each gradient in its primal's dtype, as custom_vjp requires.
  return gate_preactivation_grad(gates, d_gates).astype(z.dtype), d_c * f


_gates_and_update.defvjp(_update_fwd, _update_bwd)
