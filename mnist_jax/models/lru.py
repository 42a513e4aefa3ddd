"""Linear Recurrent Unit (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De, 2023).

"Resurrecting Recurrent Neural Networks for Long Sequences", ICML 2023,
arXiv:2303.06349.

The LRU is a linear RNN with a complex diagonal recurrence, made deep the way S4/S5 are:
each block normalises its input, runs the LRU, applies a GELU and a GLU (or a Dense),
and adds the block's input back. The recurrence is linear, so the whole sequence can be
computed with a parallel prefix scan (`jax.lax.associative_scan`, O(log T) depth) as
well as step by step.

`LRUBlock` is what the registry names "lru": `SequenceClassifier` stacks `num_layers`
of them (`layer{i}_fwd`), which is the paper's deep LRU; the classifier's dropout sits
between blocks and its readout (the paper pools with "mean") gives the logits.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models.base import (HasOptions, Option, is_number, is_positive,
                                   is_positive_int)

Array = jax.Array

SCANS = ("parallel", "sequential")
MIXES = ("glu", "mlp")


def binary_operator(earlier: tuple[Array, Array],
                    later: tuple[Array, Array]) -> tuple[Array, Array]:
  """Composes two affine maps h -> a h + b (earlier first); it is associative.

  `a` is [k, state] (shared by the batch), `b` is [k, batch, state].
  """
  a1, b1 = earlier
  a2, b2 = later
  return a1 * a2, a2[:, None] * b1 + b2


class LRU(nn.Module):
  """The LRU layer: [batch, time, hidden] -> [batch, time, hidden].

      lambda = exp(-exp(nu) + i exp(theta))              [state], |lambda| < 1
      gamma  = exp(gamma_log), initially sqrt(1 - |lambda|^2)
      h_t = lambda * h_{t-1} + gamma * (B x_t)           complex [batch, state]
      y_t = Re(C h_t) + D * x_t                          real [batch, hidden]

  B = B_re + i B_im [state, hidden] and C = C_re + i C_im [hidden, state] are Glorot-
  like normal; D [hidden] is N(0, 1). lambda is initialised uniformly on the ring
  r_min <= |lambda| <= r_max, phase in [0, max_phase]; the exp-exp parametrisation
  keeps |lambda| < 1 (stable) whatever the optimizer does. gamma normalises the state's
  variance for white-noise input, so units with |lambda| near 1 do not blow up.

  Unlike the step-by-step cells of the contract (`base.py`), the LRU is linear in its
  state, so the input projection gamma * B x is computed for all steps at once and
  only `recurrence` (one step) runs over time, as an associative scan or `lax.scan`.
  All parameters are real (complex numbers are formed inside).

  Attributes:
    hidden_size: model width H (input and output size).
    state_size: N, number of complex state units.
    r_min, r_max: ring of the initial eigenvalue moduli.
    max_phase: initial phases are uniform in [0, max_phase].
    scan: "parallel" (associative scan) or "sequential" (`lax.scan`, less memory).
    unroll: time steps per iteration of the sequential scan.
    dtype: compute dtype of the B, C and D products and of the output; None: float32.
      lambda, gamma and the state stay complex64 whatever it is: |lambda| = 0.999 is
      1.0 in bfloat16, and the state sums ~1 / (1 - |lambda|) steps of input.
    remat: recompute the scan in the backward pass instead of keeping its residuals.
  """
  hidden_size: int
  state_size: int = 256
  r_min: float = 0.9
  r_max: float = 0.999
  max_phase: float = 2 * math.pi
  scan: str = "parallel"
  unroll: int = 1
  dtype: Any = None
  remat: bool = False

  def setup(self):
    n, h = self.state_size, self.hidden_size
    self.nu_log = self.param("nu_log", self._nu_init, (n,))
    self.theta_log = self.param("theta_log", self._theta_init, (n,))
    # sqrt(1 - |lambda|^2) with |lambda|^2 = exp(-2 exp(nu)), from the initial nu.
    self.gamma_log = self.param(
        "gamma_log", lambda key, nu: 0.5 * jnp.log(-jnp.expm1(-2 * jnp.exp(nu))),
        self.nu_log)
    b_init = nn.initializers.normal(stddev=1 / math.sqrt(2 * h))
    c_init = nn.initializers.normal(stddev=1 / math.sqrt(n))
    self.B_re = self.param("B_re", b_init, (n, h))
    self.B_im = self.param("B_im", b_init, (n, h))
    self.C_re = self.param("C_re", c_init, (h, n))
    self.C_im = self.param("C_im", c_init, (h, n))
    self.D = self.param("D", nn.initializers.normal(stddev=1.0), (h,))

  def _nu_init(self, key, shape, dtype=jnp.float32):
    # |lambda|^2 uniform in [r_min^2, r_max^2] spreads units uniformly over the ring.
    u = jax.random.uniform(key, shape, dtype)
    modulus_sq = u * (self.r_max ** 2 - self.r_min ** 2) + self.r_min ** 2
    return jnp.log(-0.5 * jnp.log(modulus_sq))

  def _theta_init(self, key, shape, dtype=jnp.float32):
    # minval > 0: theta is stored as log(phase).
    return jnp.log(self.max_phase * jax.random.uniform(key, shape, dtype, minval=1e-6))

  def eigenvalues(self) -> Array:
    """lambda, complex [state]."""
    return jnp.exp(jax.lax.complex(-jnp.exp(self.nu_log), jnp.exp(self.theta_log)))

  def _compute(self, x: Array) -> Array:
    """`x` in the compute dtype (`dtype`, else the parameters')."""
    return x.astype(self.dtype or jnp.result_type(x, self.D))

  def input_projection(self, x: Array) -> Array:
    """gamma * (B x): real [..., hidden] -> complex [..., state] (complex64)."""
    gamma = jnp.exp(self.gamma_log)
    x = self._compute(x)
    project = lambda b: (x @ b.T.astype(x.dtype)).astype(gamma.dtype) * gamma
    return jax.lax.complex(project(self.B_re), project(self.B_im))

  def output(self, states: Array, x: Array) -> Array:
    """Re(C h) + D x: complex [..., state], real [..., hidden] -> real [..., hidden],
    in the compute dtype."""
    x = self._compute(x)
    mix = lambda s, c: self._compute(s) @ c.T.astype(x.dtype)
    return mix(states.real, self.C_re) - mix(states.imag, self.C_im) + (
        self.D.astype(x.dtype) * x)

  def recurrent_params(self) -> dict[str, Array]:
    return {"lambda": self.eigenvalues()}

  def initial_carry(self, batch_size: int, dtype=jnp.complex64) -> Array:
    del dtype  # The state is always complex.
    return jnp.zeros((batch_size, self.state_size), jnp.complex64)

  @nn.nowrap
  def recurrence(self, params, carry, projected):
    """One step: h_t = lambda * h_{t-1} + projected_t, all [batch, state]."""
    h = params["lambda"] * carry + projected
    return h, h

  def step(self, carry: Array, x: Array) -> tuple[Array, Array]:
    """One step from raw inputs [batch, hidden]; the reference for tests."""
    carry, h = self.recurrence(self.recurrent_params(), carry, self.input_projection(x))
    return carry, self.output(h, x)

  def __call__(self, inputs: Array, reverse: bool = False) -> Array:
    """Runs the LRU over time.

    Args:
      inputs: [batch, time, hidden].
      reverse: process time from last to first (outputs stay aligned with inputs).

    Returns:
      [batch, time, hidden].
    """
    projected = jnp.swapaxes(self.input_projection(inputs), 0, 1)  # [time, batch, N]
    params = self.recurrent_params()
    # remat: jax.checkpoint around the step (sequential) or around the whole prefix
    # scan (parallel: its O(log T) levels of partial compositions are recomputed).
    remat = ((lambda f: jax.checkpoint(f, prevent_cse=False)) if self.remat
             else (lambda f: f))
    if self.scan == "parallel":
      # Element t is the map h -> lambda h + projected_t; prefix compositions applied
      # to h = 0 are the states. lambda is not broadcast over the batch (memory).
      lam = jnp.broadcast_to(params["lambda"], projected.shape[::2])
      _, states = remat(lambda lam, p: jax.lax.associative_scan(
          binary_operator, (lam, p), reverse=reverse))(lam, projected)
    else:
      carry = self.initial_carry(inputs.shape[0])
      _, states = jax.lax.scan(remat(lambda c, p: self.recurrence(params, c, p)),
                               carry, projected, reverse=reverse, unroll=self.unroll)
    return self.output(jnp.swapaxes(states, 0, 1), inputs)


def _in_unit_interval(v) -> bool:
  return is_number(v) and 0.0 <= v < 1.0


class LRUBlock(HasOptions, nn.Module):
  """One residual LRU block: [batch, time, features] -> [batch, time, hidden].

      x = encoder(inputs)        Dense to hidden, only when features != hidden
      y = LRU(LayerNorm(x))
      y = GLU(GELU(y))           GLU: a * sigmoid(b), [a, b] = Dense(2 * hidden)
      out = x + y

  With mix="mlp" the GLU is a single Dense(hidden). LayerNorm rather than the paper's
  BatchNorm option: it needs no running statistics, which this train loop does not
  carry. The encoder makes the first block the paper's linear encoder (and adapts the
  2 * hidden input after a bidirectional layer).

  Parameters: `encoder/{kernel,bias}` (when used), `norm/{scale,bias}`,
  `lru/{nu_log,theta_log,gamma_log,B_re,B_im,C_re,C_im,D}`, `mix/{kernel,bias}`.

  Attributes:
    hidden_size: model width H.
    unroll: sequential scan unroll.
    state_size, r_min, r_max, max_phase, scan: see `LRU`.
    mix: "glu" or "mlp".
    dtype: compute dtype of the Dense layers, the LRU's matmuls and the output
      (None: float32); LayerNorm statistics are float32 whatever it is (flax).
    remat: see `LRU`.
  """
  hidden_size: int
  unroll: int = 1
  state_size: int = 256
  r_min: float = 0.9
  r_max: float = 0.999
  max_phase: float = 2 * math.pi
  scan: str = "parallel"
  mix: str = "glu"
  dtype: Any = None
  remat: bool = False

  # The paper trains these with a lower learning rate and no weight decay.
  RECURRENCE_PARAMS = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im")
  OPTIONS = {
      "state_size": Option(256, "Complex state units per LRU layer.",
                           is_positive_int,
                           "a positive integer"),
      "r_min": Option(0.9, "Initial eigenvalue moduli are uniform on the ring "
                      "r_min <= |lambda| <= r_max.", _in_unit_interval, "in [0, 1)"),
      "r_max": Option(0.999, "See r_min.", _in_unit_interval, "in [0, 1)"),
      "max_phase": Option(2 * math.pi, "Initial phases are uniform in [0, this].",
                          is_positive, "a positive number"),
      "scan": Option("parallel", "parallel: associative scan; sequential: lax.scan "
                     "(less memory, faster on CPU).", lambda v: v in SCANS,
                     " or ".join(SCANS)),
      "mix": Option("glu", "Channel mixing after the LRU: glu, or mlp (one Dense).",
                    lambda v: v in MIXES, " or ".join(MIXES)),
  }

  @classmethod
  def options_error(cls, values):
    if values["r_min"] >= values["r_max"]:
      return (f"r_min={values['r_min']} must be smaller than "
              f"r_max={values['r_max']}")
    return None

  def setup(self):
    if self.scan not in SCANS or self.mix not in MIXES:
      raise ValueError(f"scan={self.scan!r} / mix={self.mix!r}: choose scan from "
                       f"{SCANS} and mix from {MIXES}.")
    h, dtype = self.hidden_size, self.dtype
    # Created lazily: only if called.
    self.encoder = nn.Dense(h, dtype=dtype, name="encoder")
    self.norm = nn.LayerNorm(dtype=dtype, name="norm")
    self.lru = LRU(h, self.state_size, self.r_min, self.r_max, self.max_phase,
                   self.scan, self.unroll, dtype, self.remat, name="lru")
    self.mix_dense = nn.Dense(2 * h if self.mix == "glu" else h, dtype=dtype,
                              name="mix")

  def _encode(self, inputs: Array) -> Array:
    return inputs if inputs.shape[-1] == self.hidden_size else self.encoder(inputs)

  def _mix(self, y: Array) -> Array:
    y = self.mix_dense(nn.gelu(y, approximate=False))
    if self.mix == "glu":
      a, b = jnp.split(y, 2, axis=-1)
      y = a * jax.nn.sigmoid(b)
    return y

  def initial_carry(self, batch_size: int, dtype=jnp.complex64) -> Array:
    return self.lru.initial_carry(batch_size, dtype)

  def step(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
    """One step from raw inputs [batch, features]; the reference for tests."""
    x = self._encode(inputs)
    carry, y = self.lru.step(carry, self.norm(x))
    return carry, x + self._mix(y)

  def __call__(self, inputs: Array, reverse: bool = False) -> Array:
    """[batch, time, features] -> [batch, time, hidden]; see the class docstring."""
    x = self._encode(inputs)
    y = x + self._mix(self.lru(self.norm(x), reverse=reverse))
    # The residual sum in the compute dtype: the first block's raw float32 input
    # (features == hidden, no encoder) would otherwise promote the whole stack.
    return y.astype(self.dtype or y.dtype)
