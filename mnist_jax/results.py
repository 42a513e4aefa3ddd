"""What a training workdir's files say: config, metrics per epoch, evaluations.

Read by `report.py` (figures, Markdown, comparisons); nothing here draws or trains.
"""

import collections
import csv
import glob
import json
import os
import re

import numpy as np

from mnist_jax.errors import WorkdirError
from mnist_jax import workdir as workdir_lib
from mnist_jax.workdir import Workdir, eval_path


def class_names(config: dict) -> tuple[str, ...]:
  """Display names of the workdir's classes (tfds' label names; indices if unknown)."""
  from mnist_jax import datasets
  n = config["model"]["num_classes"]
  try:
    names = datasets.class_names(config["data"]["name"], config["data"].get("tfds_dir"))
  except Exception:  # pylint: disable=broad-except
    names = []  # tfds unavailable or an unknown dataset: numbers still work.
  return tuple(names) if len(names) == n else tuple(map(str, range(n)))


def read_metrics(workdir: str) -> list[dict]:
  """Records of `metrics.jsonl`; a step logged twice (resumed run) keeps the last."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise WorkdirError(f"{workdir} has no metrics.jsonl; is it a training workdir?")
  latest = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        record = json.loads(line)
        latest[(record["split"], record["step"])] = record
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
  with open(path) as f:
    return json.load(f)


def read_predictions(workdir: str, split: str, step: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(index [n], label [n], probabilities [n, classes]) from the predictions CSV."""
  path = eval_path(workdir, split, step, "predictions.csv")
  with open(path) as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise WorkdirError(f"{path} is empty.")
  classes = sorted((k for k in rows[0] if k.startswith("prob_")),
                   key=lambda k: int(k[5:]))
  index = np.array([int(r["index"]) for r in rows])
  labels = np.array([int(r["label"]) for r in rows])
  probs = np.array([[float(r[c]) for c in classes] for r in rows])
  return index, labels, probs


def read_config(workdir: str) -> dict:
  """The run's config as a dict (older layouts migrated; one-line errors)."""
  return workdir_lib.read_config(workdir).to_dict()


def load_images(workdir: str, split: str) -> np.ndarray:
  """The split's uint8 images [n, 28, 28], loaded as the run's config describes."""
  from mnist_jax import data
  return data.load_splits(Workdir.open(workdir).config)[split].images
