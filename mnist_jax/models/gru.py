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
    dtype = projected.dtype  # The compute dtype (see base.py); h stays float32.
    u = h.astype(dtype) @ params["kernel"].astype(dtype) + params["bias"].astype(dtype)
    h = _gated_update(projected, u, h)
    return h, h.astype(dtype)


def _gates(projected, u, hidden):
  rz = jax.nn.sigmoid(projected[:, :2 * hidden] + u[:, :2 * hidden])
  r, z = rz[:, :hidden], rz[:, hidden:]
  n = jnp.tanh(projected[:, 2 * hidden:] + r * u[:, 2 * hidden:])
  return r, z, n


@jax.custom_vjp
def _gated_update(projected, u, h):
  """h_t from W_x x_t + b_x, W_h h_{t-1} + b_h (both [batch, 3 * hidden]) and h_{t-1}.

  The backward pass is written out (`_update_bwd`), as for the LSTM: it keeps the
  step's inputs, recomputes the gates and emits both gradients in one element-wise
  pass each, instead of autodiff's slices, pads and adds.

  The gates and the update run in h's dtype (float32) even when projected and u come
  from bfloat16 matmuls: z near 1 is the unit's memory (as the LSTM's forget gate).
  """
  _, z, n = _gates(projected.astype(h.dtype), u.astype(h.dtype), h.shape[-1])
  return n + z * (h - n)  # == (1 - z) * n + z * h, one fewer multiply.


def _update_fwd(projected, u, h):
  return _gated_update(projected, u, h), (projected, u, h)


def _update_bwd(residuals, d_h_new):
  projected_in, u_in, h = residuals  # Their dtypes are the gradients' dtypes.
  projected, u = projected_in.astype(h.dtype), u_in.astype(h.dtype)
  hidden = h.shape[-1]
  r, z, n = _gates(projected, u, hidden)
  d_n_pre = d_h_new * (1.0 - z) * (1.0 - n * n)  # Into tanh's argument.
  d_r_pre = d_n_pre * u[:, 2 * hidden:] * r * (1.0 - r)
  d_z_pre = d_h_new * (h - n) * z * (1.0 - z)
  d_projected = jnp.concatenate([d_r_pre, d_z_pre, d_n_pre], axis=-1)
  d_u = jnp.concatenate([d_r_pre, d_z_pre, d_n_pre * r], axis=-1)
  return (d_projected.astype(projected_in.dtype), d_u.astype(u_in.dtype),
          d_h_new * z)


_gated_update.defvjp(_update_fwd, _update_bwd)
