"""A population's step: `steps.train_step` vmapped over a leading member axis.

The pure pieces of population.py: no files, no config library (benchmarks/population.py
times this step on machines without ml_collections). The members' train states are
stacked leaf by leaf (`stack`), each step's batches too ([members, batch, ...]), and
one jitted program steps every member: each folds its own step into its own key, as
a lone run does.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mnist_jax import steps

OptimizerFor = Callable[[jax.Array], optax.GradientTransformation]


def make_step(step_options: dict, optimizer_for: OptimizerFor | None = None):
  """The population's jitted step, the stacked state donated:

      (state [K, ...], learning_rate [K], active [K], batch [K, batch, ...])
          -> (state, metrics [K])

  A member whose `active` is False keeps its state as it was (a member that stopped
  early); its slot is computed all the same.

  Args:
    step_options: `steps.train_step`'s keywords (preprocess, label smoothing, shift).
    optimizer_for: learning rate -> the optimizer of a member with that rate, called
      with each member's rate as a traced scalar (members with different rates); None:
      every member steps with its state's own optimizer (`learning_rate` unused).
  """

  def member_step(state, learning_rate, active, batch):
    tx = state.tx if optimizer_for is None else optimizer_for(learning_rate)
    new, metrics = steps.train_step(state.replace(tx=tx), batch, **step_options)
    new = new.replace(tx=state.tx)  # No traced value leaves the step.
    return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state), metrics

  return jax.jit(jax.vmap(member_step), donate_argnums=0)


def stack(states: list) -> Any:
  """The members' train states as one, each leaf with a leading member axis (the
  first member's optimizer and apply_fn stand for all)."""
  leaves = [jax.tree.leaves(s) for s in states]
  return jax.tree.unflatten(jax.tree.structure(states[0]),
                            [jnp.stack(xs) for xs in zip(*leaves)])


def member(stacked: Any, i: int, like: Any) -> Any:
  """Member `i`'s train state, structured as `like` (its own state: its optimizer)."""
  return jax.tree.unflatten(jax.tree.structure(like),
                            [x[i] for x in jax.tree.leaves(stacked)])
