"""Figures and a Markdown report from a training workdir, and a comparison of several.

`write_report(workdir)` reads what training and evaluation left in the workdir
(`config.json`, `metrics.jsonl`, `eval/<split>_step<N>_metrics.json` and
`_predictions.csv`) and writes

    WORKDIR/report/learning_curves.png        train / validation loss and accuracy
    WORKDIR/report/confusion_matrix.png       counts, rows true, columns predicted
    WORKDIR/report/most_confident_errors.png  the wrong predictions made most surely
    WORKDIR/report/report.md                  the figures with the metrics tables

`compare(workdirs, out_dir)` writes `comparison.md` (one row per run) and
`comparison.png` (validation accuracy and training loss per epoch, one line per run).
Only the error grid needs the dataset (its images); everything else reads files.
Both write under the lock of the folder they write into (`locks.py`).
"""

import os
from typing import Sequence

from absl import logging
import matplotlib.ticker
# Figures are built without pyplot: no backend is chosen or changed, so drawing a
# report leaves a notebook's inline plots (or any GUI) as they were.
from matplotlib.figure import Figure
import numpy as np

from mnist_jax import locks
from mnist_jax.errors import DamagedFileError, UserError, WriteError, disk_errors
from mnist_jax.results import (class_names, describe_model, evaluated_step,
                               load_images, per_epoch,
                               read_config, read_eval, read_metrics, read_predictions)
from mnist_jax.workdir import write_atomic

REPORT_DIR = "report"


def subplots(*args, figsize: tuple[float, float], **kwargs):
  """(figure, axes) like pyplot.subplots, for a figure that is only saved."""
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(*args, **kwargs)
NUM_ERRORS = 24  # Images in the most-confident-errors grid.


# ----------------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------------
def plot_learning_curves(curves: dict, path: str, title: str = "") -> None:
  fig, axes = subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ("loss", "accuracy")):
    for split, style in (("train", "o-"), ("validation", "s--")):
      c = curves[split]
      if c["epoch"]:
        values = np.asarray(c[key]) * (100 if key == "accuracy" else 1)
        ax.plot(c["epoch"], values, style, label=split)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)" if key == "accuracy" else "cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_title("loss")
  axes[1].set_title("accuracy")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  with disk_errors(path):
    fig.savefig(path, dpi=100)


def plot_confusion_matrix(matrix: np.ndarray, path: str, title: str = "",
                          names: Sequence[str] | None = None) -> None:
  matrix = np.asarray(matrix)
  n = len(matrix)
  names = list(names) if names is not None else [str(i) for i in range(n)]
  long_names = max(map(len, names)) > 2  # Words, not digits: slant them.
  fig, ax = subplots(figsize=(7, 6))
  image = ax.imshow(matrix, cmap="Blues")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  threshold = matrix.max() / 2
  for i in range(n):
    for j in range(n):
      ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
              color="white" if matrix[i, j] > threshold else "black")
  ax.set_xticks(range(n), names, rotation=45 if long_names else 0,
                ha="right" if long_names else "center")
  ax.set_yticks(range(n), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title or "confusion matrix")
  fig.tight_layout()
  with disk_errors(path):
    fig.savefig(path, dpi=100)


def most_confident_errors(labels: np.ndarray, probs: np.ndarray,
                          k: int = NUM_ERRORS) -> np.ndarray:
  """Row numbers of the k wrong predictions with the highest predicted probability."""
  predicted = probs.argmax(-1)
  wrong = np.flatnonzero(predicted != labels)
  confidence = probs[wrong, predicted[wrong]]
  return wrong[np.argsort(-confidence, kind="stable")[:k]]


def plot_errors(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                path: str, title: str = "",
                names: Sequence[str] | None = None) -> None:
  """A grid of images titled 'true T / pred P (prob)'; `images` is [k, 28, 28].

  One axes showing one mosaic: a subplot per image made this figure the slowest part
  of the report drawn after every training run.
  """
  names = list(names) if names is not None else [str(i) for i in range(probs.shape[-1])]
  k, (height, width) = len(images), images.shape[1:]
  cols = min(max(k, 1), 8)
  rows = max(1, int(np.ceil(k / cols)))
  cell_h, cell_w = height + 14, width + 6  # Room for the two-line title, a margin.
  mosaic = np.zeros((rows * cell_h, cols * cell_w), np.float32)
  fig, ax = subplots(figsize=(1.6 * cols, 2.0 * rows + 0.4))
  for i, (image, label, p) in enumerate(zip(images, labels, probs)):
    top, left = (i // cols) * cell_h + 13, (i % cols) * cell_w + 3
    mosaic[top:top + height, left:left + width] = image
    pred = int(p.argmax())
    ax.text(left + width / 2, top - 1, f"true {names[label]}\npred {names[pred]} "
            f"p={p[pred]:.2f}", ha="center", va="bottom", fontsize=8)
  ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
  ax.axis("off")
  if k == 0:
    ax.text(mosaic.shape[1] / 2, mosaic.shape[0] / 2, "no errors", ha="center",
            va="center")
  ax.set_title(title or "most confident errors", fontsize=10)
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92)
  with disk_errors(path):
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------------
# Markdown.
# ----------------------------------------------------------------------------------
def _pct(value) -> str:
  return "–" if value is None else f"{100 * value:.2f}%"


def _summary(config: dict) -> str:
  """'LSTM(100), 1 layer on mnist rows'."""
  d = config["data"]
  return f"{describe_model(config['model'])} on {d['name']} {d['sequence']}"


def _metrics_table(metrics: dict, names: Sequence[str]) -> str:
  lines = ["| metric | value |", "|---|---|"]
  lines += [f"| accuracy | {_pct(metrics['accuracy'])} |",
            f"| loss | {metrics['loss']:.4f} |",
            f"| macro F1 | {metrics['f1']['macro']:.4f} |",
            f"| weighted F1 | {metrics['f1']['weighted']:.4f} |",
            f"| examples | {metrics['num_examples']} |",
            f"| checkpoint step | {metrics.get('checkpoint_step', '–')} |"]
  lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
  p, r, f = metrics["precision"], metrics["recall"], metrics["f1"]
  for c, support in enumerate(metrics["support"]):
    label = str(c) if names[c] == str(c) else f"{c} {names[c]}"
    lines.append(f"| {label} | {p['per_class'][c]:.4f} | {r['per_class'][c]:.4f} | "
                 f"{f['per_class'][c]:.4f} | {support} |")
  return "\n".join(lines)


def _evaluation_section(workdir: str, split: str, step: int, metrics: dict,
                        out_dir: str, names: Sequence[str], images, paths: dict
                        ) -> list[str]:
  """Markdown (and figures) for one evaluation: metrics, confusion matrix, errors."""
  paths["confusion_matrix"] = os.path.join(out_dir, "confusion_matrix.png")
  plot_confusion_matrix(np.array(metrics["confusion_matrix"]),
                        paths["confusion_matrix"],
                        f"{split} confusion matrix (step {step})", names)
  md = [f"## {split.capitalize()} metrics (checkpoint step {step})", "",
        _metrics_table(metrics, names), "", "## Confusion matrix", "",
        "Rows: true class; columns: predicted class.", "",
        "![confusion matrix](confusion_matrix.png)", "", "## Most confident errors", ""]
  try:
    index, labels, probs, _ = read_predictions(workdir, split, step)
    rows = most_confident_errors(labels, probs)
    if images is None and len(rows):
      images = load_images(workdir, split)
    grid = (np.asarray(images)[index[rows]] if len(rows)
            else np.zeros((0, 28, 28), np.uint8))
  except UserError as e:  # No dataset here, damaged predictions: the rest is useful.
    return md + [f"Not drawn: {e}", ""]
  paths["most_confident_errors"] = os.path.join(out_dir, "most_confident_errors.png")
  plot_errors(grid, labels[rows], probs[rows], paths["most_confident_errors"],
              f"{split}: the {len(rows)} most confident errors", names)
  return md + [f"The {len(rows)} wrong {split} predictions with the highest predicted "
               f"probability (of {int((probs.argmax(-1) != labels).sum())} errors).",
               "", "![most confident errors](most_confident_errors.png)", ""]


def _evaluation_md(workdir: str, split: str | None, checkpoint: str | int | None,
                   out_dir: str, names: Sequence[str], images, paths: dict
                   ) -> list[str]:
  """The report's evaluation part; a note where there is none or its file is damaged."""
  if split is None:
    split = "test" if evaluated_step(workdir, "test") is not None else "validation"
  step = evaluated_step(workdir, split, checkpoint)
  try:
    metrics = None if step is None else read_eval(workdir, split, step)
  except DamagedFileError as e:
    logging.warning("%s", e)
    return [f"Not reported: {e}", ""]
  if metrics is None:
    which = "" if step is None else f" --checkpoint={step}"
    at = "" if step is None else f" at step {step}"
    return [f"No evaluation of the {split} split{at}: run `--mode=eval --split={split}"
            f"{which}` for the metrics, confusion matrix and errors.", ""]
  return _evaluation_section(workdir, split, step, metrics, out_dir, names, images,
                             paths)


def write_report(workdir: str, split: str | None = None,
                 checkpoint: str | int | None = None,
                 images: np.ndarray | None = None) -> dict[str, str]:
  """Writes WORKDIR/report/{learning_curves,confusion_matrix,most_confident_errors}.png
  and report.md.

  Args:
    workdir: a training workdir, evaluated (`--mode=eval`) for the figures that need
      predictions; without an evaluation only the learning curves are drawn.
    split: the evaluated split to report; None: "test" if evaluated, else "validation".
    checkpoint: whose evaluation: "best", "latest" or a step; None: the most recent.
    images: the split's uint8 images [n, 28, 28]; None loads them from the dataset as
      the workdir's config describes (needed only for the error grid).

  Returns:
    {"learning_curves" | "confusion_matrix" | "most_confident_errors" | "report": path}
    for each file written.

  Raises:
    WorkdirError: not a training workdir.
    WriteError: a full disk (or the like); the message says what is intact.
  """
  config = read_config(workdir)
  with locks.locked(workdir, "workdir", "draw the report once it is free"):
    try:
      return _write_report(workdir, config, split, checkpoint, images)
    except WriteError as e:
      raise e.advise(f"the training and evaluation files in {workdir} are intact: "
                     f"free space and run `mnist-jax --mode=report --workdir={workdir}`"
                     ) from None


def _write_report(workdir: str, config: dict, split: str | None,
                  checkpoint: str | int | None,
                  images: np.ndarray | None) -> dict[str, str]:
  out_dir = os.path.join(workdir, REPORT_DIR)
  with disk_errors(out_dir):
    os.makedirs(out_dir, exist_ok=True)
  title = _summary(config)
  paths = {"learning_curves": os.path.join(out_dir, "learning_curves.png"),
           "report": os.path.join(out_dir, "report.md")}
  curves = per_epoch(read_metrics(workdir))
  plot_learning_curves(curves, paths["learning_curves"], title)
  md = [f"# Report: {os.path.basename(os.path.normpath(workdir))}", "",
        f"{title}; workdir `{os.path.abspath(workdir)}`.", "",
        "## Learning curves", "", "![learning curves](learning_curves.png)", ""]
  val = curves["validation"]
  if val["epoch"]:
    best = int(np.argmax(val["accuracy"]))
    md += [f"Best validation accuracy {_pct(val['accuracy'][best])} at epoch "
           f"{val['epoch'][best]} of {val['epoch'][-1]}.", ""]
  md += _evaluation_md(workdir, split, checkpoint, out_dir, class_names(config),
                       images, paths)
  write_atomic(paths["report"], "\n".join(md))
  return paths


def compare(workdirs: Sequence[str], out_dir: str) -> dict[str, str]:
  """Compares runs: OUT_DIR/comparison.md (a table) and comparison.png (curves).

  Args:
    workdirs: training workdirs; the test columns need `--mode=eval` to have run.
    out_dir: created if missing.

  Returns:
    {"table": path of comparison.md, "plot": path of comparison.png}.

  Raises:
    WorkdirError: a path is not a training workdir.
  """
  if not workdirs:
    raise UserError("compare needs at least one workdir.")
  os.makedirs(out_dir, exist_ok=True)
  with locks.locked(out_dir, "folder", "write the comparison elsewhere"):
    try:
      return _compare(workdirs, out_dir)
    except WriteError as e:
      raise e.advise("the workdirs compared are untouched: free space and run the "
                     "same command again") from None


def _compare(workdirs: Sequence[str], out_dir: str) -> dict[str, str]:
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(set(names)) < len(names):  # Same basenames: fall back to the full paths.
    names = [os.path.normpath(w) for w in workdirs]
  md = ["| run | model | data | epochs | best val acc | test acc | test loss | "
        "test macro F1 |", "|---|---|---|---|---|---|---|---|"]
  fig, axes = subplots(1, 2, figsize=(11, 4))
  for name, workdir in zip(names, workdirs):
    config = read_config(workdir)
    curves = per_epoch(read_metrics(workdir))
    val, tr = curves["validation"], curves["train"]
    try:
      test = read_eval(workdir, "test")
      test_cols = ([_pct(test["accuracy"]), f"{test['loss']:.4f}",
                    f"{test['f1']['macro']:.4f}"] if test else ["–"] * 3)
    except DamagedFileError as e:
      logging.warning("%s", e)
      test_cols = ["damaged file"] * 3
    epochs = max(val["epoch"] + tr["epoch"], default=0)
    model = _summary(config).split(" on ")[0]
    md.append(f"| {name} | {model} | {config['data']['name']} "
              f"{config['data']['sequence']} | {epochs} | "
              f"{_pct(max(val['accuracy'], default=None))} | "
              + " | ".join(test_cols) + " |")
    if val["epoch"]:
      axes[0].plot(val["epoch"], 100 * np.asarray(val["accuracy"]), "o-", label=name)
    if tr["epoch"]:
      axes[1].plot(tr["epoch"], tr["loss"], "o-", label=name)
  for ax, label in zip(axes, ("validation accuracy (%)", "train loss")):
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  paths = {"table": os.path.join(out_dir, "comparison.md"),
           "plot": os.path.join(out_dir, "comparison.png")}
  with disk_errors(paths["plot"]):
    fig.savefig(paths["plot"], dpi=100)
  write_atomic(paths["table"],
               "# Comparison\n\n" + "\n".join(md) + "\n\n![curves](comparison.png)\n")
  return paths
