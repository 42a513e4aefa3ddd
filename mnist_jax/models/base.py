"""The recurrent-layer contract every cell implements.

A cell splits its step into two parts so that the layer can run fast:

* the input projection `input`: x_t -> W_x x_t + b, one Dense for all gates, applied
  by `__call__` to each step's raw input inside the loop (faster on CPU than hoisting
  it out of the loop; see `__call__`).
* `recurrence(params, carry, projected_t)`: a pure function with everything that depends
  on the previous state (one fused [hidden, gates * hidden] matmul per step). It is what
  `jax.lax.scan` iterates.

Parameter layout of a cell named `layer0_fwd`::

    layer0_fwd/input/kernel        [features, gates * hidden]
    layer0_fwd/input/bias          [gates * hidden]
    layer0_fwd/recurrent_kernel    [hidden, gates * hidden]
    layer0_fwd/recurrent_bias      [gates * hidden]   (only cells that need one: GRU)

Gates are concatenated along the last axis in the order the cell's docstring gives.
The base class creates only the recurrent weights a cell declares: the class
attributes `uses_recurrent_kernel` (default True) and `uses_recurrent_bias` (default
False). A cell whose gates read only x_t (minGRU, minLSTM: `min_rnn.py`) sets
`uses_recurrent_kernel = False`, has no `recurrent_kernel`, gets no "kernel" in
`recurrent_params()`, and its `RECURRENCE_PARAMS` (derived from the two flags unless
the class sets it) leaves the optimizer's recurrence group empty.
A new cell subclasses `RecurrentCell`, sets `num_gates`, and writes `recurrence` and
(if its carry is not a single hidden vector) `initial_carry`. Settings of
its own are module attributes listed in `OPTIONS` (see `Option`): the config exposes
them as `config.model.options.<cell name>.<attribute>` and `build_model` passes them.

Precision (`dtype`, config.model.dtype): the matmuls run in the compute dtype (e.g.
bfloat16) and the layer's outputs [batch, time, hidden] come out in it; parameters stay
float32 and are cast inside the loop body, so their gradients are summed over time steps
in float32. The carry keeps the parameters' dtype (float32) and `recurrence` does its
element-wise gate and state arithmetic in it: the state is a running sum over hundreds
of steps (c_t = f c_{t-1} + i g), and a forget gate of 0.999 or an update below 2^-8 of
the state is not representable in bfloat16's 8-bit mantissa. `recurrence` therefore
reads the compute dtype from `projected` and the state dtype from the carry.

`remat` (config.model.remat) wraps the loop body in `jax.checkpoint`: the backward pass
keeps only each step's carry and input and recomputes the rest, trading one more
forward step for the per-step residuals (gate pre-activations and the like).
"""

import dataclasses
import math
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Carry = Any


@dataclasses.dataclass(frozen=True)
class Option:
  """A cell setting beyond hidden_size / unroll: a module attribute of the same name.

  Attributes:
    default: the value when the config does not set it.
    help: what it does, for the config's reader.
    valid: value -> bool; None accepts anything of `type`.
    requirement: what a valid value is, for the error message ("at least 3 or None").
    kind: the value's type (needed when `default` is None, for command-line overrides).
    runtime: how the cell computes, not what: parameters and checkpoints do not depend
      on it, so a workdir resumes and evaluates with another value (not part of the
      run's identity, workdir.py), and one this machine refuses (`machine_error`)
      falls back to the default when a trained workdir is opened here.
  """
  default: Any
  help: str
  valid: Callable[[Any], bool] | None = None
  requirement: str = ""
  kind: type | None = None
  runtime: bool = False

  def value_type(self) -> type:
    return self.kind or type(self.default)


def is_number(v: Any) -> bool:
  """A finite int or float (not a bool): what numeric options accept."""
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


def is_positive(v: Any) -> bool:
  return is_number(v) and v > 0


def is_positive_int(v: Any) -> bool:
  return is_positive(v) and isinstance(v, int)


class HasOptions:
  """What the rest of the library reads from a cell class, not an instance.

  Attributes:
    OPTIONS: the cell's own settings (see `Option`).
    RECURRENCE_PARAMS: names of the parameters that make up the recurrence; the
      optimizer can give them their own learning rate and weight decay
      (`optimizer.recurrent_lr_factor`, `recurrent_weight_decay`).
  """
  OPTIONS: ClassVar[dict[str, Option]] = {}
  RECURRENCE_PARAMS: ClassVar[tuple[str, ...]] = ()

  @classmethod
  def options_error(cls, values: dict[str, Any]) -> str | None:
    """What is wrong with a combination of valid option values (None: nothing)."""
    del values
    return None

  @classmethod
  def model_error(cls, values: dict[str, Any], model: Any) -> str | None:
    """What is wrong with the option values beside the rest of `config.model` (its
    dtype, remat, layers...); None: nothing."""
    del values, model
    return None

  @classmethod
  def machine_error(cls, values: dict[str, Any]) -> str | None:
    """Why this machine cannot run the option values (None: it can). Only `runtime`
    options may be refused here. Must start no JAX backend (see cudnn_lstm.py)."""
    del values
    return None


class RecurrentCell(HasOptions, nn.Module):
  """Base recurrent layer: maps [batch, time, features] to [batch, time, hidden].

  Attributes:
    hidden_size: size of the hidden state.
    unroll: time steps per iteration of the compiled scan loop.
    dtype: compute dtype of the matmuls and outputs; None: the parameters' (float32).
    remat: recompute each step in the backward pass instead of storing its residuals.
  """
  hidden_size: int
  unroll: int = 1
  dtype: Any = None
  remat: bool = False

  num_gates: ClassVar[int] = 1
  uses_recurrent_kernel: ClassVar[bool] = True
  uses_recurrent_bias: ClassVar[bool] = False
  RECURRENCE_PARAMS = ("recurrent_kernel",)

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    # The optimizer's recurrence group names what the cell declares, so a cell that
    # turns a flag off needs no second edit; a cell with other recurrent parameters
    # sets RECURRENCE_PARAMS itself.
    if "RECURRENCE_PARAMS" not in cls.__dict__:
      declared = (("recurrent_kernel", cls.uses_recurrent_kernel),
                  ("recurrent_bias", cls.uses_recurrent_bias))
      cls.RECURRENCE_PARAMS = tuple(name for name, used in declared if used)

  def setup(self):
    gates = self.num_gates * self.hidden_size
    self.input = nn.Dense(gates, kernel_init=nn.initializers.glorot_uniform(),
                          bias_init=self.input_bias_init, dtype=self.dtype,
                          name="input")
    if self.uses_recurrent_kernel:
      self.recurrent_kernel = self.param(
          "recurrent_kernel", self.recurrent_kernel_init, (self.hidden_size, gates))
    if self.uses_recurrent_bias:
      self.recurrent_bias = self.param("recurrent_bias", nn.initializers.zeros, (gates,))

  # -- Initialisers subclasses may override. -----------------------------------------
  def input_bias_init(self, key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype)

  def recurrent_kernel_init(self, key, shape, dtype=jnp.float32):
    """One orthogonal [hidden, gates * hidden] matrix (orthonormal rows), as Keras.

    The seed notebook was Keras, so this is the faithful choice; per-gate orthogonal
    blocks did no better (docs/performance.md, "Tried and dropped").
    """
    return nn.initializers.orthogonal()(key, shape, dtype)

  # -- The contract. -----------------------------------------------------------------
  def recurrent_params(self) -> dict[str, Array]:
    """Parameters `recurrence` needs, read outside any JAX transform.

    "kernel" and "bias" when the cell declares them; empty for a cell with neither.
    """
    params = {}
    if self.uses_recurrent_kernel:
      params["kernel"] = self.recurrent_kernel
    if self.uses_recurrent_bias:
      params["bias"] = self.recurrent_bias
    return params

  def initial_carry(self, batch_size: int, dtype=jnp.float32) -> Carry:
    return jnp.zeros((batch_size, self.hidden_size), dtype)

  @nn.nowrap
  def recurrence(self, params: dict[str, Array], carry: Carry,
                 projected: Array) -> tuple[Carry, Array]:
    """One time step. `projected` is [batch, gates * hidden]; returns (carry, h_t)."""
    raise NotImplementedError

  # -- Running it. -------------------------------------------------------------------
  def step(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
    """One step from raw inputs [batch, features]; the reference for tests."""
    return self.recurrence(self.recurrent_params(), carry, self.input(inputs))

  def __call__(self, inputs: Array, reverse: bool = False) -> Array:
    """Runs the cell over time.

    Args:
      inputs: [batch, time, features].
      reverse: process time from last to first (outputs stay aligned with inputs).

    Returns:
      Hidden states [batch, time, hidden].
    """
    # The input projection W_x x_t + b runs inside the loop, one step at a time, on
    # time-major raw inputs. Hoisting it out as one [batch * time] matmul, the textbook
    # trick, writes and transposes a [batch, time, gates * hidden] array per batch,
    # which made evaluation slower on CPU (docs/performance.md).
    self.input(inputs[:, :0])  # Creates input/kernel and input/bias; computes nothing.
    dense = self.input.variables["params"]
    kernel, bias = dense["kernel"], dense["bias"]
    params = self.recurrent_params()
    state_dtype, dtype = self.dtypes(inputs, kernel)
    carry = self.initial_carry(inputs.shape[0], state_dtype)

    def body(carry, inputs_t):
      # Cast here, inside the loop, not before it: the scan's backward pass sums a
      # loop-invariant's gradient over time steps in that invariant's dtype, so the
      # float32 weights get float32 sums (a bfloat16 sum over 784 steps would lose
      # the small late terms).
      projected = inputs_t.astype(dtype) @ kernel.astype(dtype) + bias.astype(dtype)
      return self.recurrence(params, carry, projected)

    _, outputs = jax.lax.scan(self.maybe_remat(body), carry,
                              jnp.swapaxes(inputs, 0, 1), reverse=reverse,
                              unroll=self.unroll)
    return jnp.swapaxes(outputs, 0, 1)

  @nn.nowrap
  def dtypes(self, inputs: Array, kernel: Array) -> tuple[Any, Any]:
    """(state dtype, compute dtype): the carry keeps the parameters' precision (at
    least float32), the matmuls and outputs run in `dtype` when it is set."""
    state_dtype = jnp.result_type(inputs, kernel)
    return state_dtype, self.dtype or state_dtype

  @nn.nowrap
  def maybe_remat(self, fn: Callable) -> Callable:
    """`fn` under jax.checkpoint when `remat` is on. prevent_cse=False: inside a scan
    the loop already keeps XLA from merging the recomputation with the forward pass
    (JAX's advice for checkpoint within scan), and CSE barriers would cost speed."""
    return jax.checkpoint(fn, prevent_cse=False) if self.remat else fn


def fused_sigmoid_tanh(z: Array, tanh_mask: Array) -> Array:
  """sigmoid(z) where tanh_mask is 0 and tanh(z) where it is 1, with one tanh.

  sigmoid(x) = 0.5 * tanh(x / 2) + 0.5, so all gates share one transcendental pass;
  on CPU one tanh over [batch, 4 * hidden] is much cheaper than three sigmoids and two
  tanhs on split slices (docs/performance.md).
  """
  scale = jnp.where(tanh_mask, 1.0, 0.5).astype(z.dtype)
  return jnp.tanh(z * scale) * scale + (1.0 - scale)
