"""One process per workdir: the lock, two trainings at once, reading a locked workdir."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, one_line_error, run_main
from mnist_jax import locks

pytestmark = pytest.mark.faults

# Holds FOLDER's lock until killed (prints "locked" once it holds it).
_HOLD = """
import sys, time
from mnist_jax import locks
locks.acquire(sys.argv[1], "workdir", "use another --workdir")
print("locked", flush=True)
time.sleep(600)
"""


def _hold(folder) -> subprocess.Popen:
  proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
  holder = _hold(tmp_path)
  try:
    with pytest.raises(locks.LockedError, match=f"PID {holder.pid} on host "):
      locks.acquire(str(tmp_path), "workdir", "use another --workdir")
    assert locks.is_locked_by_another(str(tmp_path))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The killed holder's lock is gone with it; its description stays in the file.
  assert not locks.is_locked_by_another(str(tmp_path))
  with locks.locked(str(tmp_path)):
    assert locks.holder(str(tmp_path))["pid"] == os.getpid()


def test_lock_is_reentrant_in_one_process(tmp_path):
  folder = str(tmp_path)
  locks.acquire(folder, "workdir", "x")
  locks.acquire(folder, "workdir", "x")  # Training holds it while it evaluates.
  locks.release(folder)
  probe = subprocess.run([sys.executable, "-c", "import sys; from mnist_jax import "
                          "locks; print(locks.is_locked_by_another(sys.argv[1]))",
                          folder], cwd=REPO, capture_output=True, text=True)
  assert probe.stdout.strip() == "True"  # Still held after one release of two.
  locks.release(folder)
  probe = subprocess.run(probe.args, cwd=REPO, capture_output=True, text=True)
  assert probe.stdout.strip() == "False"


def _args(workdir, tfds_dir, data_root, epochs=2):
  return ["--config=experiments/seed_lstm.py", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}",
          f"--config.data.manual_dir={data_root / 'mnist'}",
          f"--config.num_epochs={epochs}", "--config.max_train_examples=1000",
          "--config.max_eval_examples=300", "--config.model.hidden_size=16",
          "--config.batch_size=50", "--cpu_devices=1"]


def _predictions(workdir: pathlib.Path) -> bytes:
  found = sorted((workdir / "eval").glob("test_step*_predictions.csv"))
  assert len(found) == 1, found
  return found[0].read_bytes()


@pytest.mark.slow
def test_second_training_on_one_workdir_is_refused_and_first_is_unharmed(
    tmp_path, tfds_dir, data_root):
  lone = tmp_path / "lone"
  assert run_main(*_args(lone, tfds_dir, data_root)).returncode == 0
  shared = tmp_path / "shared"
  first = subprocess.Popen([sys.executable, "-m", "mnist_jax.main",
                            *_args(shared, tfds_dir, data_root)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 120
  while (locks.holder(str(shared)) or {}).get("pid") != first.pid:
    assert first.poll() is None and time.monotonic() < deadline
    time.sleep(0.05)
  start = time.monotonic()
  second = run_main(*_args(shared, tfds_dir, data_root))
  elapsed = time.monotonic() - start
  _, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  line = one_line_error(second)
  assert f"is in use by PID {first.pid} on host" in line, line
  assert "use another --workdir" in line
  assert elapsed < 10, f"the second run took {elapsed:.1f} s to give up"
  assert _predictions(shared) == _predictions(lone)


@pytest.mark.slow
def test_locked_workdir_is_evaluated_without_writing_and_report_is_refused(
    tmp_path, tfds_dir, data_root):
  workdir = tmp_path / "run"
  assert run_main(*_args(workdir, tfds_dir, data_root, epochs=1)).returncode == 0
  before = sorted(p.name for p in (workdir / "eval").iterdir())
  holder = _hold(workdir)
  try:
    evaluated = run_main("--mode=eval", f"--workdir={workdir}", "--checkpoint=latest",
                         "--split=validation")
    report = run_main("--mode=report", f"--workdir={workdir}")
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert "accuracy" in evaluated.stdout  # Read and printed...
  assert "eval/ files not written" in evaluated.stderr
  assert f"PID {holder.pid}" in evaluated.stderr
  assert sorted(p.name for p in (workdir / "eval").iterdir()) == before  # ...not written.
  assert f"is in use by PID {holder.pid}" in one_line_error(report)
