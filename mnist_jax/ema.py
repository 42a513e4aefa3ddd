"""An exponential moving average of the parameters, as the optimizer's last transform.

    ema_t = ema_{t-1} + (1 - d_t) (params_t - ema_{t-1}),   ema_0 = params_0,
    d_t = min(decay, (1 + t) / (10 + t)),                    t = updates so far (>= 1).

`params_t` is the parameters after update t. The warm-up of d_t is TensorFlow's
`ExponentialMovingAverage(num_updates=...)` rule: with decay 0.999 a plain average
would still be ~58% the random initial weights after the first epoch (550 steps),
which would then be what validation selects on.

Kept in the optimizer state (`optax.chain(optimizer, params_ema(decay))`) rather than
beside it, so everything that already handles the state handles it too: checkpoints
save and restore it (a resumed run continues the same average, bit for bit), the
non-finite guard in `steps.apply_gradients` rolls it back with the rest, and the
device placements move it. With decay 0 the transform is not added, so runs without an
EMA keep the state layout of checkpoints written before it existed.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# The field that holds the average, found by name in any optimizer state.
FIELD = "ema_params"


class ParamsEmaState(NamedTuple):
  """count: int32 updates so far; ema_params: the average, shaped like the params."""
  count: jax.Array
  ema_params: Any


def decay_at(decay: float, count: jax.Array) -> jax.Array:
  """d_t for update number `count` (1 for the first update), float32."""
  t = count.astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def params_ema(decay: float) -> optax.GradientTransformation:
  """Keeps an EMA of the parameters the updates lead to; the updates pass unchanged.

  Must be the last transform of the chain: it averages `params + updates`, the
  parameters `optax.apply_updates` is about to produce.
  """
  def init(params):
    return ParamsEmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.copy, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("params_ema needs the parameters: pass them to update().")
    count = optax.safe_increment(state.count)
    weight = 1.0 - decay_at(decay, count)
    new_params = optax.apply_updates(params, updates)
    averaged = jax.tree.map(
        lambda e, p: (e + weight * (p - e)).astype(e.dtype),
        state.ema_params, new_params)
    return updates, ParamsEmaState(count, averaged)

  return optax.GradientTransformation(init, update)


def find(opt_state: Any) -> Any | None:
  """The averaged parameters inside an optimizer state, or None without an EMA."""
  return optax.tree_utils.tree_get(opt_state, FIELD)
