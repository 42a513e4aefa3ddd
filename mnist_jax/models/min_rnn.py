"""minGRU and minLSTM (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, 2024).

"Were RNNs All We Needed?", arXiv:2410.01201.

Both drop the previous state from the gates: every gate reads x_t only, so the input
projection is the only matmul and the update is linear in the state,

    h_t = a_t * h_{t-1} + b_t,        a_t, b_t: [batch, hidden], from x_t alone.

A linear recurrence can run step by step (`jax.lax.scan`, through `RecurrentCell`) or
as a parallel prefix scan over time (`jax.lax.associative_scan`, O(log T) depth): the
`mode` option chooses; both give the same parameters and, to float rounding, the same
outputs and gradients (tests/test_models.py, over 784 steps).

The parallel scan composes the affine maps h -> a_t h + b_t in linear space. The paper
works in log space ("parallel_scan_log") because its closed form divides by the running
product of the a_t, which underflows within a few hundred steps; composing pairs needs
no division, and with a_t, b_t > 0 it only adds positive terms. Over 784 steps in
float32 it matches a float64 sequential reference as closely as `lax.scan` does, where
the paper's cumsum / logcumsumexp form lost about three digits and pairs of logs
(logaddexp per combine) ran at half the speed. The paper's g keeps h positive, which
its log form needs; it stays here because it is part of the cells' definition.

h_0 = 0, as for every cell of the contract: the paper takes h_0 as an input and leaves
its value to the caller, and with h_0 = 0 each h_t is a positive sum of b_s terms.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models.base import Option, RecurrentCell

Array = jax.Array

MODES = ("sequential", "parallel")


def g(x: Array) -> Array:
  """The paper's candidate activation: x + 0.5 for x >= 0, else sigmoid(x); always > 0.

  Continuous at 0 (both pieces give 0.5), and linear above it, so h~ is not squashed.
  """
  return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def compose(earlier: tuple[Array, Array],
            later: tuple[Array, Array]) -> tuple[Array, Array]:
  """The map h -> a h + b of `earlier` followed by that of `later`; associative."""
  a1, b1 = earlier
  a2, b2 = later
  return a1 * a2, a2 * b1 + b2


class _MinimalRNN(RecurrentCell):
  """Shared by minGRU and minLSTM: gates from x_t only, linear update, two modes.

  Subclasses set `num_gates` and write `coefficients`.
  """
  mode: str = "sequential"

  uses_recurrent_kernel = False
  OPTIONS = {"mode": Option(
      "sequential", "sequential: lax.scan over time; parallel: associative scan over "
      "time (O(log T) depth, more memory; same outputs).", lambda v: v in MODES,
      " or ".join(MODES))}

  @nn.nowrap
  def coefficients(self, projected: Array) -> tuple[Array, Array]:
    """(a_t, b_t), each [..., hidden], from W_x x_t + b [..., gates * hidden]."""
    raise NotImplementedError

  @nn.nowrap
  def recurrence(self, params, carry, projected):
    del params  # No recurrent weights: the state enters only through a_t * h_{t-1}.
    # a_t, b_t in the carry's float32 (see base.py): a_t near 1 is the memory, and
    # bfloat16 rounds 0.999 to 1.0. Only the input projection ran in the compute dtype.
    a, b = self.coefficients(projected.astype(carry.dtype))
    h = a * carry + b
    return h, h.astype(projected.dtype)

  def __call__(self, inputs: Array, reverse: bool = False) -> Array:
    """Runs the cell over time.

    Args:
      inputs: [batch, time, features].
      reverse: process time from last to first (outputs stay aligned with inputs).

    Returns:
      Hidden states [batch, time, hidden].
    """
    if self.mode not in MODES:
      raise ValueError(f"mode={self.mode!r}: choose from {MODES}.")
    if self.mode == "sequential":
      return super().__call__(inputs, reverse=reverse)
    # All steps' projections at once ([batch, time, gates * hidden]): the parallel scan
    # needs every (a_t, b_t) before it starts. Element t is the map h -> a_t h + b_t;
    # the prefix compositions applied to h_0 = 0 are the states, i.e. their b parts.
    # The projection runs in the compute dtype, the scan in float32 as `recurrence`.
    projected = self.input(inputs)
    state_dtype, dtype = self.dtypes(inputs, self.input.variables["params"]["kernel"])

    def states(projected):  # [batch, time, hidden]
      a, b = self.coefficients(projected.astype(state_dtype))
      return jax.lax.associative_scan(compose, (a, b), reverse=reverse, axis=1)[1]

    # Under remat the backward pass recomputes the O(log T) levels of partial
    # compositions from the projections instead of keeping them all.
    return self.maybe_remat(states)(projected).astype(dtype)


class MinGRU(_MinimalRNN):
  """minGRU layer: [batch, time, features] -> [batch, time, hidden].

  Gates, in this order along the last axis: update z, candidate h~.

      [k_z, k_h] = W_x x_t + b                   [batch, 2 * hidden]
      z_t = sigmoid(k_z);  h~_t = g(k_h)
      h_t = (1 - z_t) * h_{t-1} + z_t * h~_t     a_t = 1 - z_t, b_t = z_t * h~_t

  Parameters: `input/kernel` [features, 2 * hidden], `input/bias` [2 * hidden]; no
  recurrent weights.

  Attributes:
    mode: "sequential" (`lax.scan`) or "parallel" (`lax.associative_scan`).
  """
  num_gates = 2

  @nn.nowrap
  def coefficients(self, projected):
    k_z, k_h = jnp.split(projected, 2, axis=-1)
    # 1 - sigmoid(k) written as sigmoid(-k): no cancellation when z_t is near 1.
    return jax.nn.sigmoid(-k_z), jax.nn.sigmoid(k_z) * g(k_h)


class MinLSTM(_MinimalRNN):
  """minLSTM layer: [batch, time, features] -> [batch, time, hidden].

  Gates, in this order along the last axis: forget f, input i, candidate h~.

      [k_f, k_i, k_h] = W_x x_t + b                   [batch, 3 * hidden]
      f_t = sigmoid(k_f);  i_t = sigmoid(k_i);  h~_t = g(k_h)
      f'_t = f_t / (f_t + i_t);  i'_t = i_t / (f_t + i_t)
      h_t = f'_t * h_{t-1} + i'_t * h~_t           a_t = f'_t, b_t = i'_t * h~_t

  Normalising f and i to sum to one makes the state a convex mix of its past and the
  candidate, so its scale does not depend on the time step (the paper's
  "length independence").

  Parameters: `input/kernel` [features, 3 * hidden], `input/bias` [3 * hidden]; no
  recurrent weights.

  Attributes:
    mode: "sequential" (`lax.scan`) or "parallel" (`lax.associative_scan`).
  """
  num_gates = 3

  @nn.nowrap
  def coefficients(self, projected):
    k_f, k_i, k_h = jnp.split(projected, 3, axis=-1)
    # f' = 1 / (1 + i / f) = sigmoid(log f - log i), and log sigmoid(k) =
    # -softplus(-k): finite even where f and i both underflow (f / (f + i) = 0 / 0).
    log_ratio = jax.nn.softplus(-k_i) - jax.nn.softplus(-k_f)
    return jax.nn.sigmoid(log_ratio), jax.nn.sigmoid(-log_ratio) * g(k_h)
