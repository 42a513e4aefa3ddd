"""What a training workdir's files say: config, metrics per epoch, evaluations.

Read by `report.py` (figures, Markdown, comparisons); nothing here draws or trains.
"""

import collections
import csv
import glob
import json
import os
import re
from typing import NamedTuple

from absl import logging
import numpy as np

from mnist_jax.errors import DamagedFileError, WorkdirError
from mnist_jax import workdir as workdir_lib
from mnist_jax.workdir import Workdir, eval_path


# What report.py reads of an evaluation's metrics.json.
EVAL_KEYS = ("accuracy", "loss", "num_examples", "precision", "recall", "f1", "support",
             "confusion_matrix")


def class_names(config: dict) -> tuple[str, ...]:
  """Display names of the workdir's classes (tfds' label names; indices if unknown)."""
  from mnist_jax import datasets
  n = config["model"]["num_classes"]
  try:
    names = datasets.class_names(config["data"]["name"], config["data"].get("tfds_dir"))
  except Exception:  # pylint: disable=broad-except
    names = []  # tfds unavailable or an unknown dataset: numbers still work.
  return tuple(names) if len(names) == n else tuple(map(str, range(n)))


# How tables and titles name the built-in cells; others show their own name (an
# import path shows its class name).
CELL_NAMES = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN",
              "layernorm_lstm": "LayerNorm LSTM", "irnn": "IRNN", "indrnn": "IndRNN",
              "lru": "LRU block", "min_gru": "minGRU", "min_lstm": "minLSTM"}


def describe_model(model: dict) -> str:
  """A config's model in words: 'LSTM(100), 1 layer', 'GRU(160), 2 layers,
  bidirectional' (hidden size in brackets, per direction)."""
  name = CELL_NAMES.get(model["name"], model["name"].rpartition(":")[2])
  layers = model.get("num_layers", 1)
  text = f"{name}({model['hidden_size']}), {layers} layer{'s' if layers != 1 else ''}"
  return text + (", bidirectional" if model.get("bidirectional") else "")


def read_json(path: str, fix: str, kind: type = dict):
  """The JSON value in `path`, a `kind`.

  Raises:
    DamagedFileError: unreadable, not JSON (e.g. truncated) or not a `kind`; one line
      naming `path`, then `fix` (what to do).
  """
  try:
    with open(path, errors="strict") as f:
      value = json.load(f)
    problem = None if isinstance(value, kind) else f"not a JSON {kind.__name__}"
  except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError.
    problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  if problem:
    raise DamagedFileError(f"{path} is damaged ({problem}); {fix}")
  return value


def read_metrics(workdir: str) -> list[dict]:
  """Records of `metrics.jsonl`; a step logged twice (resumed run) keeps the last.

  Lines that are not a whole record are skipped with one warning: a run killed while
  logging leaves a truncated last line, which its resumed run's first record extends.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise WorkdirError(f"{workdir} has no metrics.jsonl; is it a training workdir?")
  latest, damaged = {}, 0
  with open(path, errors="replace") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
        latest[(record["split"], record["step"])] = record
      except (ValueError, KeyError, TypeError):
        damaged += 1
  if damaged:
    logging.warning("%s: skipped %d damaged line(s) (a run killed while logging).",
                    path, damaged)
  return sorted(latest.values(), key=lambda r: (r["step"], r["split"]))


def per_epoch(records: list[dict]) -> dict[str, dict[str, list[float]]]:
  """Train metrics averaged per epoch and validation metrics at each epoch's end.

  Returns:
    {"train": {"epoch": [...], "loss": [...], "accuracy": [...]}, "validation": {...}};
    epoch e covers the logged steps with epoch in (e - 1, e].
  """
  out = {}
  for split in ("train", "validation"):
    groups = collections.defaultdict(list)
    for r in records:
      if r["split"] == split and "epoch" in r:
        groups[int(np.ceil(r["epoch"] - 1e-9))].append(r)
    epochs = sorted(groups)
    out[split] = {"epoch": epochs}
    for key in ("loss", "accuracy"):
      out[split][key] = [float(np.mean([r[key] for r in groups[e]])) for e in epochs]
  return out


def evaluated_step(workdir: str, split: str,
                   checkpoint: str | int | None = None) -> int | None:
  """The step whose `split` evaluation to report.

  Args:
    workdir: a training workdir.
    split: "test" or "validation".
    checkpoint: "best", "latest" or a step; None: the most recent evaluation.

  Returns:
    The step, or None when `checkpoint` is None and `split` was never evaluated.
  """
  if checkpoint is None:
    found = glob.glob(os.path.join(workdir, "eval", f"{split}_step*_metrics.json"))
    if not found:
      return None
    newest = max(found, key=os.path.getmtime)
    return int(re.search(r"_step(\d+)_metrics\.json$", newest).group(1))
  if str(checkpoint).isdigit():
    return int(checkpoint)
  store = Workdir.open(workdir).checkpoint_store(read_only=True)
  try:
    return store.resolve_step(checkpoint)
  finally:
    store.close()


def read_eval(workdir: str, split: str, step: int | None = None) -> dict | None:
  """The metrics of `split` at `step` (None: the most recent evaluation), or None."""
  step = evaluated_step(workdir, split) if step is None else step
  path = step is not None and eval_path(workdir, split, step, "metrics.json")
  if not path or not os.path.exists(path):
    return None
  fix = (f"evaluate again: mnist-jax --mode=eval --workdir={workdir} --split={split} "
         f"--checkpoint={step}")
  metrics = read_json(path, fix)
  missing = [k for k in EVAL_KEYS if k not in metrics]
  if missing:
    raise DamagedFileError(f"{path} is damaged (no {', '.join(missing)}); {fix}")
  return metrics


class Predictions(NamedTuple):
  """An evaluation's predictions CSV as arrays, one row per example.

  Attributes:
    index: int [n], the row in mnist_jax's split.
    labels: int [n], the true classes.
    probabilities: float [n, num_classes].
    source_index: int [n], the position in the official IDX files (-1: unknown).
  """
  index: np.ndarray
  labels: np.ndarray
  probabilities: np.ndarray
  source_index: np.ndarray


def read_predictions(workdir: str, split: str, step: int | None = None) -> Predictions:
  """The predictions of `split` at `step` (None: the most recent evaluation).

  Raises:
    WorkdirError: never evaluated, or an empty file; DamagedFileError: unreadable.
  """
  step = evaluated_step(workdir, split) if step is None else step
  if step is None:
    raise WorkdirError(f"{workdir}: the {split} split was never evaluated; run "
                       f"mnist-jax --mode=eval --workdir={workdir} --split={split}")
  path = eval_path(workdir, split, step, "predictions.csv")
  try:
    with open(path) as f:
      rows = list(csv.DictReader(f))
    classes = sorted((k for k in (rows[0] if rows else ()) if k.startswith("prob_")),
                     key=lambda k: int(k[5:]))
    columns = {k: np.array([int(r[k]) for r in rows], np.int64)
               for k in ("index", "label", "source_index")}
    probs = np.array([[float(r[c]) for c in classes] for r in rows])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DamagedFileError(
        f"{path} cannot be read ({type(e).__name__}: {e}); evaluate again: mnist-jax "
        f"--mode=eval --workdir={workdir} --split={split} --checkpoint={step}"
    ) from None
  if not rows or not classes:
    raise WorkdirError(f"{path} is empty.")
  return Predictions(columns["index"], columns["label"], probs,
                     columns["source_index"])


def read_config(workdir: str) -> dict:
  """The run's config as a dict (older layouts migrated; one-line errors)."""
  return workdir_lib.read_config(workdir).to_dict()


def load_images(workdir: str, split: str) -> np.ndarray:
  """The split's uint8 images [n, 28, 28], loaded as the run's config describes."""
  from mnist_jax import data
  return data.load_splits(Workdir.open(workdir).config)[split].images
