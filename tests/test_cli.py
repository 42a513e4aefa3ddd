"""The mnist-jax command's answers to bad input: one line, a non-zero exit, no traceback.

Checks that need the whole command (flag parsing, exit status, what reaches stderr) run
it in a fresh process; the rest call the library in-process.
"""

import json
import re
import shutil

import pytest

from conftest import one_line_error, run_main
from mnist_jax import evaluate
from mnist_jax import train
from mnist_jax.errors import WorkdirError
from mnist_jax.workdir import Workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir, data_root):
  """A tiny trained workdir (6 steps of a 16-unit LSTM)."""
  from conftest import tiny_config
  workdir = tmp_path_factory.mktemp("cli") / "run"
  cfg = tiny_config(tfds_dir, data_root, num_epochs=1)
  assert train.train(cfg, str(workdir))["completed"]
  return workdir


def test_misspelt_config_path_is_one_line(tmp_path):
  line = one_line_error(run_main("--config=experiments/seed_lsmt.py",
                                 f"--workdir={tmp_path / 'w'}"))
  assert "seed_lsmt.py: no such file" in line and "experiments/" in line
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("override,phrase", [
    ("--config.optimizer.learning_rate=inf", "config.optimizer.learning_rate=inf"),
    ("--config.model.name=transformer", "model.name='transformer' is not valid; "
     "choose one of"),
    ("--config.batch_sise=10", "names no config field: 'batch_sise' Did you mean"),
])
def test_bad_config_on_the_command_line_is_one_line_and_writes_nothing(
    tmp_path, override, phrase):
  """Validation (the first two) and flag parsing (the third) both answer in one line."""
  workdir = tmp_path / "w"
  line = one_line_error(run_main("--config=experiments/seed_lstm.py",
                                 f"--workdir={workdir}", override))
  assert phrase in line
  assert not workdir.exists()


def test_stray_arguments_are_one_line(tmp_path):
  line = one_line_error(run_main("--mode=eval", f"--workdir={tmp_path}", "extra.png"))
  assert "only --mode=predict takes files" in line
  line = one_line_error(run_main("--mode=predict", f"--workdir={tmp_path}"))
  assert "needs image files" in line


def test_workdir_that_is_a_file_is_refused(tmp_path, make_tiny_config):
  path = tmp_path / "notes.txt"
  path.write_text("mine")
  with pytest.raises(WorkdirError, match="is a file, not a folder"):
    train.train(make_tiny_config(), str(path))
  assert path.read_text() == "mine"
  line = one_line_error(run_main("--config=experiments/seed_lstm.py",
                                 f"--workdir={path}"))
  assert "is a file, not a folder" in line


def test_damaged_config_json_is_one_line(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  (workdir / "config.json").write_text('{"seed": 0, "model": {')
  with pytest.raises(WorkdirError, match=r"config.json cannot be read \(JSONDecodeError"):
    Workdir.open(str(workdir))
  line = one_line_error(run_main("--mode=eval", f"--workdir={workdir}"))
  assert "config.json cannot be read" in line and "new --workdir" in line
  from mnist_jax import report  # Reports read it through the same door.
  with pytest.raises(WorkdirError, match=r"config.json cannot be read"):
    report.write_report(str(workdir))


@pytest.mark.slow
def test_eval_report_and_predict_restore_quietly(trained, tmp_path):
  """Read-only restores used to print Orbax warnings that read like a permissions
  problem; evaluation of another checkpoint must not overwrite the best one's files."""
  from PIL import Image
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  best = evaluate.evaluate_workdir(str(workdir), "best")
  best_file = workdir / "eval" / f"test_step{best['checkpoint_step']}_metrics.json"
  before = best_file.read_text()
  image = tmp_path / "one.png"
  digit = Image.new("L", (28, 28), 0)
  digit.paste(255, (12, 4, 16, 24))
  digit.save(image)
  for args in (["--mode=eval", "--checkpoint=latest", "--split=validation"],
               ["--mode=report"], ["--mode=predict", str(image)]):
    proc = run_main(*args, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [l for l in proc.stderr.splitlines() if re.match(r"W\d{4} ", l)]
    assert not warnings and "read only" not in proc.stderr, (args, warnings)
  assert best_file.read_text() == before
  assert json.loads((workdir / "eval" / "validation_step6_metrics.json").read_text())[
      "checkpoint_step"] == 6
