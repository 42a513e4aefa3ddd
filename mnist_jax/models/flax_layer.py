"""A flax `nn.RNNCellBase` cell as a project layer (`nn.RNN` over time).

The layer `models.external` builds for `config.model.name = "module:FlaxCell"`.
"""

import functools
import inspect
from typing import Any

import flax.linen as nn
import jax

from mnist_jax.models.base import HasOptions


class FlaxCellLayer(HasOptions, nn.Module):
  """A flax `nn.RNNCellBase` run over time: [batch, time, features] -> [batch, time,
  hidden].

  The project's layer interface around `nn.RNN`. Parameters sit under
  `<layer>/rnn/cell/` in the flax cell's own layout (GRUCell: ir, iz, in, hr, hz, hn).
  RECURRENCE_PARAMS stays empty: a flax cell's leaves are all `kernel` or `bias`, so
  its recurrence cannot be singled out; `optimizer.recurrent_lr_factor` and
  `recurrent_weight_decay` leave it alone (as for a registered cell without one).

  Attributes:
    hidden_size: the cell's `features`.
    unroll: time steps per iteration of nn.RNN's scan.
    cell_type: the flax cell class.
    cell_kwargs: its other constructor arguments, (name, value) pairs (hashable).
    dtype: compute dtype, passed as the cell's own `dtype` argument when it has one
      (flax's cells do; their parameters stay float32, `param_dtype`); None: not
      passed. The carry is kept in the dtype the cell initialises it in (float32).
    remat: the cell under `nn.remat`: each step recomputed in the backward pass.
  """
  hidden_size: int
  unroll: int = 1
  cell_type: Any = None
  cell_kwargs: tuple[tuple[str, Any], ...] = ()
  dtype: Any = None
  remat: bool = False

  @nn.compact
  def __call__(self, inputs: jax.Array, reverse: bool = False) -> jax.Array:
    """[batch, time, features] -> [batch, time, hidden]; `reverse` runs last to first,
    outputs stay aligned with the inputs."""
    kwargs, cell_type, dtype = dict(self.cell_kwargs), self.cell_type, None
    if self.dtype is not None and "dtype" in inspect.signature(cell_type).parameters:
      kwargs["dtype"], cell_type = self.dtype, _carry_keeps_its_dtype(cell_type)
      dtype = self.dtype
    if self.remat:
      cell_type = nn.remat(cell_type)
    # Unbound (parent=None), so nn.RNN adopts it as its submodule `cell` and scans it
    # with one set of parameters for every step.
    cell = cell_type(features=self.hidden_size, parent=None, **kwargs)
    rnn = nn.RNN(cell, unroll=self.unroll, name="rnn")
    outputs = rnn(inputs, reverse=reverse, keep_order=True)
    # In the compute dtype as the built-in cells' (LSTMCell's h = o * tanh(c) comes
    # out in its float32 carry's dtype).
    return outputs if dtype is None else outputs.astype(dtype)


@functools.lru_cache(maxsize=None)
def _carry_keeps_its_dtype(cell_type: type) -> type:
  """A subclass of flax cell `cell_type` whose step returns its carry in the dtype it
  came in. Flax initialises the carry in param_dtype (float32), and some cells
  (SimpleCell: h = tanh(W x + U h)) return it in their compute dtype, which nn.RNN's
  scan refuses; the cast also keeps the state float32, as the built-in cells do.
  A subclass, not a wrapper module, so the parameters keep their paths."""

  class Cell(cell_type):  # pylint: disable=missing-class-docstring

    def __call__(self, carry, inputs):
      new_carry, outputs = super().__call__(carry, inputs)
      return jax.tree.map(lambda new, old: new.astype(old.dtype), new_carry,
                          carry), outputs

  Cell.__name__ = Cell.__qualname__ = cell_type.__name__
  return Cell
