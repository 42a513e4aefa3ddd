"""The Python API: what a script or notebook calls (docs/api.md shows each in use).

    from mnist_jax import api
    config = api.load_config("experiments/seed_lstm.py", num_epochs=1)
    metrics = api.train(config, "runs/api")          # test metrics of the best checkpoint
    result = api.evaluate("runs/api")                # nothing printed or written
    curves = api.learning_curves("runs/api")

Everything that names a checkpoint takes `checkpoint`: "best" (the default: best
validation accuracy), "latest" or a step number, as `--checkpoint` does.
"""

from typing import Any

import ml_collections

from mnist_jax import config as config_lib
from mnist_jax import evaluate as evaluate_lib
from mnist_jax import locks
from mnist_jax import results
from mnist_jax.errors import WorkdirError
from mnist_jax.evaluate import Evaluation
from mnist_jax.predict import Predictor, load_digit
from mnist_jax.results import Predictions

__all__ = ["Evaluation", "Predictions", "Predictor", "evaluate", "learning_curves",
           "load_config", "load_digit", "read_eval", "read_metrics",
           "read_predictions", "train"]


def load_config(path: str | None = None, **overrides: Any) -> ml_collections.ConfigDict:
  """The base config, or an experiment file's, with dotted overrides applied.

  Args:
    path: an experiment file (e.g. "experiments/seed_lstm.py"); None: the base config.
    **overrides: field values; nested fields by dotted name, e.g.
      `**{"model.hidden_size": 32}`.

  Raises:
    ConfigError: an unknown field or a value of the wrong type.
  """
  config = (config_lib.get_config() if path is None
            else config_lib.load_experiment(path).get_config())
  return config_lib.override(config, overrides)


def train(config: ml_collections.ConfigDict, workdir: str,
          evaluate: bool = True) -> dict | None:
  """Trains `config` into `workdir` (resuming what is there), as `mnist-jax` does.

  Args:
    config: from `load_config`; validated before any work.
    workdir: created if missing; must hold this same experiment if it exists.
    evaluate: then evaluate `config.eval_checkpoint` on the test split (writing
      eval/ and printing its table) and draw report/.

  Returns:
    With `evaluate`, the test metrics (as `read_eval`), or None if a signal stopped
    training; else {"completed", "step", "stopped_by", "best_step", "val_accuracy"}.
  """
  from mnist_jax import train as train_lib  # Imports the models and steps.
  if evaluate:
    return train_lib.train_and_evaluate(config, workdir)
  result = train_lib.train(config, workdir)
  result.pop("run_info")
  return result


def evaluate(workdir: str, checkpoint: str | int = "best", split: str = "test",
             write: bool = False, verbose: bool = False) -> Evaluation:
  """Evaluates a checkpoint on every example of `split`.

  Args:
    workdir: a training workdir.
    checkpoint: "best", "latest" or a step number.
    split: "test" or "validation".
    write: also write eval/<split>_step<N>_{metrics.json,predictions.csv}.
    verbose: also print the per-class table and confusion matrix.

  Returns:
    `.metrics` (accuracy, precision / recall / F1 per class, macro and weighted,
    confusion_matrix, ...), `.labels` [n], `.probabilities` [n, 10], `.predicted` [n],
    `.source_index` [n], `.step`.
  """
  result = evaluate_lib.evaluate(workdir, checkpoint, split)
  if verbose:
    metrics = result.metrics
    print(evaluate_lib.format_table(metrics, f"{metrics['dataset']} {split} | "
                                             f"{metrics['model']} | {workdir}"))
  if write:
    with locks.locked(workdir, "workdir", "evaluate again once it is free"):
      evaluate_lib.write_results(workdir, split, result.metrics, result.labels,
                                 result.probabilities, result.source_index)
  return result


def _evaluated_step(workdir: str, split: str, checkpoint: str | int) -> int:
  step = results.evaluated_step(workdir, split, checkpoint)
  if results.read_eval(workdir, split, step) is None:
    raise WorkdirError(
        f"{workdir}: checkpoint {checkpoint} (step {step}) has no saved {split} "
        f"evaluation; call evaluate(workdir, {checkpoint!r}, {split!r}, write=True).")
  return step


def read_eval(workdir: str, split: str = "test",
              checkpoint: str | int = "best") -> dict:
  """The saved metrics of a checkpoint's evaluation (what `evaluate` returns as
  `.metrics`), without recomputing anything.

  Raises:
    WorkdirError: that checkpoint's `split` was never evaluated (the message says how).
  """
  return results.read_eval(workdir, split, _evaluated_step(workdir, split, checkpoint))


def read_predictions(workdir: str, split: str = "test",
                     checkpoint: str | int = "best") -> Predictions:
  """The saved predictions of a checkpoint's evaluation: `.index` [n], `.labels` [n],
  `.probabilities` [n, 10], `.source_index` [n].

  Raises:
    WorkdirError: that checkpoint's `split` was never evaluated (the message says how).
  """
  return results.read_predictions(workdir, split,
                                  _evaluated_step(workdir, split, checkpoint))


def read_metrics(workdir: str) -> list[dict]:
  """metrics.jsonl: one dict per (step, split), {"step", "split", "epoch", "loss",
  "accuracy", ...}, in step order."""
  return results.read_metrics(workdir)


def learning_curves(workdir: str) -> dict[str, dict[str, list[float]]]:
  """Per epoch: {"train": {"epoch", "loss", "accuracy"}, "validation": {...}}, lists
  of equal length (train averaged over the epoch's steps, validation at its end)."""
  return results.per_epoch(results.read_metrics(workdir))
