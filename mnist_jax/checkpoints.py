"""Orbax checkpoints in `WORKDIR/checkpoints`: save, resume, restore for evaluation.

Each checkpoint `checkpoints/<step>/` holds two items:

* `state`: the train state pytree (step, params, optimizer state, RNG key). The data
  position is the step itself, since the batch order is a pure function of
  (seed, step).
* `meta`: JSON with the epoch, step and validation metrics at save time.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
kill during a write leaves the previous checkpoints intact and the partial one is never
listed (and is removed at the next start). Saves are asynchronous; `wait()` surfaces any
error from a background save. Evaluation opens the store read-only and restores only
the parameters (`restore_params`).
"""

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from mnist_jax.errors import WorkdirError

BEST_METRIC = "val_accuracy"


class _QuietOrbax(logging.Filter):
  """Drops Orbax warnings that describe what this module asked for, not a problem."""
  EXPECTED = ("Given directory is read only", "read_only=True, setting",
              "is read only, ", "did not provide metrics")

  def filter(self, record):
    return not any(text in record.getMessage() for text in self.EXPECTED)


logging.getLogger("absl").addFilter(_QuietOrbax())  # Orbax logs through absl.


class CheckpointStore:
  """Keeps the latest `keep` checkpoints plus the best one by validation accuracy."""

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    policy = ocm.AnyPreservationPolicy([
        ocm.LatestN(n=keep),
        ocm.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1,
                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda m: m[BEST_METRIC],
        best_mode="max",
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=True,
    )
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the highest validation accuracy (None if none has metrics)."""
    return self.manager.best_step()

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None,
           force: bool = False) -> None:
    """Starts an asynchronous save; raises if an earlier background save failed.

    Raises:
      WorkdirError: an earlier background save failed (disk full, permissions).
    """
    self._raise_save_errors(self.manager.check_for_errors)
    # Orbax's save first waits for the previous one, so its error can surface here.
    self._raise_save_errors(lambda: self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)),
        metrics=metrics,
        force=force,
    ))

  def resolve_step(self, which: str | int) -> int:
    """Turns 'latest', 'best' or a step number into an existing step.

    Raises:
      WorkdirError: no checkpoints, or no checkpoint at that step.
    """
    steps = self.steps()
    if not steps:
      raise WorkdirError(f"no checkpoint in {self.directory}; train first "
                         f"(python -m mnist_jax.main --config=... --workdir=...).")
    if which == "latest":
      return self.latest_step()
    if which == "best":
      best = self.best_step()
      return best if best is not None else self.latest_step()
    try:
      step = int(which)
    except (TypeError, ValueError):
      raise WorkdirError(f"--checkpoint={which!r} is not 'latest', 'best' or a step "
                         f"number.") from None
    if step not in steps:
      raise WorkdirError(f"no checkpoint at step {step} in {self.directory}; "
                         f"available steps: {', '.join(map(str, sorted(steps)))}.")
    return step

  def restore(self, step: int, target_state: Any) -> tuple[Any, dict]:
    """Restores (state, meta) at `step`, shaped and sharded like `target_state`.

    Raises:
      WorkdirError: the checkpoint's files are damaged or incomplete.
    """
    return self._restore(step, ocp.args.StandardRestore(target_state))

  def _restore(self, step: int, state_args) -> tuple[Any, dict]:
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
      return restored.state, dict(restored.meta)
    except Exception as e:  # Orbax, TensorStore and json raise many types.
      detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
      others = [s for s in self.steps() if s != step]
      raise WorkdirError(
          f"checkpoint at step {step} in {self.directory} cannot be read; it is "
          f"damaged or incomplete ({type(e).__name__}: {detail}). Move that "
          f"folder away to use another checkpoint (steps: "
          f"{', '.join(map(str, sorted(others))) or 'none'}).") from e

  def restore_params(self, step: int, abstract_params: Any,
                     sharding: jax.sharding.Sharding) -> Any:
    """Only the parameters at `step`, placed with `sharding`; no optimizer needed.

    Args:
      step: an existing step (see `resolve_step`).
      abstract_params: the parameters' shapes and dtypes (`steps.abstract_params`).
      sharding: where every restored array goes.

    Raises:
      WorkdirError: the checkpoint is damaged, or holds another model's parameters.
    """
    return self.restore_part(step, "params", abstract_params, sharding)

  def restore_part(self, step: int, name: str, abstract: Any,
                   sharding: jax.sharding.Sharding) -> Any:
    """One field of the saved train state ("params", "opt_state"), shaped like
    `abstract` (`jax.ShapeDtypeStruct`s), placed with `sharding`.

    Raises:
      WorkdirError: the checkpoint is damaged, or holds another structure there.
    """
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding),
                                abstract)
    args = ocp.args.PyTreeRestore(item={name: abstract},
                                  restore_args={name: restore_args},
                                  partial_restore=True)
    return self._restore(step, args)[0][name]

  def delete(self, step: int) -> None:
    """Removes the checkpoint at `step` (population.py: a member ahead of the others
    goes back to their step)."""
    self.manager.delete(step)

  def wait(self) -> None:
    """Blocks until background saves finish.

    Raises:
      WorkdirError: a background save failed (disk full, permissions).
    """
    self._raise_save_errors(self.manager.wait_until_finished)
    self._raise_save_errors(self.manager.check_for_errors)

  def _raise_save_errors(self, call) -> None:
    """Runs `call`; a failed background save becomes one line naming its root cause.

    Orbax re-raises the background thread's error wrapped in its own; the innermost
    message ("No space left on device", "Permission denied") is what users can act on.
    """
    try:
      call()
    except Exception as e:  # Whatever the background write raised.
      root = e
      while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
      detail = " ".join(str(root).split())[:300] or type(root).__name__
      good = self.steps()
      raise WorkdirError(
          f"saving a checkpoint in {self.directory} failed ({type(root).__name__}: "
          f"{detail}); the checkpoints already written are intact (steps: "
          f"{', '.join(map(str, sorted(good))) or 'none'}). Fix the cause (free "
          f"space, permissions), then run the same command again to resume.") from e

  def close(self) -> None:
    self.manager.close()
