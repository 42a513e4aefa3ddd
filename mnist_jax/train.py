"""The training loop, and `train_and_evaluate`: train, then evaluate and report.

`train(config, workdir)` trains into a workdir (see `workdir.py` for its files),
resuming from its latest checkpoint. The steps are `steps.py`'s, placed on the devices
by `parallel.py`; metrics go through `metric_writer.py`.
"""

import signal

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from mnist_jax import checkpoints
from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import evaluate
from mnist_jax import parallel
from mnist_jax import steps
from mnist_jax.errors import NonFiniteError
from mnist_jax.metric_writer import MetricWriter, Progress
from mnist_jax.provenance import RunInfo
from mnist_jax.workdir import Workdir


class StopSignal:
  """Turns SIGTERM/SIGINT into a stop decision taken between steps (preemption notice).

  With one process the decision is the local flag, checked after every step. With
  several, a signal may reach only some of them (a pod scheduler preempting one
  host), and a process that stops alone leaves the others blocked in the next
  collective. So every `check_every` steps (and at epoch ends) all processes share
  their flags in one small all-gather and stop together, at the same step. A second
  signal stops at once (KeyboardInterrupt).
  """

  def __init__(self, check_every: int = 10):
    self.received = None
    self.check_every = check_every
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name

  def decision(self, step: int, epoch_end: bool) -> str | None:
    """The signal all processes stop for after `step`, or None to go on.

    Every process must call this after every step: with several processes it is a
    collective at the steps where it checks.
    """
    if jax.process_count() == 1:
      return self.received
    if step % self.check_every and not epoch_end:
      return None
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if not np.any(flags):
      return None
    return self.received or f"a signal to process {int(np.argmax(flags))}"

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _Run:
  """One training run's pieces, so the loop below reads as the algorithm it is."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.placement = parallel.make_placement()
    logging.info("Devices: %s.", self.placement.describe())
    self.placement.check_batch_size(config.batch_size, "batch_size")
    self.placement.check_batch_size(config.eval_batch_size, "eval_batch_size")
    self.workdir = Workdir.create(config, workdir)
    self.splits = data.load_splits(config)
    constants = self.workdir.preprocessing(
        lambda: data.preprocessing_for(config, self.splits["train"]), save=True)
    preprocess = data.make_preprocess(config.data, constants.mean, constants.std,
                                      constants.permutation)
    self.order = data.TrainOrder(config.seed, len(self.splits["train"]),
                                 config.batch_size)
    self.spe = self.order.steps_per_epoch
    state = steps.create_train_state(config, jax.random.PRNGKey(config.seed), self.spe)
    self.state = self.placement.put_state(state)
    self.store = self.workdir.checkpoint_store()
    self.history = {"best_val_accuracy": None, "epochs_since_best": 0}
    latest = self.store.latest_step()
    if latest is not None:
      self.state, meta = self.store.restore(latest, self.state)
      self.history.update(meta.get("history", {}))
      logging.info("Resumed from checkpoint at step %d (epoch %.2f).", latest,
                   latest / self.spe)
    self.train_step = self.placement.train_step(
        state.apply_fn, preprocess=preprocess,
        label_smoothing=config.optimizer.label_smoothing,
        augment_max_shift=config.data.augment_max_shift)
    self.eval_step = self.placement.eval_step(state.apply_fn, preprocess)
    self.writer = MetricWriter(workdir)

  def flush(self, step: int, pending: list, progress: Progress) -> None:
    """Fetches and logs pending step metrics; stops the run if a step was not finite."""
    if not pending:
      return
    fetched = jax.device_get(pending)
    first_step = step - len(fetched)
    for i, m in enumerate(fetched):
      if not bool(m["finite"]):
        raise NonFiniteError(
            f"non-finite loss, gradient or update at step {first_step + i + 1} (loss "
            f"{float(m['loss'])}, grad norm {float(m['grad_norm'])}); the state "
            f"was not updated and nothing was saved. The last good checkpoint is "
            f"step {self.store.latest_step()}. Lower optimizer.learning_rate or set "
            f"optimizer.grad_clip_norm.")
    means = {k: float(np.mean([m[k] for m in fetched]))
             for k in ("loss", "accuracy", "grad_norm")}
    rate, eta = progress.rate_and_eta(step)
    self.writer.write(step, "train", {**means, "examples_per_sec": rate},
                      epoch=step / self.spe)
    logging.info("step %d/%d (epoch %.2f) loss %.4f acc %.2f%% | %s ex/s | ETA %s",
                 step, progress.total_steps, step / self.spe, means["loss"],
                 100 * means["accuracy"], f"{rate:,.0f}", eta)
    pending.clear()

  def validation_metrics(self) -> dict | None:
    """{"accuracy", "loss"} over every validation example (None: no such split)."""
    split = self.splits["validation"]
    if not len(split):
      return None
    logits, losses = parallel.predict(self.placement, self.eval_step, self.state.params,
                                      split, self.config.eval_batch_size)
    return {"accuracy": float(np.mean(logits.argmax(-1) == split.labels)),
            "loss": float(losses.mean())}

  def validate(self, step: int, track_best: bool = True) -> dict | None:
    """Validation accuracy and loss (None without a validation split); logged.

    With `track_best`, also the early-stopping history (best accuracy, epochs since).
    """
    metrics = self.validation_metrics()
    if metrics is None:
      return None
    self.writer.write(step, "validation", metrics, epoch=step / self.spe)
    logging.info("epoch %d validation: accuracy %.2f%%, loss %.4f", step // self.spe,
                 100 * metrics["accuracy"], metrics["loss"])
    best = self.history["best_val_accuracy"]
    if track_best and (best is None or metrics["accuracy"] > best):
      self.history.update(best_val_accuracy=metrics["accuracy"], epochs_since_best=0)
    elif track_best:
      self.history["epochs_since_best"] += 1
    return metrics

  def save(self, step: int, val: dict | None = None, force: bool = False) -> None:
    meta = {"step": step, "epoch": step / self.spe, "history": dict(self.history),
            "val": val}
    metrics = {checkpoints.BEST_METRIC: val["accuracy"]} if val else None
    self.store.save(step, self.state, meta, metrics=metrics, force=force)

  def early_stopped(self) -> bool:
    patience = self.config.early_stopping_patience
    return bool(patience) and self.history["epochs_since_best"] >= patience


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the experiment in `workdir`.

  Args:
    config: the experiment config (resolved and validated here).
    workdir: where config, metrics and checkpoints live.

  Returns:
    {"completed": bool, "step": int, "stopped_by": signal name or None,
     "best_step": int | None, "val_accuracy": float | None,
     "run_info": the session's `provenance.RunInfo`}.

  Raises:
    UserError subclasses for bad config, data, workdir or non-finite training.
  """
  run = _Run(config_lib.resolve(config), workdir)
  run_info = RunInfo(workdir, run.placement.describe())
  config, spe = run.config, run.spe
  start_step = int(jax.device_get(run.state.step))
  total_steps = spe * config.num_epochs
  if run.early_stopped():  # Running the command again must not train on.
    logging.info("Early-stopped at step %d (no validation gain for %d epochs); "
                 "nothing left to train.", start_step,
                 run.history["epochs_since_best"])
    total_steps = start_step
  progress = Progress(start_step, total_steps, config.batch_size)
  pending = []  # Device metrics since the last flush (no per-step host sync).
  stopped_by, step, status = None, start_step, "failed"
  try:
    with StopSignal() as stop:
      for batch in data.train_batches(run.splits["train"], run.order, start_step,
                                      total_steps, run.placement.put_batch):
        run.state, metrics = run.train_step(run.state, batch)
        pending.append(metrics)
        step += 1
        progress.update()
        epoch_end = step % spe == 0
        stopping = stop.decision(step, epoch_end)
        if step % config.log_every_steps == 0 or epoch_end or stopping:
          run.flush(step, pending, progress)
        if epoch_end:  # Validated and saved first, even when stopping.
          run.save(step, run.validate(step), force=bool(stopping))
          if run.early_stopped():
            logging.info("Early stopping: no validation gain for %d epochs.",
                         config.early_stopping_patience)
            break
        elif stopping:
          run.save(step, force=True)
        elif (config.checkpoint_every_steps
              and step % config.checkpoint_every_steps == 0):
          run.flush(step, pending, progress)
          run.save(step)
        if stopping:
          stopped_by = stopping
          break
      else:
        run.flush(step, pending, progress)
      if step == start_step and run.store.latest_step() is None:
        # A zero-step run still leaves a checkpoint to evaluate.
        run.save(step, run.validate(step, track_best=False))
    run.store.wait()  # Surfaces async save errors before the run counts as ended.
    status = "stopped" if stopped_by else "completed"
  finally:
    progress.close()
    run.writer.close()
    run.store.wait()  # Surfaces async save errors, even when leaving on an exception.
    run_info.end(status, step)
  result = {"completed": stopped_by is None, "step": step, "stopped_by": stopped_by,
            "best_step": run.store.best_step(),
            "val_accuracy": run.history["best_val_accuracy"], "run_info": run_info}
  run.store.close()
  return result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains into `workdir`, then evaluates `config.eval_checkpoint` on the test split
  and draws the report.

  The test split is touched only here, once, after model selection on validation.
  Returns the test metrics, or None when training was stopped by a signal.
  """
  result = train(config, workdir)
  if not result["completed"]:
    print(f"Stopped by {result['stopped_by']} at step {result['step']}; a checkpoint "
          f"was saved. Resume by running the same command again.")
    return None
  metrics = evaluate.evaluate_workdir(workdir, checkpoint=config.eval_checkpoint,
                                      split="test")
  result["run_info"].record_test(metrics)
  if jax.process_index() == 0:
    from mnist_jax import report  # matplotlib: loaded only when a report is drawn.
    try:
      paths = report.write_report(workdir, split="test",
                                  checkpoint=metrics["checkpoint_step"])
      print(f"Report: {paths.get('report')}")
    except Exception as e:  # pylint: disable=broad-except
      # The metrics are already written; a plotting failure must not lose them.
      logging.warning("Could not draw the report (%s: %s); metrics are in %s/eval.",
                      type(e).__name__, e, workdir)
  return metrics
