"""Stacks recurrent layers over a sequence and reads out class logits."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class SequenceClassifier(nn.Module):
  """[batch, time, features] -> logits [batch, num_classes].

  Layer i is `layer{i}_fwd` (and `layer{i}_bwd`, run over reversed time, when
  bidirectional; their outputs are concatenated to [batch, time, 2 * hidden]). Dropout
  follows every layer. The readout takes the last step (for the backward direction, the
  first step, where it has seen the whole sequence), or the mean or max over time, then
  a Dense layer `head` gives the logits.

  Attributes:
    cell: a `RecurrentCell` subclass, or any module with its interface: a
      constructor taking hidden_size, unroll, name and `cell_options`, and
      `__call__(inputs, reverse)`, [batch, time, features] -> [batch, time, hidden]
      (e.g. `flax_layer.FlaxCellLayer`, which runs a flax cell).
    hidden_size: units per direction.
    num_layers: stacked layers.
    bidirectional: add a time-reversed layer beside each forward one.
    dropout: rate after each layer (training only).
    readout: "last", "mean" or "max".
    unroll: scan unroll factor.
    num_classes: output size.
    cell_options: the cell's own settings, (name, value) pairs for its constructor
      (a tuple, so the module stays hashable); see `base.Option`.
    dtype: compute dtype of the layers and the head (None: the parameters' float32);
      passed to every layer, whose constructor must take it (as `remat`).
    remat: rematerialise each layer's time step in the backward pass.
  """
  cell: Any
  hidden_size: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  readout: str = "last"
  unroll: int = 1
  num_classes: int = 10
  cell_options: tuple[tuple[str, Any], ...] = ()
  dtype: Any = None
  remat: bool = False

  @nn.compact
  def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
    x = inputs
    forward = backward = None
    for i in range(self.num_layers):
      make = lambda d: self.cell(hidden_size=self.hidden_size, unroll=self.unroll,
                                 dtype=self.dtype, remat=self.remat,
                                 name=f"layer{i}_{d}", **dict(self.cell_options))
      forward = make("fwd")(x)
      if self.bidirectional:
        backward = make("bwd")(x, reverse=True)
        x = jnp.concatenate([forward, backward], axis=-1)
      else:
        x = forward
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.readout == "last":
      if self.bidirectional:
        hidden = self.hidden_size
        features = jnp.concatenate([x[:, -1, :hidden], x[:, 0, hidden:]], axis=-1)
      else:
        features = x[:, -1]
    elif self.readout == "mean":
      features = x.mean(axis=1)
    else:
      features = x.max(axis=1)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(features)
    # Logits leave in float32 at least: the softmax and the cross-entropy sum
    # exponentials, and bfloat16 would keep ~3 significant digits of the loss.
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
