"""IRNN: a ReLU Elman network started at the identity (Le, Jaitly & Hinton, 2015).

"A Simple Way to Initialize Recurrent Networks of Rectified Linear Units",
arXiv:1504.00941.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models.base import Option, RecurrentCell, is_positive


class IRNN(RecurrentCell):
  """IRNN layer: [batch, time, features] -> [batch, time, hidden].

      h_t = relu(W_x x_t + b + W_h h_{t-1}),   W_h initialised to scale * I, b = 0.

  With W_h = I and ReLU, a state with no new input is copied unchanged from step to
  step, so at initialisation gradients neither vanish nor explode along the time axis.
  That is what lets a plain RNN learn pixel-by-pixel MNIST (784 steps). The paper uses
  scale 1 for the long-range tasks and a smaller one (e.g. 0.01) for language models.
  The input kernel keeps the shared Glorot init (the paper draws it from N(0, 0.001)).
  Train it with gradient clipping (`optimizer.grad_clip_norm`) as the paper does.

  Parameters: `input/kernel` [features, hidden], `input/bias` [hidden],
  `recurrent_kernel` [hidden, hidden].

  Attributes:
    identity_scale: W_h starts as identity_scale * I.
  """
  identity_scale: float = 1.0

  num_gates = 1
  OPTIONS = {"identity_scale": Option(
      1.0, "The recurrent kernel starts as this * identity.",
      is_positive, "a positive number")}

  def recurrent_kernel_init(self, key, shape, dtype=jnp.float32):
    del key
    return self.identity_scale * jnp.eye(*shape, dtype=dtype)

  @nn.nowrap
  def recurrence(self, params, carry, projected):
    dtype = projected.dtype  # Matmul in the compute dtype, state in float32 (base.py).
    z = projected + carry.astype(dtype) @ params["kernel"].astype(dtype)
    h = jax.nn.relu(z.astype(carry.dtype))
    return h, h.astype(dtype)
