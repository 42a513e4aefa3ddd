"""Evaluation of a checkpoint: classification metrics, files and a readable table.

`evaluate(workdir, checkpoint, split)` needs nothing but the workdir: it opens it
(`workdir.Workdir`), restores the checkpoint's parameters, runs every example of the
split and returns an `Evaluation`. `evaluate_workdir` (the command line's) also prints
its table and writes, named by the checkpoint's step so evaluations never overwrite
each other,

    WORKDIR/eval/<split>_step<N>_metrics.json     accuracy, loss, per-class / macro /
                                                  weighted precision, recall, F1,
                                                  confusion matrix, num_examples,
                                                  checkpoint_step
    WORKDIR/eval/<split>_step<N>_predictions.csv  index,source_index,label,predicted,
                                                  prob_0..prob_9

The files are written under the workdir's lock (`locks.py`): while another process
trains into the workdir, an evaluation is printed but not written.
"""

import csv
import dataclasses
import io
import json
import os

from absl import logging
import jax
import numpy as np

from mnist_jax import data
from mnist_jax import locks
from mnist_jax import models
from mnist_jax import parallel
from mnist_jax.errors import UserError, WorkdirError, WriteError, disk_errors
from mnist_jax.workdir import Workdir, eval_path, write_atomic

SPLITS = ("test", "validation")


def classification_metrics(labels: np.ndarray, predicted: np.ndarray,
                           num_classes: int) -> dict:
  """Accuracy, confusion matrix and precision / recall / F1 (per class, macro, weighted).

  Conventions follow scikit-learn's `precision_recall_fscore_support` with
  `zero_division=0`: a class never predicted has precision 0, one never present has
  recall 0; the weighted average weights by each class's number of true examples.
  """
  labels = np.asarray(labels, np.int64)
  predicted = np.asarray(predicted, np.int64)
  confusion = np.zeros((num_classes, num_classes), np.int64)  # [true, predicted]
  np.add.at(confusion, (labels, predicted), 1)
  true_pos = np.diag(confusion).astype(np.float64)
  predicted_count = confusion.sum(axis=0)
  support = confusion.sum(axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    precision = np.where(predicted_count > 0, true_pos / predicted_count, 0.0)
    recall = np.where(support > 0, true_pos / support, 0.0)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
  weights = support / max(support.sum(), 1)
  return {
      "accuracy": float(true_pos.sum() / max(len(labels), 1)),
      "num_examples": int(len(labels)),
      "precision": {"per_class": precision.tolist(), "macro": float(precision.mean()),
                    "weighted": float((precision * weights).sum())},
      "recall": {"per_class": recall.tolist(), "macro": float(recall.mean()),
                 "weighted": float((recall * weights).sum())},
      "f1": {"per_class": f1.tolist(), "macro": float(f1.mean()),
             "weighted": float((f1 * weights).sum())},
      "support": support.tolist(),
      "confusion_matrix": confusion.tolist(),
  }


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def format_table(metrics: dict, title: str) -> str:
  """A plain-text report: per-class precision / recall / F1, averages, confusion."""
  out = io.StringIO()
  out.write(f"{title}\n")
  out.write(f"accuracy {100 * metrics['accuracy']:.2f}%  loss {metrics['loss']:.4f}  "
            f"examples {metrics['num_examples']}  step {metrics['checkpoint_step']}\n\n")
  out.write(f"{'class':>8} {'precision':>10} {'recall':>10} {'f1':>10} {'support':>8}\n")
  p, r, f = metrics["precision"], metrics["recall"], metrics["f1"]
  for c, support in enumerate(metrics["support"]):
    out.write(f"{c:>8} {p['per_class'][c]:>10.4f} {r['per_class'][c]:>10.4f} "
              f"{f['per_class'][c]:>10.4f} {support:>8}\n")
  for avg in ("macro", "weighted"):
    out.write(f"{avg:>8} {p[avg]:>10.4f} {r[avg]:>10.4f} {f[avg]:>10.4f} "
              f"{metrics['num_examples']:>8}\n")
  out.write("\nconfusion matrix (rows: true, columns: predicted)\n")
  matrix = metrics["confusion_matrix"]
  out.write("     " + "".join(f"{c:>6}" for c in range(len(matrix))) + "\n")
  for c, row in enumerate(matrix):
    out.write(f"{c:>5}" + "".join(f"{v:>6}" for v in row) + "\n")
  return out.getvalue()


def write_results(workdir: str, split: str, metrics: dict, labels: np.ndarray,
                  probabilities: np.ndarray,
                  source_index: np.ndarray | None = None) -> tuple[str, str]:
  """Writes the metrics JSON and predictions CSV of `metrics["checkpoint_step"]`.

  CSV columns: index (row in mnist_jax's split), source_index (position in the
  official IDX file, to join with other tools; -1 if unknown), label, predicted,
  prob_0.. .

  Raises:
    WriteError: a full disk (or the like); names the file and what to run again.
  """
  if source_index is None:
    source_index = np.full(len(labels), -1)
  step = metrics["checkpoint_step"]
  metrics_path = eval_path(workdir, split, step, "metrics.json")
  csv_path = eval_path(workdir, split, step, "predictions.csv")
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["index", "source_index", "label", "predicted"] +
                  [f"prob_{c}" for c in range(probabilities.shape[1])])
  predicted = probabilities.argmax(-1)
  for i, (source, label, pred, probs) in enumerate(zip(source_index, labels, predicted,
                                                       probabilities)):
    writer.writerow([i, int(source), int(label), int(pred)] +
                    [f"{p:.6g}" for p in probs])
  try:
    with disk_errors(os.path.dirname(metrics_path)):
      os.makedirs(os.path.dirname(metrics_path), exist_ok=True)
    write_atomic(csv_path, buf.getvalue())
    write_atomic(metrics_path, json.dumps(metrics, indent=2))
  except WriteError as e:
    raise e.advise(
        f"the checkpoints in {os.path.join(workdir, 'checkpoints')} are intact: free "
        f"space and run `mnist-jax --mode=eval --workdir={workdir} --split={split} "
        f"--checkpoint={step}` (or the training command again)") from None
  return metrics_path, csv_path


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One checkpoint evaluated on every example of a split.

  Attributes:
    metrics: accuracy, loss, per-class / macro / weighted precision, recall, F1,
      support, confusion_matrix, num_examples, checkpoint_step, split, dataset, model
      (what `eval/<split>_step<N>_metrics.json` holds).
    labels: int [n], the true classes.
    probabilities: float64 [n, num_classes], softmax of the model's logits.
    source_index: int [n], each example's position in the official IDX files (-1:
      unknown).
  """
  metrics: dict
  labels: np.ndarray
  probabilities: np.ndarray
  source_index: np.ndarray

  @property
  def step(self) -> int:
    """The evaluated checkpoint's step."""
    return self.metrics["checkpoint_step"]

  @property
  def predicted(self) -> np.ndarray:
    """int [n], the most probable class of each example."""
    return self.probabilities.argmax(-1)


def evaluate(workdir: str, checkpoint: str | int = "best",
             split: str = "test") -> Evaluation:
  """Restores a checkpoint from `workdir` and evaluates it on every example of `split`;
  prints and writes nothing (`evaluate_workdir` does both).

  Args:
    workdir: a training workdir (holds config.json and checkpoints/).
    checkpoint: "best" (by validation accuracy), "latest" or a step number.
    split: "test" or "validation".

  Raises:
    WorkdirError: no such workdir, checkpoint or split.
  """
  if split not in SPLITS:
    raise WorkdirError(f"--split={split!r} is not one of: {', '.join(SPLITS)}.")
  wd = Workdir.open(workdir)
  config = wd.config
  placement = parallel.make_placement()
  logging.info("Devices: %s.", placement.describe())
  step, params = wd.restore_params(checkpoint, placement.state_sharding)
  splits = data.load_splits(config)
  if not len(splits[split]):
    raise WorkdirError(f"the {split} split is empty (data.validation_size=0).")
  constants = wd.preprocessing(
      lambda: data.preprocessing_for(config, splits["train"]))
  preprocess = data.make_preprocess(config.data, constants.mean, constants.std,
                                    constants.permutation)
  eval_step = placement.eval_step(models.build_model(config.model).apply, preprocess)
  logits, losses = parallel.predict(placement, eval_step, params, splits[split],
                                    config.eval_batch_size)
  labels = splits[split].labels
  probabilities = softmax(logits.astype(np.float64))
  metrics = classification_metrics(labels, probabilities.argmax(-1),
                                   config.model.num_classes)
  metrics.update({"loss": float(losses.mean()), "checkpoint_step": int(step),
                  "split": split, "dataset": config.data.name,
                  "model": config.model.name})
  return Evaluation(metrics, labels, probabilities, splits[split].source_index)


def evaluate_workdir(workdir: str, checkpoint: str | int = "best",
                     split: str = "test") -> dict:
  """`evaluate`, then (process 0) prints its table and writes its eval/ files.

  Returns:
    The metrics dict written to `eval/<split>_step<N>_metrics.json`.
  """
  result = evaluate(workdir, checkpoint, split)
  metrics = result.metrics
  if jax.process_index() == 0:
    print(format_table(metrics, f"{metrics['dataset']} {split} | {metrics['model']} "
                                f"| {workdir}"))
    _write_if_free(workdir, split, metrics, result.labels, result.probabilities,
                   result.source_index)
  return metrics


def _write_if_free(workdir: str, *results) -> None:
  """`write_results(workdir, *results)` under the workdir's lock; when another
  process holds it (a run still training) or it cannot be taken (a read-only
  workdir), the evaluation is only printed, with one warning saying why."""
  try:
    locks.acquire(workdir, "workdir", "evaluate again once it is free")
  except UserError as e:
    logging.warning("eval/ files not written: %s", e)
    return
  try:
    metrics_path, _ = write_results(workdir, *results)
  finally:
    locks.release(workdir)
  logging.info("Wrote %s", metrics_path)
