"""Sweeps: grid and names, skip and resume, a failing run among good ones, the summary's
numbers, and each test image's position in the official files."""

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, one_line_error
from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import launchers
from mnist_jax import summary
from mnist_jax import sweeps
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError, DamagedFileError, UserError, WorkdirError


# ----------------------------------------------------------------------------------
# Grid and names (no training).
# ----------------------------------------------------------------------------------
def test_grid_is_the_cartesian_product_named_by_overrides():
  axes = dict([sweeps.parse_axis("seed=0,1,2"),
               sweeps.parse_axis("model.hidden_size=64,128")])
  runs = sweeps.grid(axes)
  assert [r.name for r in runs] == [
      "seed=0+model.hidden_size=64", "seed=0+model.hidden_size=128",
      "seed=1+model.hidden_size=64", "seed=1+model.hidden_size=128",
      "seed=2+model.hidden_size=64", "seed=2+model.hidden_size=128"]
  assert runs[1].flags() == ["--config.seed=0", "--config.model.hidden_size=128"]
  assert {r.setting for r in runs} == {"model.hidden_size=64", "model.hidden_size=128"}
  assert sweeps.Run((("data.name", "a/b c"),)).name == "data.name=a_b_c"  # A folder.


def test_cpu_runs_share_the_cores_out_as_devices(monkeypatch):
  monkeypatch.setattr(launchers.glob, "glob", lambda pattern: [])  # No GPU.
  monkeypatch.setattr(launchers.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3},
                      raising=False)
  devices = lambda parallel, given=None: [
      s["cpu_devices"] for s in launchers.local_slots(parallel, given)]
  assert devices(None) == ["1"] * 4  # One run per core.
  assert devices(1) == ["4"] and devices(2) == ["2", "2"] and devices(3) == ["1"] * 3
  assert devices(6) == ["1"] * 6
  assert devices(2, given=1) == ["1", "1"]  # mnist-jax-sweep --cpu_devices=1.
  sweep = sweeps.Sweep("c.py", "d", [sweeps.Run((("seed", "0"),))], [],
                       launchers.LocalLauncher(1))
  assert sweep.command(sweep.runs[0], {"cpu_devices": "2"})[-1] == "--cpu_devices=2"
  assert sweep.command(sweep.runs[0], {"gpu": "0"})[-1] == "--cpu_devices=1"


@pytest.mark.parametrize("text", ["seed", "seed=", "=1,2", "seed=1,,2"])
def test_bad_sweep_axis_is_one_line(text):
  with pytest.raises(UserError, match="must look like KEY=VALUE,VALUE"):
    sweeps.parse_axis(text)


def test_every_run_is_validated_before_anything_starts():
  config = config_lib.get_config()
  good = sweeps.grid({"model.hidden_size": ["8", "16"], "optimizer.learning_rate":
                      ["1e-3"], "data.standardize": ["true"]})
  sweeps.check_runs(config, good)
  with pytest.raises(ConfigError, match="model.hidden_size=0 must be a positive"):
    sweeps.check_runs(config, sweeps.grid({"model.hidden_size": ["8", "0"]}))
  with pytest.raises(ConfigError, match="no field 'model.hiden_size'"):
    sweeps.check_runs(config, sweeps.grid({"model.hiden_size": ["8"]}))
  with pytest.raises(ConfigError, match="'x' is not a valid int"):
    sweeps.check_runs(config, sweeps.grid({"seed": ["x"]}))


def test_get_sweep_in_the_config_file_and_flags_on_top(tmp_path):
  path = tmp_path / "exp.py"
  path.write_text("from mnist_jax.config import get_config\n"
                  "def get_sweep():\n  return {'seed': [0, 1], 'model.hidden_size': [8]}\n")
  axes = sweeps.axes_for(str(path), ["model.hidden_size=16,32"])
  assert axes == {"seed": ["0", "1"], "model.hidden_size": ["16", "32"]}
  with pytest.raises(UserError, match="nothing to sweep"):
    sweeps.axes_for(str(REPO / "experiments" / "seed_lstm.py"), [])


def test_a_key_in_two_sweep_flags_or_a_repeated_value_is_an_error(tmp_path):
  """Before, the later --sweep=seed=... silently replaced the earlier one."""
  path = tmp_path / "exp.py"
  path.write_text("from mnist_jax.config import get_config\n")
  with pytest.raises(UserError, match=r"both sweep seed; .*--sweep=seed=0,1,2\)"):
    sweeps.axes_for(str(path), ["seed=0,1", "model.hidden_size=8", "seed=1,2"])
  with pytest.raises(UserError, match="share the folder 'seed=1'"):
    sweeps.grid({"seed": ["1", "2", "1"]})
  with pytest.raises(UserError, match="share the folder 'data.name=a_b'"):
    sweeps.grid({"data.name": ["a/b", "a b"]})


# ----------------------------------------------------------------------------------
# The summary's numbers, on made-up runs.
# ----------------------------------------------------------------------------------
def _fake_sweep(root, accuracies: dict[str, list[float | None]]) -> None:
  runs = []
  for setting, values in accuracies.items():
    for seed, acc in enumerate(values):
      name = f"seed={seed}+{setting}"
      runs.append({"name": name, "setting": setting,
                   "overrides": {"seed": str(seed), setting.split("=")[0]:
                                 setting.split("=")[1]}})
      workdir = root / name
      workdir.mkdir(parents=True)
      info = {"status": "running", "wall_time_s": 10.0 + seed}
      if acc is not None:
        info.update(status="completed", test={"accuracy": acc, "macro_f1": acc - 0.01,
                                               "checkpoint_step": 4})
      (workdir / "run_info.json").write_text(json.dumps(info))
      lines = [{"step": 2 * e, "split": "validation", "epoch": e,
                "accuracy": acc_e, "loss": 1.0}
               # Seed 0 ties at epochs 2 and 3: the later is the best checkpoint.
               for e, acc_e in ((1, 0.5), (2, 0.6 + seed / 100),
                                (3, 0.6 if seed == 0 else 0.55))]
      (workdir / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
  (root / "sweep.json").write_text(json.dumps({"config": "x.py", "common_overrides": [],
                                               "runs": runs}))


def test_damaged_run_files_count_as_unfinished_in_the_summary(tmp_path, capsys):
  """A truncated run_info.json, and a metrics.jsonl whose last line a kill cut short."""
  _fake_sweep(tmp_path, {"model.hidden_size=8": [0.91, 0.93, 0.96]})
  info = tmp_path / "seed=1+model.hidden_size=8" / "run_info.json"
  info.write_text(info.read_text()[:30])
  with open(tmp_path / "seed=2+model.hidden_size=8" / "metrics.jsonl", "a") as f:
    f.write('{"step": 8, "split": "validation", "epo')
  assert not sweeps.finished(str(info.parent))
  assert "run_info.json is damaged" in capsys.readouterr().out
  paths = summary.summarize(str(tmp_path))
  assert f"{info} is damaged" in capsys.readouterr().err
  with open(paths["runs.csv"]) as f:
    status = {r["run"]: r["status"] for r in csv.DictReader(f)}
  assert status["seed=1+model.hidden_size=8"] == "damaged run_info.json"
  with open(paths["summary.csv"]) as f:
    row = next(csv.DictReader(f))
  assert row["finished"] == "2"
  assert float(row["test_accuracy_mean"]) == pytest.approx((0.91 + 0.96) / 2)
  assert float(row["best_val_epoch_mean"]) == pytest.approx((3 + 2) / 2)


@pytest.mark.parametrize("text", ['{"config": "x.py", "runs": [{"na', '[]',
                                  '{"config": "x.py", "common_overrides": [], '
                                  '"runs": [{"name": "a"}]}'])
def test_damaged_sweep_json_is_one_line(tmp_path, text):
  _fake_sweep(tmp_path, {"model.hidden_size=8": [0.91]})
  (tmp_path / "sweep.json").write_text(text)
  with pytest.raises(DamagedFileError, match="sweep.json is damaged .*without "
                                             "--summary_only"):
    summary.summarize(str(tmp_path))
  proc = subprocess.run([sys.executable, "-m", "mnist_jax.sweep", "--summary_only",
                         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert "sweep.json is damaged" in one_line_error(proc)


def test_a_sweep_and_a_training_run_refuse_each_other_s_folder(tmp_path,
                                                               make_tiny_config):
  run, sweep = tmp_path / "run", tmp_path / "sweep"
  run.mkdir()
  (run / "config.json").write_text("{}")
  for summary_only in (False, True):
    with pytest.raises(UserError, match="holds a training run \\(config.json\\)"):
      sweeps.run_sweep("experiments/seed_rnn.py", config_lib.get_config(), str(run),
                       ["seed=0"], 1, [], summary_only=summary_only)
  _fake_sweep(sweep, {"model.hidden_size=8": [0.91]})
  with pytest.raises(WorkdirError, match="holds a sweep \\(sweep.json\\); train into"):
    workdir_lib.Workdir.create(config_lib.resolve(make_tiny_config()), str(sweep))
  with pytest.raises(WorkdirError, match="is a sweep folder, not a training workdir"):
    workdir_lib.read_config(str(sweep))
  assert not (sweep / "config.json").exists()
  assert os.listdir(run) == ["config.json"]  # Refused before anything was written.


def test_summary_numbers_equal_numpy(tmp_path):
  accuracies = {"model.hidden_size=8": [0.91, 0.93, 0.96],
                "model.hidden_size=16": [0.97, None]}  # Second seed unfinished.
  _fake_sweep(tmp_path, accuracies)
  paths = summary.summarize(str(tmp_path))
  with open(paths["summary.csv"]) as f:
    rows = {r["setting"]: r for r in csv.DictReader(f)}
  a = np.array(accuracies["model.hidden_size=8"])
  row = rows["model.hidden_size=8"]
  assert float(row["test_accuracy_mean"]) == pytest.approx(a.mean())
  assert float(row["test_accuracy_std"]) == pytest.approx(a.std(ddof=1))
  assert float(row["test_accuracy_min"]) == a.min()
  assert float(row["test_accuracy_max"]) == a.max()
  assert float(row["test_macro_f1_mean"]) == pytest.approx((a - 0.01).mean())
  assert float(row["best_val_epoch_mean"]) == pytest.approx((3 + 2 + 2) / 3)
  assert float(row["wall_time_s_mean"]) == pytest.approx(11.0)
  other = rows["model.hidden_size=16"]
  assert (other["runs"], other["finished"]) == ("2", "1")
  assert float(other["test_accuracy_std"]) == 0.0
  md = open(paths["summary.md"]).read()
  assert f"| model.hidden_size=8 |  | 3/3 | {100 * a.mean():.2f} ± {100 * a.std(ddof=1):.2f}" in md
  for name in ("accuracy.png", "learning_curves.png"):
    assert os.path.getsize(paths[name]) > 1000
  from tensorboard.backend.event_processing import event_multiplexer
  mux = event_multiplexer.EventMultiplexer()
  mux.AddRunsFromDirectory(str(tmp_path / "hparams"))
  mux.Reload()
  assert len([r for r in mux.Runs() if r.startswith("seed=")]) == 4  # Finished runs.


# ----------------------------------------------------------------------------------
# Real sweeps of tiny runs, through the command line.
# ----------------------------------------------------------------------------------
_TINY = ["--config.num_epochs=1", "--config.max_train_examples=100",
         "--config.max_eval_examples=100", "--config.batch_size=50",
         "--config.eval_batch_size=50", "--config.model.hidden_size=8",
         "--config.log_every_steps=1"]


def _sweep_cmd(sweep_dir, tfds_dir, *extra):
  return [sys.executable, "-m", "mnist_jax.sweep", "--config=experiments/seed_rnn.py",
          f"--workdir={sweep_dir}", f"--config.data.tfds_dir={tfds_dir}", *_TINY,
          *extra]


@pytest.mark.slow
def test_sweep_runs_skips_finished_and_reports_a_failed_run(tmp_path, tfds_dir,
                                                            data_root):
  sweep_dir = tmp_path / "sweep"
  # learning rate 1e30: the update overflows, the run stops with an error (exit 1).
  cmd = _sweep_cmd(sweep_dir, tfds_dir, "--sweep=seed=0,1",
                   "--sweep=optimizer.learning_rate=0.01,1e30", "--parallel=2")
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "2 done, 2 failed" in proc.stdout
  good = [sweep_dir / f"seed={s}+optimizer.learning_rate=0.01" for s in (0, 1)]
  for workdir in good:
    assert sweeps.finished(str(workdir))
  bad = sweep_dir / "seed=0+optimizer.learning_rate=1e30"
  assert "non-finite" in (bad / "sweep.log").read_text()
  with open(sweep_dir / "summary.csv") as f:
    rows = {r["setting"]: r for r in csv.DictReader(f)}
  assert rows["optimizer.learning_rate=0.01"]["finished"] == "2"
  assert rows["optimizer.learning_rate=1e30"]["finished"] == "0"
  # Again: the finished runs are not trained again (their files stay as they were).
  before = {w: (w / "metrics.jsonl").read_text() for w in good}
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1 and "2 done, 2 failed" in proc.stdout
  assert {w: (w / "metrics.jsonl").read_text() for w in good} == before


@pytest.mark.slow
def test_sweep_killed_midway_resumes_to_the_same_summary(tmp_path, tfds_dir,
                                                         data_root):
  """SIGKILL the whole sweep (runs included) while it trains; the same command then
  finishes with the summary an uninterrupted sweep gives."""
  args = ["--sweep=seed=0,1", "--parallel=1", "--config.num_epochs=3"]
  reference = tmp_path / "reference"
  proc = subprocess.run(_sweep_cmd(reference, tfds_dir, *args), cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sweep_dir = tmp_path / "sweep"
  victim = subprocess.Popen(_sweep_cmd(sweep_dir, tfds_dir, *args), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
  log = sweep_dir / "seed=0" / "metrics.jsonl"
  deadline = time.monotonic() + 300
  while not (log.exists() and '"validation"' in log.read_text()):
    assert victim.poll() is None and time.monotonic() < deadline
    time.sleep(0.1)
  os.killpg(victim.pid, signal.SIGKILL)  # The sweep and its runs, at once.
  victim.wait()
  assert not sweeps.finished(str(sweep_dir / "seed=1"))
  proc = subprocess.run(_sweep_cmd(sweep_dir, tfds_dir, *args), cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(reference / "runs.csv") as f:
    expected = [{k: r[k] for k in ("run", "test_accuracy", "test_macro_f1",
                                   "checkpoint_step")} for r in csv.DictReader(f)]
  with open(sweep_dir / "runs.csv") as f:
    got = [{k: r[k] for k in ("run", "test_accuracy", "test_macro_f1",
                              "checkpoint_step")} for r in csv.DictReader(f)]
  assert got == expected


@pytest.mark.slow
@pytest.mark.faults
def test_second_sweep_on_a_folder_is_refused_naming_the_first(tmp_path, tfds_dir,
                                                               data_root):
  sweep_dir = tmp_path / "sweep"
  cmd = _sweep_cmd(sweep_dir, tfds_dir, "--sweep=seed=0,1", "--parallel=1")
  first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 120
    while not (sweep_dir / "sweep.json").exists():  # Written under the lock.
      assert first.poll() is None and time.monotonic() < deadline
      time.sleep(0.05)
    for extra in ([], ["--summary_only"]):
      start = time.monotonic()
      second = subprocess.run(cmd + extra, cwd=REPO, capture_output=True, text=True,
                              timeout=60)
      took = time.monotonic() - start
      line = one_line_error(second)
      assert f"sweep folder {sweep_dir} is in use by PID {first.pid} " in line
      assert took < 10, took
      assert first.poll() is None, "the first sweep ended before the second started"
    out, err = first.communicate(timeout=300)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 0, err[-3000:]
  assert "2 done" in out
  with open(sweep_dir / "summary.csv") as f:
    assert [r["finished"] for r in csv.DictReader(f)] == ["2"]


@pytest.mark.slow
@pytest.mark.faults
def test_sweep_rerun_trains_a_run_with_a_damaged_run_info_again(tmp_path, tfds_dir,
                                                                 data_root):
  """A run_info.json cut short (a full disk, say) is a run that did not finish: the
  sweep starts it again, it resumes from its checkpoints and writes a whole one."""
  sweep_dir = tmp_path / "sweep"
  cmd = _sweep_cmd(sweep_dir, tfds_dir, "--sweep=seed=0", "--parallel=1")
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = sweep_dir / "seed=0" / "run_info.json"
  test = json.loads(info.read_text())["test"]
  info.write_text(info.read_text()[:40])
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert f"{info} is damaged" in proc.stdout and "1 done" in proc.stdout
  assert "Resumed from checkpoint" in (info.parent / "sweep.log").read_text()
  assert sweeps.finished(str(info.parent))
  assert json.loads(info.read_text())["test"] == test


# ----------------------------------------------------------------------------------
# Joinable predictions.
# ----------------------------------------------------------------------------------
def test_source_index_points_into_the_official_test_files(tfds_dir, data_root):
  cfg = config_lib.get_config()
  cfg.data.tfds_dir = tfds_dir
  cfg.data.manual_dir = str(data_root / "mnist")
  test = data.load_splits(config_lib.resolve(cfg))["test"]
  with gzip.open(data_root / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  with gzip.open(data_root / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  assert sorted(test.source_index) == list(range(10_000))  # A permutation.
  np.testing.assert_array_equal(labels[test.source_index], test.labels)
  np.testing.assert_array_equal(images[test.source_index], test.images)
  assert list(test.source_index[:5]) != [0, 1, 2, 3, 4]  # tfds' order is not theirs.


def test_sigterm_is_passed_on_once_and_ctrl_c_not_again(monkeypatch):
  """A run that gets two signals stops without saving its current step: Ctrl-C in a
  terminal already reaches the runs, so the sweep passes on only SIGTERM."""
  sent = []

  class FakeProc:
    def send_signal(self, sig):
      sent.append(sig)

  sweep = sweeps.Sweep("x.py", "/tmp/unused", [], [], launchers.LocalLauncher(1))
  sweep._jobs = {n: launchers.Job(n, "/tmp/unused", {}, "log", FakeProc())
                 for n in ("a", "b")}
  sweep._handle(signal.SIGINT, None)
  assert sent == [] and sweep._stop == "SIGINT" and not sweep._detached
  sweep._handle(signal.SIGTERM, None)
  assert sent == [signal.SIGTERM, signal.SIGTERM] and sweep._stop == "SIGTERM"
  assert not sweep._detached  # Local runs are waited for while they save.
