"""Reports: figures and Markdown from a workdir's files, and the comparison of runs."""

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from mnist_jax import config as config_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax import evaluate
from mnist_jax import report
from mnist_jax import results
from mnist_jax.errors import WorkdirError, WriteError

NUM_EVAL = 300  # make_tiny_config's max_eval_examples: the test split's size here.


def _fake_workdir(path, config, *, epochs=3, steps_per_epoch=4, evaluated=True,
                  seed=0):
  """A workdir as training + evaluation leave it, with made-up numbers."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(workdir_lib.config_to_json(config))
  rng = np.random.default_rng(seed)
  lines = []
  for step in range(2, epochs * steps_per_epoch + 1, 2):
    epoch = step / steps_per_epoch
    lines.append({"step": step, "split": "train", "epoch": epoch,
                  "loss": 2.3 / epoch, "accuracy": 0.3 * epoch, "grad_norm": 1.0})
    if step % steps_per_epoch == 0:
      lines.append({"step": step, "split": "validation", "epoch": epoch,
                    "loss": 2.0 / epoch, "accuracy": 0.25 * epoch + rng.uniform(0, .01)})
  lines.append(lines[0])  # A resumed run logs a step twice; it must count once.
  (path / "metrics.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  if evaluated:
    labels = rng.integers(0, 10, NUM_EVAL)
    logits = rng.normal(size=(NUM_EVAL, 10))
    logits[np.arange(NUM_EVAL), labels] += 2.0  # Mostly right, some confident errors.
    probs = evaluate.softmax(logits)
    metrics = evaluate.classification_metrics(labels, probs.argmax(-1), 10)
    metrics.update({"loss": 1.0, "checkpoint_step": 12, "split": "test"})
    evaluate.write_results(str(path), "test", metrics, labels, probs)
  return path


def _assert_png(path):
  with Image.open(path) as img:
    img.verify()
  with Image.open(path) as img:
    assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


@pytest.fixture
def tiny_resolved(make_tiny_config):
  return config_lib.resolve(make_tiny_config())


def test_write_report_makes_figures_and_markdown(tmp_path, tiny_resolved):
  """The error grid's images come from the dataset, as the workdir's config says."""
  workdir = _fake_workdir(tmp_path / "run", tiny_resolved)
  paths = report.write_report(str(workdir))
  assert set(paths) == {"learning_curves", "confusion_matrix", "most_confident_errors",
                        "report"}
  for key in ("learning_curves", "confusion_matrix", "most_confident_errors"):
    _assert_png(paths[key])
    assert paths[key].startswith(str(workdir / "report"))
  md = (workdir / "report" / "report.md").read_text()
  for name in ("learning_curves.png", "confusion_matrix.png",
               "most_confident_errors.png"):
    assert f"]({name})" in md
  metrics = json.loads((workdir / "eval" / "test_step12_metrics.json").read_text())
  assert f"| accuracy | {100 * metrics['accuracy']:.2f}% |" in md
  assert "| 9 |" in md  # Per-class rows.


def test_learning_curves_are_per_epoch_and_deduplicated(tmp_path, tiny_resolved):
  workdir = _fake_workdir(tmp_path / "run", tiny_resolved, evaluated=False)
  curves = results.per_epoch(results.read_metrics(str(workdir)))
  assert curves["train"]["epoch"] == [1, 2, 3]
  assert curves["validation"]["epoch"] == [1, 2, 3]
  # Epoch 1 holds steps 2 and 4 (epochs 0.5 and 1.0), the duplicate counted once.
  assert curves["train"]["loss"][0] == pytest.approx((2.3 / 0.5 + 2.3 / 1.0) / 2)
  # Not evaluated: learning curves only, and the report says how to get the rest.
  paths = report.write_report(str(workdir))
  assert set(paths) == {"learning_curves", "report"}
  assert "--mode=eval" in (workdir / "report" / "report.md").read_text()


def test_most_confident_errors_order():
  labels = np.array([0, 1, 2, 3])
  probs = np.array([[0.9, 0.1, 0, 0],     # right
                    [0.6, 0.4, 0, 0],     # wrong, 0.6
                    [0.05, 0.9, 0.05, 0],  # wrong, 0.9
                    [0, 0, 0.3, 0.7]])    # right
  np.testing.assert_array_equal(report.most_confident_errors(labels, probs), [2, 1])
  assert report.most_confident_errors(labels, probs, k=1).tolist() == [2]


def test_compare_table_and_plot(tmp_path, tiny_resolved):
  a = _fake_workdir(tmp_path / "a", tiny_resolved)
  b = _fake_workdir(tmp_path / "b", tiny_resolved, epochs=2, evaluated=False, seed=1)
  paths = report.compare([str(a), str(b)], str(tmp_path / "cmp"))
  _assert_png(paths["plot"])
  table = (tmp_path / "cmp" / "comparison.md").read_text()
  rows = [l for l in table.splitlines() if l.startswith("| a ") or l.startswith("| b ")]
  assert len(rows) == 2
  acc = json.loads((a / "eval" / "test_step12_metrics.json").read_text())["accuracy"]
  assert f"{100 * acc:.2f}%" in rows[0] and "| 3 |" in rows[0]
  assert rows[1].endswith("| – | – | – |") and "| 2 |" in rows[1]


def test_not_a_workdir_is_one_line(tmp_path):
  with pytest.raises(WorkdirError, match="config.json"):
    report.write_report(str(tmp_path))


def test_fashion_mnist_report_names_its_classes(tmp_path, tiny_resolved):
  """Fashion-MNIST's class indices mean nothing to a reader: tables and plots name them."""
  config = config_lib.config_dict.ConfigDict(tiny_resolved.to_dict())
  config.data.name = "fashion_mnist"
  assert results.class_names(config.to_dict())[9] == "Ankle boot"
  assert results.class_names(tiny_resolved.to_dict()) == tuple("0123456789")
  workdir = _fake_workdir(tmp_path / "run", config)
  images = np.zeros((NUM_EVAL, 28, 28), np.uint8)  # No fashion_mnist needed here.
  paths = report.write_report(str(workdir), images=images)
  md = (workdir / "report" / "report.md").read_text()
  assert "| 9 Ankle boot |" in md and "| 0 T-shirt/top |" in md
  for key in ("confusion_matrix", "most_confident_errors"):
    _assert_png(paths[key])


@pytest.mark.faults
def test_damaged_evaluation_files_are_noted_in_the_report(tmp_path, tiny_resolved):
  """Truncated files a run wrote: the report says which and how to redo them."""
  workdir = _fake_workdir(tmp_path / "run", tiny_resolved)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 14, "split": "tra')  # A kill while logging.
  csv_path = workdir / "eval" / "test_step12_predictions.csv"
  csv_path.write_text(csv_path.read_text()[:3000])
  report.write_report(str(workdir), images=np.zeros((NUM_EVAL, 28, 28), np.uint8))
  md = (workdir / "report" / "report.md").read_text()
  assert f"Not drawn: {csv_path} cannot be read" in md
  assert "| accuracy |" in md  # The metrics are still reported.
  metrics_path = workdir / "eval" / "test_step12_metrics.json"
  metrics_path.write_text(metrics_path.read_text()[:100])
  paths = report.write_report(str(workdir))
  md = (workdir / "report" / "report.md").read_text()
  assert f"Not reported: {metrics_path} is damaged (JSONDecodeError" in md
  assert "--mode=eval --workdir=" in md and "--checkpoint=12" in md
  assert set(paths) == {"learning_curves", "report"}
  table = report.compare([str(workdir)], str(tmp_path / "cmp"))["table"]
  assert "| damaged file | damaged file | damaged file |" in open(table).read()


@pytest.mark.faults
@pytest.mark.parametrize("what", ["report.md", "figure"])
def test_full_disk_while_drawing_the_report_is_one_line(tmp_path, tiny_resolved,
                                                        monkeypatch, what):
  workdir = _fake_workdir(tmp_path / "run", tiny_resolved, evaluated=False)

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  if what == "report.md":
    monkeypatch.setattr(os, "fsync", full)
  else:
    monkeypatch.setattr(report.Figure, "savefig", full)
  with pytest.raises(WriteError) as e:
    report.write_report(str(workdir))
  name = "report.md" if what == "report.md" else "learning_curves.png"
  assert str(e.value) == (
      f"no space left on device writing {workdir}/report/{name}; the training and "
      f"evaluation files in {workdir} are intact: free space and run `mnist-jax "
      f"--mode=report --workdir={workdir}`")


@pytest.mark.parametrize("model,words", [
    ({"name": "lstm", "hidden_size": 100, "num_layers": 1}, "LSTM(100), 1 layer"),
    ({"name": "gru", "hidden_size": 160, "num_layers": 2, "bidirectional": True},
     "GRU(160), 2 layers, bidirectional"),
    ({"name": "flax.linen:GRUCell", "hidden_size": 64, "num_layers": 1},
     "GRUCell(64), 1 layer")])
def test_models_are_described_in_words(model, words):
  from mnist_jax import results
  assert results.describe_model(model) == words
