"""Fault tolerance: kills, preemption, bad numbers, damaged checkpoints lose nothing.

Every run here is a tiny real-MNIST LSTM (400 training images, 8 steps an epoch, 2
epochs, a checkpoint every 3 steps). `reference` trains it once, uninterrupted; the
tests interrupt or damage copies of it and check that the outcome is bit for bit the
same, or that the failure is one clear line and nothing good was overwritten.

Runs killed from outside go through the real command line in a fresh process whose
batch feed is slowed down (`conftest.SLOW_MAIN`), so a kill can be aimed at a step; nothing
else in those processes is changed.
"""

import hashlib
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO, SLOW_MAIN, metric_rows, run_main, tiny_config
from mnist_jax import checkpoints
from mnist_jax import data
from mnist_jax import evaluate
from mnist_jax import steps
from mnist_jax import train
from mnist_jax.errors import NonFiniteError, WorkdirError
from mnist_jax.workdir import Workdir

# A restore that fails on a damaged OCDBT manifest leaves Orbax's background reads
# running; when they end they post to the event loop Orbax has closed, and Python
# reports that "Event loop is closed" as unraisable, in whichever test is running.
pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")]

# The run every test starts from: 8 steps an epoch, epochs end at steps 8 and 16,
# checkpoints at 3, 6, 8, 9, 12, 15, 16 (the latest 3 plus the best are kept).
RUN = {"num_epochs": 2, "batch_size": 50, "eval_batch_size": 64,
       "max_train_examples": 400, "max_eval_examples": 300, "model.hidden_size": 16,
       "log_every_steps": 1, "checkpoint_every_steps": 3, "seed": 7}
STEPS_PER_EPOCH = 8
TOTAL_STEPS = 16


# Extra prelude: SIGKILL the process in the middle of writing checkpoint STEP (its
# `meta` item is half written, inside Orbax's temporary folder).
_KILL_IN_WRITE = """
import json, os, signal
from orbax.checkpoint._src.handlers import json_checkpoint_handler as _jch
_save = _jch.JsonCheckpointHandler._save_fn
async def _save_fn(self, x, directory):
  if isinstance(x, dict) and x.get("step") == {step} and "history" in x:
    (directory / self._filename).write_text(json.dumps(x)[:20])
    os.kill(os.getpid(), signal.SIGKILL)
  return await _save(self, x, directory)
_jch.JsonCheckpointHandler._save_fn = _save_fn
"""


# ----------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------
def _config(tfds_dir, data_root, **overrides):
  return tiny_config(tfds_dir, data_root, **{**RUN, **overrides})


def _cli_args(workdir, tfds_dir, data_root, *extra):
  args = ["--config=experiments/seed_lstm.py", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}",
          f"--config.data.manual_dir={data_root / 'mnist'}",
          "--config.num_epochs=2", "--config.max_train_examples=400",
          "--config.max_eval_examples=300", "--config.model.hidden_size=16",
          # One device, like the in-process runs these are compared with: bitwise
          # equality needs the same devices (two CPU devices sum in another order).
          "--cpu_devices=1"]
  args += [f"--config.{k}={v}" for k, v in RUN.items()
           if k not in ("num_epochs", "max_train_examples", "max_eval_examples",
                        "model.hidden_size")]
  return args + list(extra)


def _restore(workdir, step=None) -> dict:
  """The train state of a checkpoint as NumPy arrays (latest when `step` is None)."""
  config = Workdir.open(str(workdir)).config
  store = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                      read_only=True)
  step = store.latest_step() if step is None else step
  target = steps.create_train_state(config, jax.random.PRNGKey(config.seed),
                                    STEPS_PER_EPOCH)
  state, meta = store.restore(step, target)
  store.close()
  return {"step": int(state.step), "params": jax.tree.map(np.asarray, state.params),
          "opt_state": jax.tree.map(np.asarray, state.opt_state),
          "rng": np.asarray(state.rng), "meta": meta}


def _test_metrics_file(workdir) -> pathlib.Path:
  """The test evaluation training left (one file, named by the best step)."""
  found = list((workdir / "eval").glob("test_step*_metrics.json"))
  assert len(found) == 1, found
  return found[0]


def _assert_same_state(a: dict, b: dict) -> None:
  """Bitwise equality of step, params, optimizer state and RNG key."""
  assert a["step"] == b["step"]
  for name in ("params", "opt_state"):
    la, lb = jax.tree.leaves(a[name]), jax.tree.leaves(b[name])
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
      np.testing.assert_array_equal(x, y, strict=True)
  np.testing.assert_array_equal(a["rng"], b["rng"])


def _records(workdir, split) -> dict[int, dict]:
  """metrics.jsonl records of one split by step (a resumed step's last record)."""
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if record["split"] == split:
      out[record["step"]] = record
  return out


_TIMING = ("examples_per_sec",)


def _tensorboard_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """What TensorBoard shows: (step, value) per tag, after its purge of resumed steps."""
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(pathlib.Path(workdir) / "tensorboard"))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
          for tag in acc.Tags()["scalars"] if not tag.endswith(_TIMING)}


def _val_accuracies(workdir) -> dict[int, float]:
  return {s: r["accuracy"] for s, r in _records(workdir, "validation").items()}


def _steps(workdir) -> list[int]:
  store = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                      read_only=True)
  steps = sorted(store.steps())
  store.close()
  return steps


def _snapshot(root) -> dict[str, str]:
  """SHA-256 of every file under `root` (to show nothing was touched), but the lock
  file, which names whoever last held the workdir, a refused run included."""
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _logged_steps(log_path: pathlib.Path) -> list[int]:
  """Train steps a run logged ("step N/M ..." lines; it logs every step here)."""
  if not log_path.exists():
    return []
  text = log_path.read_text(errors="replace")
  return [int(m) for m in re.findall(r"\] step (\d+)/\d+ ", text)]


def _spawn(args, log_dir: pathlib.Path, delay=0.1, extra="") -> subprocess.Popen:
  """Starts a slowed-down run; its output goes to LOG_DIR/<n>.out and <n>.err."""
  code = SLOW_MAIN.format(delay=delay, extra=extra)
  log_dir.mkdir(parents=True, exist_ok=True)
  n = len(list(log_dir.glob("*.out")))
  with open(log_dir / f"{n}.out", "w") as out, open(log_dir / f"{n}.err", "w") as err:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO,
                            stdout=out, stderr=err)


def _run_until(args, log_dir: pathlib.Path, target_step: int, sig,
               timeout=180) -> tuple[int, list[int]]:
  """Starts a slowed-down run, sends `sig` once step `target_step` is logged.

  Returns:
    (the process's return code, the train steps it logged).
  """
  proc = _spawn(args, log_dir)
  log = log_dir / f"{len(list(log_dir.glob('*.out'))) - 1}.err"
  deadline = time.monotonic() + timeout
  while proc.poll() is None and time.monotonic() < deadline:
    logged = _logged_steps(log)
    if logged and logged[-1] >= target_step:
      proc.send_signal(sig)
      break
    time.sleep(0.02)
  rc = proc.wait(timeout=max(deadline - time.monotonic(), 1))
  return rc, _logged_steps(log)


# ----------------------------------------------------------------------------------
# The uninterrupted run everything is compared with.
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory, tfds_dir, data_root):
  workdir = tmp_path_factory.mktemp("reference") / "run"
  result = train.train(_config(tfds_dir, data_root), str(workdir))
  assert result["completed"] and result["step"] == TOTAL_STEPS
  metrics = evaluate.evaluate_workdir(str(workdir), "best", "test")
  return {"workdir": workdir, "state": _restore(workdir), "test": metrics,
          "best_step": result["best_step"], "val": _val_accuracies(workdir),
          "steps": _steps(workdir)}


def _assert_same_as_reference(workdir, reference, test_metrics=None) -> None:
  _assert_same_state(_restore(workdir), reference["state"])
  assert _val_accuracies(workdir) == reference["val"]
  assert _steps(workdir) == reference["steps"]
  if test_metrics is not None:
    assert test_metrics == json.loads(json.dumps(reference["test"]))


def test_reference_run_is_sane(reference):
  assert reference["state"]["step"] == TOTAL_STEPS
  assert sorted(reference["val"]) == [STEPS_PER_EPOCH, TOTAL_STEPS]
  assert reference["best_step"] in (STEPS_PER_EPOCH, TOTAL_STEPS)
  assert reference["test"]["num_examples"] == 300


# ----------------------------------------------------------------------------------
# 1. SIGKILL at random steps, several times in a row.
# ----------------------------------------------------------------------------------
def test_sigkill_at_random_steps_resumes_to_identical_result(
    reference, tmp_path, tfds_dir, data_root):
  workdir = tmp_path / "run"
  args = _cli_args(workdir, tfds_dir, data_root)
  rng = random.Random(int(os.environ.get("MNIST_JAX_FAULT_SEED", "0")))
  # One kill early in each third of the run, at a random step.
  targets = [rng.randint(4, 7), rng.randint(8, 11), rng.randint(12, 15)]
  kills = []
  for target in targets:
    rc, logged = _run_until(args, tmp_path / "logs", target, signal.SIGKILL)
    assert rc == -signal.SIGKILL, f"run was not killed (rc {rc}, logged {logged})"
    kills.append((target, logged))
  # Each restart resumed from a checkpoint at or before the kill, not from step 0.
  assert kills[0][1][0] == 1
  for (_, before), (_, after) in zip(kills, kills[1:]):
    resumed_from = after[0] - 1
    assert resumed_from in (3, 6, 8, 9, 12, 15) and resumed_from <= before[-1]
  proc = run_main(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  test_metrics = json.loads(_test_metrics_file(workdir).read_text())
  _assert_same_as_reference(workdir, reference, test_metrics)
  # The logs match the checkpoints: one row per (step, split), as if never killed.
  assert metric_rows(workdir) == metric_rows(reference["workdir"])
  assert _tensorboard_scalars(workdir) == _tensorboard_scalars(reference["workdir"])


def test_sigkill_at_random_moments_keeps_one_metrics_row_per_step(
    reference, tmp_path, tfds_dir, data_root):
  """Kills at random times (start-up, steps, checkpoint writes, evaluation), not steps.

  MNIST_JAX_FAULT_KILLS sets how many (docs/reliability.md runs it with 20).
  """
  workdir = tmp_path / "run"
  args = _cli_args(workdir, tfds_dir, data_root)
  rng = random.Random(int(os.environ.get("MNIST_JAX_FAULT_SEED", "0")))
  for _ in range(int(os.environ.get("MNIST_JAX_FAULT_KILLS", "2"))):
    proc = _spawn(args, tmp_path / "logs")
    time.sleep(rng.uniform(0.5, 8.0))
    proc.send_signal(signal.SIGKILL)  # A no-op if it already finished.
    proc.wait()
  proc = run_main(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  _assert_same_as_reference(workdir, reference,
                            json.loads(_test_metrics_file(workdir).read_text()))
  assert metric_rows(workdir) == metric_rows(reference["workdir"])
  assert _tensorboard_scalars(workdir) == _tensorboard_scalars(reference["workdir"])


def test_sigkill_with_two_cpu_devices_resumes_to_identical_result(tmp_path, tfds_dir,
                                                                  data_root):
  # The default on a multi-core CPU: parallel.CpuReplicas. Killed and resumed on two
  # devices, the result equals an uninterrupted two-device run bit for bit.
  def args(workdir):
    return [a for a in _cli_args(workdir, tfds_dir, data_root)
            if a != "--cpu_devices=1"] + ["--cpu_devices=2"]

  uninterrupted = tmp_path / "uninterrupted"
  proc = run_main(*args(uninterrupted))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Devices: 2 CPU devices" in proc.stderr
  workdir = tmp_path / "run"
  rc, logged = _run_until(args(workdir), tmp_path / "logs", 8, signal.SIGKILL)
  assert rc == -signal.SIGKILL, f"run was not killed (rc {rc}, logged {logged})"
  proc = run_main(*args(workdir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  _assert_same_state(_restore(workdir), _restore(uninterrupted))
  assert _val_accuracies(workdir) == _val_accuracies(uninterrupted)
  assert (_test_metrics_file(workdir).read_text() ==
          _test_metrics_file(uninterrupted).read_text())


# ----------------------------------------------------------------------------------
# 2. SIGTERM / SIGINT: save at the current step, exit 0, resume to the same result.
# ----------------------------------------------------------------------------------
def test_sigterm_saves_current_step_and_resume_is_identical(
    reference, tmp_path, tfds_dir, data_root, capsys):
  workdir = tmp_path / "run"
  args = _cli_args(workdir, tfds_dir, data_root)
  rc, logged = _run_until(args, tmp_path / "logs", 5, signal.SIGTERM)
  out = (tmp_path / "logs" / "0.out").read_text()
  err = (tmp_path / "logs" / "0.err").read_text()
  assert rc == 0, err[-3000:]
  assert "Traceback" not in err
  stopped_at = logged[-1]
  assert f"Stopped by SIGTERM at step {stopped_at}" in out
  assert "Resume by running the same command again" in out
  assert 5 <= stopped_at < TOTAL_STEPS
  assert max(_steps(workdir)) == stopped_at
  assert _restore(workdir)["step"] == stopped_at
  # Resume (in this process) to the end.
  metrics = train.train_and_evaluate(_config(tfds_dir, data_root), str(workdir))
  assert metrics is not None
  _assert_same_as_reference(workdir, reference, json.loads(json.dumps(metrics)))


def _signal_at_step(monkeypatch, sig, at_step: int) -> None:
  """Makes the in-process run receive `sig` while step `at_step` is being trained."""
  original = data.train_batches

  def batches(split, order, start_step, end_step, put, **kwargs):
    for i, batch in enumerate(original(split, order, start_step, end_step, put,
                                       **kwargs)):
      if start_step + i + 1 == at_step:
        os.kill(os.getpid(), sig)
      yield batch

  monkeypatch.setattr(data, "train_batches", batches)


def test_sigint_at_epoch_end_validates_saves_and_loses_nothing(
    reference, tmp_path, tfds_dir, data_root, monkeypatch, capsys):
  at_step = STEPS_PER_EPOCH  # (A stop mid-epoch: the SIGTERM test above.)
  workdir = tmp_path / "run"
  cfg = _config(tfds_dir, data_root)
  with monkeypatch.context() as m:
    _signal_at_step(m, signal.SIGINT, at_step)
    assert train.train_and_evaluate(cfg, str(workdir)) is None
  out = capsys.readouterr().out
  assert f"Stopped by SIGINT at step {at_step}" in out and "Resume by" in out
  assert max(_steps(workdir)) == at_step
  assert sorted(_val_accuracies(workdir)) == [at_step]  # Validated before stopping.
  metrics = train.train_and_evaluate(cfg, str(workdir))
  # At an epoch end the validation of that epoch must still happen (once).
  _assert_same_as_reference(workdir, reference, json.loads(json.dumps(metrics)))


# ----------------------------------------------------------------------------------
# 3. Kill during a checkpoint write; failed background saves surface.
# ----------------------------------------------------------------------------------
def test_kill_during_checkpoint_write_keeps_previous_and_cleans_up(
    reference, tmp_path, tfds_dir, data_root):
  workdir = tmp_path / "run"
  args = _cli_args(workdir, tfds_dir, data_root)
  proc = _spawn(args, tmp_path / "logs", delay=0, extra=_KILL_IN_WRITE.format(step=6))
  assert proc.wait(timeout=180) == -signal.SIGKILL
  ckpt_dir = workdir / "checkpoints"
  partial = [p.name for p in ckpt_dir.iterdir() if ".orbax-checkpoint-tmp" in p.name]
  assert partial and all(p.startswith("6.") for p in partial)
  assert _steps(workdir) == [3]  # The half-written step 6 is not listed.
  assert _restore(workdir)["step"] == 3
  # Resume: the partial folder is removed and the result is the uninterrupted one.
  result = train.train(_config(tfds_dir, data_root), str(workdir))
  assert result["completed"]
  assert not [p for p in ckpt_dir.iterdir() if ".orbax-checkpoint-tmp" in p.name]
  _assert_same_as_reference(workdir, reference)


def test_leftover_temporary_checkpoint_is_ignored(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir"], workdir)
  junk = workdir / "checkpoints" / "99.orbax-checkpoint-tmp-1234567" / "state"
  junk.mkdir(parents=True)
  (junk / "manifest.ocdbt").write_bytes(b"half")
  assert _steps(workdir) == reference["steps"]
  metrics = evaluate.evaluate_workdir(str(workdir), "latest", "test")
  assert metrics["checkpoint_step"] == TOTAL_STEPS


def test_failed_background_save_is_raised_not_swallowed(
    tmp_path, tfds_dir, data_root, monkeypatch):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
  original = jch.JsonCheckpointHandler._save_fn

  async def failing_save(self, x, directory):
    if isinstance(x, dict) and x.get("step") == 6 and "history" in x:
      raise OSError(28, "No space left on device (injected)")
    return await original(self, x, directory)

  monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", failing_save)
  workdir = tmp_path / "run"
  with pytest.raises(WorkdirError) as info:
    train.train(_config(tfds_dir, data_root), str(workdir))
  message = str(info.value)  # One line, with the root cause users can act on.
  assert "\n" not in message and "saving a checkpoint" in message
  assert "OSError: [Errno 28] No space left on device (injected)" in message, message
  assert 6 not in _steps(workdir)
  assert _restore(workdir, 3)["step"] == 3


# ----------------------------------------------------------------------------------
# 4. Non-finite training: stop, name the step, keep the last good checkpoint.
# ----------------------------------------------------------------------------------
def test_nan_batch_stops_run_and_keeps_last_good_checkpoint(
    reference, tmp_path, tfds_dir, data_root, monkeypatch):
  original = steps.train_step

  def poisoned_step(state, batch, *, preprocess, **kwargs):
    # Step 5 (state.step 4) sees NaN inputs; every other step is untouched.
    def poisoned(images):
      return preprocess(images) * jnp.where(state.step == 4, jnp.nan, 1.0)
    return original(state, batch, preprocess=poisoned, **kwargs)

  workdir = tmp_path / "run"
  # Metrics are fetched every 4 steps: the bad step 5 is found at step 6's flush.
  cfg = _config(tfds_dir, data_root, log_every_steps=4)
  with monkeypatch.context() as m:
    m.setattr(steps, "train_step", poisoned_step)
    with pytest.raises(NonFiniteError) as info:
      train.train(cfg, str(workdir))
  message = str(info.value)
  assert "\n" not in message
  assert "at step 5 " in message and "last good checkpoint is step 3" in message
  assert _steps(workdir) == [3]  # Step 6 (poisoned history) was never saved.
  # The kept checkpoint is good: resuming from it gives the uninterrupted result.
  assert train.train(cfg, str(workdir))["completed"]
  _assert_same_state(_restore(workdir), reference["state"])


def test_update_overflow_is_caught_before_it_is_saved(
    tmp_path, tfds_dir, data_root, monkeypatch):
  """Finite loss and gradients whose update is not finite (e.g. a huge step size)."""
  original = steps.create_optimizer

  def overflowing_optimizer(*args, **kwargs):
    blow_up = optax.scale_by_schedule(lambda n: jnp.where(n == 4, jnp.inf, 1.0))
    return optax.chain(original(*args, **kwargs), blow_up)

  monkeypatch.setattr(steps, "create_optimizer", overflowing_optimizer)
  workdir = tmp_path / "run"
  cfg = _config(tfds_dir, data_root, checkpoint_every_steps=1)
  with pytest.raises(NonFiniteError) as info:
    train.train(cfg, str(workdir))
  assert "at step 5 " in str(info.value)
  assert max(_steps(workdir)) == 4
  for step in _steps(workdir):
    state = _restore(workdir, step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


# ----------------------------------------------------------------------------------
# 5. Damaged checkpoints: a clear error, never a raw traceback.
# ----------------------------------------------------------------------------------
def _damage(step_dir: pathlib.Path, kind: str) -> None:
  if kind == "empty_step_dir":
    shutil.rmtree(step_dir)
    step_dir.mkdir()
  elif kind == "truncated_manifest":
    path = step_dir / "state" / "manifest.ocdbt"
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  elif kind == "garbage_array_data":
    for path in (step_dir / "state" / "d").iterdir():
      path.write_bytes(b"\0garbage" * 4)
  elif kind == "truncated_state_metadata":
    path = step_dir / "state" / "_METADATA"
    path.write_text(path.read_text()[:50])
  elif kind == "truncated_meta":
    path = step_dir / "meta" / "metadata"
    path.write_text(path.read_text()[:10])
  else:
    raise ValueError(kind)


DAMAGE = ["empty_step_dir", "truncated_manifest", "garbage_array_data",
          "truncated_state_metadata", "truncated_meta"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoint_gives_clear_error(reference, tmp_path, kind):
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir"], workdir)
  _damage(workdir / "checkpoints" / str(TOTAL_STEPS), kind)
  with pytest.raises(WorkdirError) as info:
    _restore(workdir, TOTAL_STEPS)  # What evaluate_workdir and a resume call.
  message = str(info.value)
  assert f"step {TOTAL_STEPS}" in message and "\n" not in message
  assert "damaged or incomplete" in message
  # The other checkpoints are still there to fall back on, and they restore.
  others = [s for s in reference["steps"] if s != TOTAL_STEPS]
  assert ", ".join(map(str, others)) in message
  assert _restore(workdir, others[-1])["step"] == others[-1]


def test_damaged_checkpoint_via_cli_and_on_resume(reference, tmp_path, tfds_dir,
                                                  data_root):
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir"], workdir)
  _damage(workdir / "checkpoints" / str(TOTAL_STEPS), "truncated_manifest")
  proc = run_main("--mode=eval", f"--workdir={workdir}", "--checkpoint=latest")
  assert proc.returncode == 1
  lines = proc.stderr.splitlines()
  errors = [i for i, l in enumerate(lines) if l.startswith("error: ")]
  assert len(errors) == 1 and f"step {TOTAL_STEPS}" in lines[errors[0]]
  # Orbax's background reads of the failed restore may outlive the error and print
  # while the interpreter exits: the command hides what it can (cli.py); the one-line
  # error comes first.
  assert "Traceback" not in "\n".join(lines[:errors[0]])
  # Training refuses to resume from it rather than crashing or starting over.
  before = _snapshot(workdir / "checkpoints")
  with pytest.raises(WorkdirError, match=f"step {TOTAL_STEPS}"):
    train.train(_config(tfds_dir, data_root), str(workdir))
  assert _snapshot(workdir / "checkpoints") == before


# ----------------------------------------------------------------------------------
# 6. Workdir mismatches and missing checkpoints.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("override,named", [
    ({"model.hidden_size": 32}, ["model.hidden_size=16 -> 32"]),
    ({"data.name": "fashion_mnist"}, ["data.name='mnist' -> 'fashion_mnist'"]),
    ({"seed": 8, "model.name": "gru", "data.sequence": "pixels",
      "model.hidden_size": 8},
     ["seed=7 -> 8", "model.name='lstm' -> 'gru'", "data.sequence='rows' -> 'pixels'",
      "model.hidden_size=16 -> 8"]),
])
def test_workdir_of_another_experiment_is_refused_untouched(
    reference, tmp_path, tfds_dir, data_root, override, named):
  """Every differing field is named, not just the first."""
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir"], workdir)
  before = _snapshot(workdir)
  with pytest.raises(WorkdirError) as info:
    train.train(_config(tfds_dir, data_root, **override), str(workdir))
  message = str(info.value)
  assert "holds another run" in message and "\n" not in message
  for text in named:
    assert text in message
  assert _snapshot(workdir) == before


def test_eval_without_checkpoints_or_with_unknown_step(reference, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  shutil.copy(reference["workdir"] / "config.json", workdir / "config.json")
  with pytest.raises(WorkdirError, match="no checkpoint in"):
    evaluate.evaluate_workdir(str(workdir))
  (workdir / "checkpoints").mkdir()
  with pytest.raises(WorkdirError, match="no checkpoint in"):
    evaluate.evaluate_workdir(str(workdir), "latest")
  with pytest.raises(WorkdirError, match="does not exist"):
    evaluate.evaluate_workdir(str(tmp_path / "nowhere"))
  full = tmp_path / "full"
  shutil.copytree(reference["workdir"], full)
  steps = ", ".join(map(str, reference["steps"]))
  with pytest.raises(WorkdirError, match=f"no checkpoint at step 12345 .*{steps}"):
    evaluate.evaluate_workdir(str(full), "12345")
  with pytest.raises(WorkdirError, match="is not 'latest', 'best' or a step"):
    evaluate.evaluate_workdir(str(full), "newest")
