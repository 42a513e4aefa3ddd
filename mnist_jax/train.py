"""The training loop, and `train_and_evaluate`: train, then evaluate and report.

`train(config, workdir)` trains into a workdir (see `workdir.py` for its files),
resuming from its latest checkpoint. The steps are `steps.py`'s, placed on the devices
by `parallel.py`; metrics go through `metric_writer.py` (and `wandb_writer.py` when
config.wandb.enabled), signals through `preemption.py`.
"""

import contextlib

from absl import logging
import jax
import ml_collections
import numpy as np

from mnist_jax import checkpoints
from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import evaluate
from mnist_jax import models
from mnist_jax import parallel
from mnist_jax import steps
from mnist_jax import wandb_writer
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import NonFiniteError
from mnist_jax.metric_writer import MetricWriter, Progress
from mnist_jax.preemption import StopSignal
from mnist_jax.provenance import RunInfo
from mnist_jax.workdir import Workdir


class _Run:
  """One training run's pieces, so the loop below reads as the algorithm it is."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, tracker=None,
               splits: dict | None = None, resume: bool = True):
    """`splits`: already loaded (a population shares them). `resume`: start from the
    latest checkpoint now; False leaves that to a `resume(step)` call."""
    self.config = config
    self.placement = parallel.make_placement()
    logging.info("Devices: %s.", self.placement.describe())
    self.placement.check_batch_size(config.batch_size, "batch_size")
    self.placement.check_batch_size(config.eval_batch_size, "eval_batch_size")
    self.workdir = Workdir.create(config, workdir)
    self.splits = data.load_splits(config) if splits is None else splits
    constants = self.workdir.preprocessing(
        lambda: data.preprocessing_for(config, self.splits["train"]), save=True)
    preprocess = data.make_preprocess(config.data, constants.mean, constants.std,
                                      constants.permutation)
    self.order = data.TrainOrder(config.seed, len(self.splits["train"]),
                                 config.batch_size)
    self.spe = self.order.steps_per_epoch
    self.store = self.workdir.checkpoint_store()
    self.tracker, self.writer = tracker, None
    # `steps.train_step`'s keywords (a population vmaps it with the same ones).
    self.step_options = {"preprocess": preprocess,
                         "label_smoothing": config.optimizer.label_smoothing,
                         "augment_max_shift": config.data.augment_max_shift}
    apply_fn = models.build_model(config.model).apply
    self.train_step = self.placement.train_step(apply_fn, **self.step_options)
    self.eval_step = self.placement.eval_step(apply_fn, preprocess)
    if resume:
      self.resume(self.store.latest_step())

  def resume(self, step: int | None) -> None:
    """Starts from the checkpoint at `step` (None: the initial state) and opens the
    metric writer, which drops the rows a killed session logged after `step` (they
    are logged again)."""
    state = steps.create_train_state(self.config, jax.random.PRNGKey(self.config.seed),
                                     self.spe)
    self.state = self.placement.put_state(state)
    self.history = {"best_val_accuracy": None, "epochs_since_best": 0}
    if step is not None:
      self.state, meta = self.store.restore(step, self.state)
      self.history.update(meta.get("history", {}))
      logging.info("Resumed from checkpoint at step %d (epoch %.2f).", step,
                   step / self.spe)
    self.step = int(jax.device_get(self.state.step))  # The last step taken.
    if self.writer is not None:
      self.writer.close()
    self.writer = MetricWriter(self.workdir.path, resumed_from=step, also=self.tracker)

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
    # Model selection looks at what evaluation will use: the EMA when eval_params says.
    params = steps.eval_params(self.state.params, self.state.opt_state,
                               self.config.eval_params)
    logits, losses = parallel.predict(self.placement, self.eval_step, params, split,
                                      self.config.eval_batch_size)
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


def _run_steps(run: _Run, total_steps: int, progress: Progress) -> str | None:
  """Trains from `run.step` to `total_steps`, validating and saving at epoch ends.

  Returns the signal the run stopped for (it is saved, resumable), or None when it
  reached `total_steps` or stopped early. A run with no step to take saves its
  initial state, so that there is a checkpoint to evaluate.
  """
  config, spe = run.config, run.spe
  pending = []  # Device metrics since the last flush (no per-step host sync).
  with StopSignal() as stop:
    for batch in data.train_batches(run.splits["train"], run.order, run.step,
                                    total_steps, run.placement.put_batch):
      run.state, metrics = run.train_step(run.state, batch)
      pending.append(metrics)
      run.step += 1
      step = run.step
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
          return None
      elif stopping:
        run.save(step, force=True)
      elif (config.checkpoint_every_steps
            and step % config.checkpoint_every_steps == 0):
        run.flush(step, pending, progress)
        run.save(step)
      if stopping:
        return stopping
    run.flush(run.step, pending, progress)
    if run.store.latest_step() is None:  # A zero-step run still leaves a checkpoint.
      run.save(run.step, run.validate(run.step, track_best=False))
  return None


def train(config: ml_collections.ConfigDict, workdir: str, tracker=None) -> dict:
  """Trains (or resumes) the experiment in `workdir`.

  Args:
    config: the experiment config (resolved and validated here).
    workdir: where config, metrics and checkpoints live.
    tracker: the W&B run to log to (`wandb_writer.session`); None: one of its own
      for this call when config.wandb.enabled.

  Returns:
    {"completed": bool, "step": int, "stopped_by": signal name or None,
     "best_step": int | None, "val_accuracy": float | None,
     "run_info": the session's `provenance.RunInfo`}.

  Raises:
    UserError subclasses for bad config, data, workdir or non-finite training.
  """
  config = config_lib.resolve(config)
  with workdir_lib.writing(workdir), (
      contextlib.nullcontext(tracker) if tracker is not None
      else wandb_writer.session(config, workdir)) as tracker:
    return _train(config, workdir, tracker)


def _train(config: ml_collections.ConfigDict, workdir: str, tracker) -> dict:
  run = _Run(config, workdir, tracker)
  run_info = RunInfo(workdir, run.placement.describe())
  start_step = run.step
  total_steps = run.spe * run.config.num_epochs
  if run.early_stopped():  # Running the command again must not train on.
    logging.info("Early-stopped at step %d (no validation gain for %d epochs); "
                 "nothing left to train.", start_step,
                 run.history["epochs_since_best"])
    total_steps = start_step
  progress = Progress(start_step, total_steps, run.config.batch_size)
  stopped_by, status = None, "failed"
  try:
    stopped_by = _run_steps(run, total_steps, progress)
    run.store.wait()  # Surfaces async save errors before the run counts as ended.
    status = "stopped" if stopped_by else "completed"
  finally:
    progress.close()
    run.writer.close()
    run.store.wait()  # Surfaces async save errors, even when leaving on an exception.
    run_info.end(status, run.step)
  result = {"completed": stopped_by is None, "step": run.step, "stopped_by": stopped_by,
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
  config = config_lib.resolve(config)  # A bad config creates no folder.
  with workdir_lib.writing(workdir):  # Held from training through the report.
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  with wandb_writer.session(config, workdir) as tracker:  # Training and test metrics.
    result = train(config, workdir, tracker)
    metrics = evaluate_trained(config, workdir, result, tracker)
  if metrics is not None:
    draw_report(workdir, metrics)
  return metrics


def evaluate_trained(config: ml_collections.ConfigDict, workdir: str, result: dict,
                     tracker=None) -> dict | None:
  """The test evaluation of `config.eval_checkpoint` after `train` returned `result`,
  recorded in run_info.json (and W&B); None, with a line on how to resume, when a
  signal stopped training. The caller holds the workdir's lock."""
  if not result["completed"]:
    print(f"Stopped by {result['stopped_by']} at step {result['step']}; a "
          f"checkpoint was saved. Resume by running the same command again.")
    return None
  metrics = evaluate.evaluate_workdir(workdir, checkpoint=config.eval_checkpoint,
                                      split="test")
  result["run_info"].record_test(metrics)
  if tracker is not None:
    tracker.record_test(metrics)
  return metrics


def draw_report(workdir: str, metrics: dict) -> None:
  """WORKDIR/report/ for the evaluated checkpoint (process 0); a plotting failure
  only warns, since the metrics are already written."""
  if jax.process_index() != 0:
    return
  from mnist_jax import report  # matplotlib: loaded only when a report is drawn.
  try:
    paths = report.write_report(workdir, split="test",
                                checkpoint=metrics["checkpoint_step"])
    print(f"Report: {paths.get('report')}")
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Could not draw the report (%s: %s); metrics are in %s/eval.",
                    type(e).__name__, e, workdir)
