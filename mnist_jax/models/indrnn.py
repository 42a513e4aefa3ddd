"""IndRNN: independently recurrent neurons (Li, Li, Cook, Zhu & Gao, 2018).

"Independently Recurrent Neural Network (IndRNN): Building A Longer and Deeper RNN",
CVPR 2018, arXiv:1803.04831.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models.base import Option, RecurrentCell, is_positive


class IndRNN(RecurrentCell):
  """IndRNN layer: [batch, time, features] -> [batch, time, hidden].

      h_t = relu(W_x x_t + b + u * h_{t-1}),   u: [hidden], element-wise product.

  Each unit sees only its own past, so the gradient through time of unit k is a
  product of u_k and ReLU slopes: bounding |u_k| bounds it, and units with u_k near 1
  keep memories over hundreds of steps. The paper clips u after each update to
  |u| <= 2^(1/T) (about 1.0009 at T = 784) and stacks several layers (6 on sequential
  MNIST, 96% permuted). Here the bound is applied in the forward pass, so the optimizer
  needs no hook; `recurrent_max=1.0` is that bound rounded for long sequences. u starts
  uniform in [0, 1], as in the paper's MNIST experiments.

  Per step the recurrence is an element-wise multiply instead of a [hidden, hidden]
  matmul, which makes long sequences cheap.

  Parameters: `input/kernel` [features, hidden], `input/bias` [hidden],
  `recurrent_kernel` [hidden] (the diagonal u; differs from the matrix of other cells).

  Attributes:
    recurrent_max: |u| is clipped to this in the forward pass (None: no clipping).
  """
  recurrent_max: float | None = 1.0

  num_gates = 1
  OPTIONS = {"recurrent_max": Option(
      1.0, "|u| is clipped to this in the forward pass.", is_positive,
      "a positive number")}

  def setup(self):
    # Same input projection as the base class; the recurrent weight is a vector.
    self.input = nn.Dense(self.hidden_size, kernel_init=nn.initializers.glorot_uniform(),
                          bias_init=nn.initializers.zeros, dtype=self.dtype,
                          name="input")
    self.recurrent_kernel = self.param(
        "recurrent_kernel", nn.initializers.uniform(scale=1.0), (self.hidden_size,))

  def recurrent_params(self):
    u = self.recurrent_kernel
    if self.recurrent_max is not None:
      u = jnp.clip(u, -self.recurrent_max, self.recurrent_max)
    return {"kernel": u}

  @nn.nowrap
  def recurrence(self, params, carry, projected):
    # u * h in float32 (u uncast): with u near 1 the unit remembers for ~1 / (1 - u)
    # steps, and bfloat16 rounds 0.999 to 1.0.
    h = jax.nn.relu(projected.astype(carry.dtype) + params["kernel"] * carry)
    return h, h.astype(projected.dtype)
