"""A sweep's results in one table: runs grouped by setting, seeds as mean ± std.

`summarize(sweep_dir)` reads each run's `run_info.json` (status, wall time, the test
metrics of the checkpoint it reported) and `metrics.jsonl` (validation per epoch) and
writes

    SWEEP_DIR/summary.md          one row per setting: mean ± std, min, max
    SWEEP_DIR/summary.csv         the same numbers, one row per setting
    SWEEP_DIR/runs.csv            one row per run
    SWEEP_DIR/accuracy.png        test accuracy per setting, mean with std error bars
    SWEEP_DIR/learning_curves.png validation accuracy per epoch, mean with a ±std band

and TensorBoard HParams records (each run's settings and test metrics), so
`tensorboard --logdir SWEEP_DIR` compares the runs in its HParams tab. The std is the
sample standard deviation (ddof=1); a setting with one finished run shows ± 0.
A run whose files are damaged counts as unfinished (status "damaged run_info.json"),
with one warning; a damaged sweep.json is a one-line error.
"""

import collections
import csv
import io
import os
import sys
import time

import matplotlib.ticker
import numpy as np

from mnist_jax import provenance
from mnist_jax import results
from mnist_jax.errors import DamagedFileError, UserError, disk_errors
from mnist_jax.report import subplots  # No pyplot: the backend is left alone.
from mnist_jax.workdir import write_atomic

STATS = ("test_accuracy", "test_macro_f1", "best_val_epoch", "wall_time_s")


def spread(values) -> dict[str, float]:
  """{mean, std (ddof=1; 0 for one value), min, max, n} of finite values."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return {"mean": float("nan"), "std": float("nan"), "min": float("nan"),
            "max": float("nan"), "n": 0}
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def run_row(sweep_dir: str, entry: dict) -> dict:
  """One run's numbers (None where the run has not finished)."""
  workdir = os.path.join(sweep_dir, entry["name"])
  try:
    info = provenance.read(workdir)
  except DamagedFileError as e:
    print(f"warning: {e}", file=sys.stderr, flush=True)
    info = {"status": "damaged run_info.json"}
  test = info.get("test") or {}
  val = {}
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    val = results.per_epoch(results.read_metrics(workdir))["validation"]
  best_epoch = None
  if val.get("epoch"):  # Ties: the latest, as the checkpoint kept as best.
    last = len(val["accuracy"]) - 1 - int(np.argmax(val["accuracy"][::-1]))
    best_epoch = val["epoch"][last]
  model = ""
  if os.path.exists(os.path.join(workdir, "config.json")):
    model = results.describe_model(results.read_config(workdir)["model"])
  return {"run": entry["name"], "setting": entry["setting"], "model": model,
          "seed": entry["overrides"].get("seed", ""),
          "status": info.get("status", "not started"),
          "test_accuracy": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
          "checkpoint_step": test.get("checkpoint_step"), "best_val_epoch": best_epoch,
          "wall_time_s": info.get("wall_time_s"),
          "val_epochs": val.get("epoch", []), "val_accuracy": val.get("accuracy", [])}


def _pm(s: dict, scale: float = 1.0, digits: int = 2) -> str:
  if not s["n"]:
    return "–"
  return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"


def _range(s: dict, scale: float, digits: int) -> str:
  return "–" if not s["n"] else (f"{scale * s['min']:.{digits}f} – "
                                 f"{scale * s['max']:.{digits}f}")


def summarize(sweep_dir: str) -> dict[str, str]:
  """Writes the summary files of `sweep_dir`; returns {name: path}.

  Raises:
    UserError: `sweep_dir` holds no sweep.json (not a sweep folder).
  """
  manifest = read_manifest(sweep_dir)
  rows = [run_row(sweep_dir, entry) for entry in manifest["runs"]]
  groups = collections.OrderedDict()
  for row in rows:
    groups.setdefault(row["setting"], []).append(row)
  stats = {setting: {k: spread(r[k] for r in runs if r["status"] == "completed")
                     for k in STATS} for setting, runs in groups.items()}
  paths = {name: os.path.join(sweep_dir, name) for name in
           ("summary.md", "summary.csv", "runs.csv", "accuracy.png",
            "learning_curves.png")}
  _write_csvs(paths, rows, groups, stats)
  write_atomic(paths["summary.md"], _markdown(manifest, groups, stats))
  _plot_accuracy(stats, paths["accuracy.png"])
  _plot_curves(groups, paths["learning_curves.png"])
  write_hparams(sweep_dir, manifest, rows)
  return paths


def read_manifest(sweep_dir: str) -> dict:
  """SWEEP_DIR/sweep.json, checked to hold what the summary reads.

  Raises:
    UserError: there is none (not a sweep folder), or it is damaged.
  """
  path = os.path.join(sweep_dir, "sweep.json")
  if not os.path.exists(path):
    raise UserError(f"{sweep_dir} has no sweep.json; is it a sweep folder?")
  fix = ("run the sweep's command again without --summary_only: it writes sweep.json "
         "anew (finished runs are not trained again)")
  manifest = results.read_json(path, fix)
  runs = manifest.get("runs")
  whole = (isinstance(manifest.get("config"), str)
           and isinstance(manifest.get("common_overrides"), list)
           and isinstance(runs, list) and all(
               isinstance(e, dict) and isinstance(e.get("name"), str)
               and isinstance(e.get("setting"), str)
               and isinstance(e.get("overrides"), dict) for e in runs))
  if not whole:
    raise DamagedFileError(f"{path} is damaged (not a list of the sweep's runs); {fix}")
  return manifest


def _csv_text(write) -> str:
  buf = io.StringIO()
  write(buf)
  return buf.getvalue()


def _write_csvs(paths: dict, rows: list, groups: dict, stats: dict) -> None:
  fields = ["run", "setting", "model", "seed", "status", "test_accuracy",
            "test_macro_f1",
            "checkpoint_step", "best_val_epoch", "wall_time_s"]

  def runs_csv(f):
    writer = csv.DictWriter(f, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)

  def summary_csv(f):
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["setting", "runs", "finished"] +
                    [f"{k}_{s}" for k in STATS for s in ("mean", "std", "min", "max")])
    for setting, runs in groups.items():
      s = stats[setting]
      writer.writerow([setting, len(runs), s["test_accuracy"]["n"]] +
                      [s[k][x] for k in STATS for x in ("mean", "std", "min", "max")])

  write_atomic(paths["runs.csv"], _csv_text(runs_csv))
  write_atomic(paths["summary.csv"], _csv_text(summary_csv))


def _markdown(manifest: dict, groups: dict, stats: dict) -> str:
  lines = ["# Sweep summary", "",
           f"`{manifest['config']}` {' '.join(manifest['common_overrides'])}".rstrip(),
           "", "Test accuracy and macro F1 of each run's reported checkpoint (best by "
           "validation accuracy); mean ± sample std over the finished runs (seeds) of "
           "each setting.", "",
           "| setting | model | runs | test accuracy (%) | min – max | macro F1 | "
           "best val epoch | wall time (s) |", "|---|---|---|---|---|---|---|---|"]
  for setting, runs in groups.items():
    s = stats[setting]
    done = s["test_accuracy"]["n"]
    model = next((r["model"] for r in runs if r.get("model")), "")
    lines.append(
        f"| {setting} | {model} | {done}/{len(runs)} | {_pm(s['test_accuracy'], 100)} | "
        f"{_range(s['test_accuracy'], 100, 2)} | {_pm(s['test_macro_f1'], 1, 4)} | "
        f"{_pm(s['best_val_epoch'], 1, 1)} | {_pm(s['wall_time_s'], 1, 0)} |")
  lines += ["", "![test accuracy](accuracy.png)", "",
            "![learning curves](learning_curves.png)", ""]
  return "\n".join(lines)


def _plot_accuracy(stats: dict, path: str) -> None:
  names = list(stats)
  fig, ax = subplots(figsize=(max(5, 1.2 * len(names) + 2), 4))
  means = [100 * stats[n]["test_accuracy"]["mean"] for n in names]
  stds = [100 * stats[n]["test_accuracy"]["std"] for n in names]
  ax.errorbar(range(len(names)), means, yerr=stds, fmt="o", capsize=5)
  ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("test accuracy (%), mean ± std")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  with disk_errors(path):
    fig.savefig(path, dpi=100)


def _plot_curves(groups: dict, path: str) -> None:
  fig, ax = subplots(figsize=(7, 4))
  for setting, runs in groups.items():
    curves = [r for r in runs if r["val_epochs"]]
    if not curves:
      continue
    length = min(len(r["val_epochs"]) for r in curves)
    epochs = np.asarray(curves[0]["val_epochs"][:length])
    acc = 100 * np.asarray([r["val_accuracy"][:length] for r in curves])
    mean, std = acc.mean(0), acc.std(0)
    ax.plot(epochs, mean, "o-", label=f"{setting} ({len(curves)})")
    ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_ylabel("validation accuracy (%)")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:  # Nothing validated yet: no legend.
    ax.legend(fontsize=8)
  fig.tight_layout()
  with disk_errors(path):
    fig.savefig(path, dpi=100)


def write_hparams(sweep_dir: str, manifest: dict, rows: list) -> None:
  """TensorBoard HParams: the experiment at SWEEP_DIR, one session per finished run.

  Written with the `tensorboard` package's protos and record writer (no TensorFlow).
  Rewritten on every summary: stale files are replaced, not appended to.
  """
  from tensorboard.compat.proto import event_pb2, summary_pb2
  from tensorboard.plugins.hparams import summary_v2 as hp
  from tensorboard.summary.writer.record_writer import RecordWriter

  keys = sorted({k for entry in manifest["runs"] for k in entry["overrides"]})
  metrics = [hp.Metric("test/accuracy"), hp.Metric("test/macro_f1")]

  def write(folder: str, summaries: list) -> None:
    path = os.path.join(folder, f"events.out.tfevents.hparams.{time.time_ns()}")
    with disk_errors(path):
      os.makedirs(folder, exist_ok=True)
      for old in os.listdir(folder):
        if old.startswith("events.out.tfevents.hparams"):
          os.remove(os.path.join(folder, old))
      with open(path, "wb") as f:
        writer = RecordWriter(f)
        for step, summary in summaries:
          event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
          writer.write(event.SerializeToString())
        writer.flush()

  write(os.path.join(sweep_dir, "hparams"),
        [(0, hp.hparams_config_pb(hparams=[hp.HParam(k) for k in keys],
                                  metrics=metrics))])
  by_name = {entry["name"]: entry for entry in manifest["runs"]}
  for row in rows:
    if row["status"] != "completed" or row["test_accuracy"] is None:
      continue
    overrides = by_name[row["run"]]["overrides"]
    scalars = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag="test/accuracy",
                                  simple_value=row["test_accuracy"]),
        summary_pb2.Summary.Value(tag="test/macro_f1",
                                  simple_value=row["test_macro_f1"])])
    write(os.path.join(sweep_dir, "hparams", row["run"]),
          [(0, hp.hparams_pb(overrides, trial_id=row["run"])), (0, scalars)])
