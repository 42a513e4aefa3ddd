"""Full disks and damaged files: one line saying what is intact and what to run, and
a damaged file that mnist_jax wrote is redone rather than a traceback."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, one_line_error
from mnist_jax import evaluate
from mnist_jax import provenance
from mnist_jax import train
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import WriteError

pytestmark = pytest.mark.faults


def _full_disk(monkeypatch, code: int = errno.ENOSPC) -> None:
  """Every fsync fails as on a full disk (write_atomic fsyncs before renaming)."""
  def fsync(fd):
    raise OSError(code, os.strerror(code))
  monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("code,reason", [
    (errno.ENOSPC, "no space left on device"), (errno.EDQUOT, "disk quota exceeded"),
    (errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")])
def test_write_atomic_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch,
                                                            code, reason):
  path = tmp_path / "results.json"
  path.write_text("old")
  _full_disk(monkeypatch, code)
  with pytest.raises(WriteError) as e:
    workdir_lib.write_atomic(str(path), "new")
  assert str(e.value) == f"{reason} writing {path}"
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["results.json"]  # No temporary file left.


def test_other_write_errors_keep_their_traceback(tmp_path, monkeypatch):
  _full_disk(monkeypatch, errno.EIO)  # Not the disk being full: a bug or hardware.
  with pytest.raises(OSError) as e:
    workdir_lib.write_atomic(str(tmp_path / "x"), "new")
  assert not isinstance(e.value, WriteError) and e.value.errno == errno.EIO
  assert os.listdir(tmp_path) == []


def test_full_disk_writing_an_evaluation_says_the_checkpoints_are_intact(
    tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 20)
  probs = evaluate.softmax(rng.normal(size=(20, 10)))
  metrics = evaluate.classification_metrics(labels, probs.argmax(-1), 10)
  metrics.update({"loss": 1.0, "checkpoint_step": 50, "split": "test"})
  workdir = str(tmp_path / "x")
  _full_disk(monkeypatch)
  with pytest.raises(WriteError) as e:
    evaluate.write_results(workdir, "test", metrics, labels, probs)
  assert str(e.value) == (
      f"no space left on device writing {workdir}/eval/test_step50_predictions.csv; "
      f"the checkpoints in {workdir}/checkpoints are intact: free space and run "
      f"`mnist-jax --mode=eval --workdir={workdir} --split=test --checkpoint=50` (or "
      f"the training command again)")
  assert os.listdir(tmp_path / "x" / "eval") == []


def test_full_disk_writing_run_info(tmp_path, monkeypatch):
  """Fatal at a session's start or end; a session failing for another reason keeps
  that reason as its error and only warns."""
  _full_disk(monkeypatch)
  with pytest.raises(WriteError, match=r"run_info.json; the checkpoints in .* are "
                                       r"intact: .* same command again \(it resumes\)"):
    provenance.RunInfo(str(tmp_path), "cpu")
  monkeypatch.undo()
  info = provenance.RunInfo(str(tmp_path), "cpu")
  _full_disk(monkeypatch)
  info.end("failed", 3)  # No exception: the error that failed the run is reported.
  with pytest.raises(WriteError):
    info.end("completed", 3)


_FULL_DISK_SWEEP = """
import errno, os, sys
def fsync(fd):
  raise OSError(errno.ENOSPC, "No space left on device")
os.fsync = fsync
from mnist_jax.sweep import run
sys.argv[0] = "mnist-jax-sweep"
run()
"""


def test_full_disk_writing_the_summary_is_one_line(tmp_path):
  from test_sweep import _fake_sweep
  _fake_sweep(tmp_path, {"model.hidden_size=8": [0.91, 0.93]})
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  proc = subprocess.run([sys.executable, "-c", _FULL_DISK_SWEEP, "--summary_only",
                         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  line = one_line_error(proc)
  assert line.startswith(f"error: no space left on device writing {tmp_path}/")
  assert f"the runs' results in {tmp_path} are intact: free space" in line
  assert {p: p.read_bytes() for p in before} == before


@pytest.mark.slow
def test_training_resumes_over_a_damaged_run_info(tmp_path, make_tiny_config,
                                                  caplog):
  """A run_info.json cut short: the run is resumed (nothing left to train), evaluated
  again, and its run_info.json is whole again, with a fresh history."""
  config = make_tiny_config(num_epochs=1)
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, "run_info.json")
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text[:len(text) // 2])
  again = train.train_and_evaluate(config, workdir)
  assert again["accuracy"] == first["accuracy"]
  with open(path) as f:
    info = json.load(f)
  assert info["status"] == "completed" and len(info["sessions"]) == 1
  assert info["test"]["accuracy"] == first["accuracy"]
  assert "run_info.json is damaged" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["preprocessing.json", "permutation.npy"])
def test_damaged_preprocessing_files_are_computed_again(tmp_path, make_tiny_config,
                                                        caplog, name):
  """Killed while writing them: evaluation computes the same constants again."""
  config = make_tiny_config(num_epochs=1, **{"data.sequence": "permuted_pixels",
                                             "data.standardize": True})
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, name)
  with open(path, "rb") as f:
    content = f.read()
  with open(path, "wb") as f:
    f.write(content[:len(content) // 2])
  again = evaluate.evaluate_workdir(workdir, "best", "test")
  assert again["accuracy"] == first["accuracy"] and again["loss"] == first["loss"]
  assert f"{name} is damaged" in caplog.text
