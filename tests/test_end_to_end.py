"""Tiny real-MNIST runs through the command line, each in a fresh process."""

import csv
import json
import os
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import one_line_error, run_main

pytestmark = pytest.mark.slow


def _tiny_args(workdir, tfds_dir, data_root, *extra):
  return ["--config=experiments/seed_lstm.py", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}",
          f"--config.data.manual_dir={data_root / 'mnist'}",
          "--config.num_epochs=2", "--config.max_train_examples=400",
          "--config.model.hidden_size=16", "--config.log_every_steps=2",
          "--config.eval_batch_size=768", *extra]


def _eval_file(workdir, split, kind="metrics.json"):
  """The one evaluation file of `split` in the workdir (named by its checkpoint)."""
  found = sorted((workdir / "eval").glob(f"{split}_step*_{kind}"))
  assert len(found) == 1, found
  return found[0]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, tfds_dir, data_root):
  """Trains a tiny LSTM; the test split is evaluated in full (10,000 images)."""
  workdir = tmp_path_factory.mktemp("run") / "seed_lstm"
  proc = run_main(*_tiny_args(workdir, tfds_dir, data_root))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_training_writes_config_metrics_checkpoints(trained_workdir):
  workdir, proc = trained_workdir
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["name"] == "lstm" and config["num_epochs"] == 2
  assert config["data"]["name"] == "mnist"
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {r["split"] for r in records} == {"train", "validation"}
  assert [r["step"] for r in records if r["split"] == "validation"] == [4, 8]
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  for split, tag in (("train", "loss"), ("validation", "accuracy")):
    logged = [r for r in records if r["split"] == split]
    scalars = events.Scalars(f"{split}/{tag}")  # TensorBoard sees metrics.jsonl.
    assert [e.step for e in scalars] == [r["step"] for r in logged]
    assert [e.value for e in scalars] == pytest.approx([r[tag] for r in logged],
                                                       rel=1e-6)
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  assert steps == [4, 8]
  assert "accuracy" in proc.stdout and "confusion matrix" in proc.stdout


def test_eval_covers_every_test_image_and_equals_sklearn(trained_workdir):
  workdir, _ = trained_workdir
  metrics = json.loads(_eval_file(workdir, "test").read_text())
  assert metrics["num_examples"] == 10_000
  with open(_eval_file(workdir, "test", "predictions.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 10_000 and [int(r["index"]) for r in rows] == list(range(10_000))
  labels = np.array([int(r["label"]) for r in rows])
  predicted = np.array([int(r["predicted"]) for r in rows])
  probs = np.array([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
  np.testing.assert_array_equal(probs.argmax(1), predicted)
  assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
  np.testing.assert_array_equal(metrics["confusion_matrix"],
                                skm.confusion_matrix(labels, predicted, labels=range(10)))
  for avg in ("macro", "weighted"):
    p, r, f, _ = skm.precision_recall_fscore_support(labels, predicted, average=avg,
                                                     labels=range(10), zero_division=0)
    assert metrics["precision"][avg] == pytest.approx(p)
    assert metrics["recall"][avg] == pytest.approx(r)
    assert metrics["f1"][avg] == pytest.approx(f)
  p, r, f, _ = skm.precision_recall_fscore_support(labels, predicted, labels=range(10),
                                                   zero_division=0)
  np.testing.assert_allclose(metrics["f1"]["per_class"], f)
  assert metrics["loss"] == pytest.approx(
      -np.mean(np.log(np.maximum(probs[np.arange(10_000), labels], 1e-12))), rel=1e-3)


def test_restore_in_fresh_process_gives_same_metrics(trained_workdir):
  workdir, _ = trained_workdir
  path = _eval_file(workdir, "test")
  first = json.loads(path.read_text())
  path.unlink()  # The fresh process must write it again, not find training's copy.
  proc = run_main("--mode=eval", f"--workdir={workdir}", "--checkpoint=best")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(path.read_text()) == first
  proc = run_main("--mode=eval", f"--workdir={workdir}", "--checkpoint=4",
                  "--split=validation")
  assert proc.returncode == 0, proc.stderr[-3000:]
  val = json.loads((workdir / "eval" / "validation_step4_metrics.json").read_text())
  assert val["checkpoint_step"] == 4 and val["num_examples"] == 5_000
  assert path.exists()  # Another checkpoint's evaluation overwrote nothing.


def test_rerun_resumes_instead_of_retraining(trained_workdir, tfds_dir, data_root):
  workdir, _ = trained_workdir
  before = (workdir / "metrics.jsonl").read_text()
  proc = run_main(*_tiny_args(workdir, tfds_dir, data_root))
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Already finished: nothing trained again, so no new metrics lines.
  assert (workdir / "metrics.jsonl").read_text() == before


def test_missing_dataset_without_network_fails_fast(tmp_path):
  # MNIST_JAX_OFFLINE: as if no network, also on a machine that has one.
  env = {"MNIST_JAX_MANUAL_DIR": "", "MNIST_JAX_OFFLINE": "1"}
  start = time.monotonic()
  proc = run_main("--config=experiments/seed_lstm.py", f"--workdir={tmp_path / 'w'}",
                  "--config.data.name=fashion_mnist",  # Not shipped, unlike MNIST.
                  f"--config.data.tfds_dir={tmp_path / 'empty_tfds'}", env=env)
  elapsed = time.monotonic() - start
  line = one_line_error(proc)
  assert "manual_dir" in line and "MNIST_JAX_MANUAL_DIR" in line
  assert elapsed < 60  # Includes interpreter and TensorFlow start-up.


def test_eval_of_missing_checkpoint_is_one_line(tmp_path, trained_workdir):
  workdir, _ = trained_workdir
  line = one_line_error(run_main("--mode=eval", f"--workdir={workdir}",
                                  "--checkpoint=12345"))
  assert "no checkpoint at step 12345" in line and "4, 8" in line
  line = one_line_error(run_main("--mode=eval", f"--workdir={tmp_path}"))
  assert "config.json" in line


def test_compilation_cache_is_filled_reused_and_survives_damage(trained_workdir,
                                                                tmp_path):
  workdir, _ = trained_workdir
  cache = tmp_path / "compilation_cache"
  args = ["--mode=eval", f"--workdir={workdir}", "--checkpoint=latest",
          f"--compilation_cache={cache}"]

  def evaluate() -> dict:
    path = workdir / "eval" / "test_step8_metrics.json"
    path.unlink(missing_ok=True)
    proc = run_main(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(path.read_text())

  reference = evaluate()
  entries = sorted(cache.glob("*-cache"))
  assert entries  # Every executable of the run, however quick to compile.
  last_used = {p: p.with_name(p.name[:-len("cache")] + "atime").read_bytes()
               for p in entries}
  assert evaluate() == reference
  assert sorted(cache.glob("*-cache")) == entries  # Nothing compiled anew...
  reused = [p for p, t in last_used.items()
            if p.with_name(p.name[:-len("cache")] + "atime").read_bytes() != t]
  assert len(reused) == len(entries)  # ...every entry was read back.
  # A run killed while writing an entry leaves it truncated: JAX warns, compiles again.
  for p in entries:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  assert evaluate() == reference
