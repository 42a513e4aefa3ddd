"""On a real scheduler: the one-machine SLURM cluster of tests/slurm/local_cluster.sh.

Sweeps through `--launcher=slurm` against the local launcher (the same summary, the
same predictions byte for byte, a W&B offline run per run), jobs of an earlier sweep
followed rather than submitted again, a job scancel'led midway finished by the same
command with identical results, and `srun -n 2` training against one process. Where
the cluster cannot be started (not root, no Debian packages, too slow), every test is
skipped with the script's one line.
"""

import csv
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_main
from mnist_jax import slurm_launcher
from wandb_offline import offline_env, offline_runs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

_SCRIPT = REPO / "tests" / "slurm" / "local_cluster.sh"
# Seconds to install the packages (if needed) and start the daemons.
_START_BUDGET_S = int(os.environ.get("MNIST_JAX_SLURM_START_BUDGET_S", "300"))
_TINY = ["--config.num_epochs=1", "--config.max_train_examples=100",
         "--config.max_eval_examples=100", "--config.batch_size=50",
         "--config.eval_batch_size=50", "--config.model.hidden_size=8",
         "--config.log_every_steps=1"]


@pytest.fixture(scope="session")
def slurm_cluster():
  """The local cluster, started (idempotent) or the reason it cannot be."""
  if os.environ.get("MNIST_JAX_SLURM_SKIP"):  # .ci/run tried and failed.
    pytest.skip(f"no local SLURM cluster: {os.environ['MNIST_JAX_SLURM_SKIP']}")
  if not hasattr(os, "geteuid") or os.geteuid() != 0:
    pytest.skip("SLURM tests start a local cluster as root (tests/slurm/"
                "local_cluster.sh start); not root here")
  try:
    proc = subprocess.run(["bash", str(_SCRIPT), "start"], capture_output=True,
                          text=True, timeout=_START_BUDGET_S, stdin=subprocess.DEVNULL)
  except subprocess.TimeoutExpired:
    pytest.skip(f"the local SLURM cluster did not start in {_START_BUDGET_S} s "
                f"(MNIST_JAX_SLURM_START_BUDGET_S)")
  if proc.returncode != 0:
    lines = (proc.stderr + proc.stdout).strip().splitlines() or ["no output"]
    pytest.skip(f"no local SLURM cluster: {lines[-1]}")


def _sweep(sweep_dir, tfds_dir, *extra, env=None, wait=True):
  cmd = [sys.executable, "-m", "mnist_jax.sweep", "--config=experiments/seed_rnn.py",
         f"--workdir={sweep_dir}", f"--config.data.tfds_dir={tfds_dir}", *_TINY,
         "--cpu_devices=1", *extra]
  full_env = {**os.environ, **(env or {})}
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _without_wall_time(path) -> list[dict]:
  with open(path) as f:
    return [{k: v for k, v in row.items() if not k.startswith("wall_time")}
            for row in csv.DictReader(f)]


def _predictions(workdir) -> bytes:
  [path] = (workdir / "eval").glob("test_step*_predictions.csv")
  return path.read_bytes()


def _wait_for(condition, what: str, proc=None, timeout: float = 300) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert proc is None or proc.poll() is None, f"the sweep ended before {what}"
    assert time.monotonic() < deadline, f"no {what} in {timeout} s"
    time.sleep(0.1)


def test_a_sweep_on_slurm_equals_the_local_one(tmp_path, tfds_dir, slurm_cluster):
  wandb_env = offline_env(tmp_path)
  grid = ["--sweep=seed=0,1", "--sweep=model.name=lstm,gru",
          "--config.wandb.enabled=true"]
  local, slurm = tmp_path / "local", tmp_path / "slurm"
  _sweep(local, tfds_dir, *grid, env=wandb_env)
  out = _sweep(slurm, tfds_dir, *grid, "--launcher=slurm", env=wandb_env).stdout
  assert "4 runs, as SLURM jobs" in out and "4 done" in out
  for name in ("summary.csv", "runs.csv"):
    assert _without_wall_time(slurm / name) == _without_wall_time(local / name)
  table = lambda p: [l.rsplit("|", 2)[0] for l in p.read_text().splitlines()]
  assert table(slurm / "summary.md") == table(local / "summary.md")
  runs = json.loads((slurm / "sweep.json").read_text())["runs"]
  assert len(runs) == 4
  for run in runs:
    workdir = slurm / run["name"]
    assert _predictions(workdir) == _predictions(local / run["name"])
    [job] = slurm_launcher.recorded_jobs(str(workdir))
    assert (workdir / f"slurm-{job['id']}.log").exists()
    # One W&B offline run per sweep run: its config, grouped by sweep, test metrics.
    [session] = offline_runs(workdir)
    assert session["group"] == "slurm" and session["name"] == run["name"]
    assert session["config"]["seed"] == int(run["overrides"]["seed"])
    assert session["config"]["model"]["name"] == run["overrides"]["model.name"]
    test = json.loads((workdir / "run_info.json").read_text())["test"]
    assert session["summary"]["test/accuracy"] == test["accuracy"]
    assert session["summary"]["test/macro_f1"] == test["macro_f1"]


def test_queued_jobs_are_followed_and_a_cancelled_one_resumes(tmp_path, tfds_dir,
                                                              data_root, slurm_cluster):
  """Sweep 1 submits held jobs and is stopped; sweep 2 follows those jobs (submits
  none) and one is scancel'led midway; sweep 3 resubmits only that one, which
  resumes and ends with the predictions of an uninterrupted run."""
  longer = ["--sweep=seed=0,1", "--config.num_epochs=2",
            "--config.max_train_examples=20000", "--config.log_every_steps=10",
            "--launcher=slurm"]
  sweep_dir = tmp_path / "sweep"
  workdirs = {s: sweep_dir / f"seed={s}" for s in (0, 1)}
  jobs = lambda s: [j["id"] for j in slurm_launcher.recorded_jobs(str(workdirs[s]))]
  first = _sweep(sweep_dir, tfds_dir, *longer, "--slurm_sbatch=--hold", wait=False)
  records = [w / slurm_launcher.RECORD for w in workdirs.values()]
  _wait_for(lambda: all(r.exists() for r in records), "job records", first,
            timeout=120)
  first.terminate()  # SIGTERM: the sweep stops following; the held jobs stay queued.
  out, err = first.communicate(timeout=120)
  assert first.returncode == 0, err[-3000:]
  held = [jobs(0)[0], jobs(1)[0]]
  assert f"left in SLURM: jobs {' '.join(held)}" in err and "2 queued" in out
  second = _sweep(sweep_dir, tfds_dir, *longer, wait=False)
  seen = ""
  while "queued" not in seen:  # Its first status line: the held jobs are followed.
    line = second.stdout.readline()
    assert line, f"the second sweep ended: {second.stderr.read()[-3000:]}"
    seen += line
  subprocess.run(["scontrol", "release", *held], check=True, capture_output=True)
  log = workdirs[0] / "metrics.jsonl"
  _wait_for(lambda: log.exists() and '"train"' in log.read_text(), "training", second)
  subprocess.run(["scancel", held[0]], check=True)
  out, err = second.communicate(timeout=600)
  out = seen + out
  assert second.returncode == 0, out[-3000:] + err[-3000:]
  assert "1 done, 1 stopped" in out, out
  assert (jobs(0), jobs(1)) == ([held[0]], [held[1]])  # Followed, not resubmitted.
  assert "Stopped by SIGTERM at step" in (workdirs[0] / f"slurm-{held[0]}.log"
                                          ).read_text()
  out = _sweep(sweep_dir, tfds_dir, *longer).stdout
  assert "2 done" in out and jobs(1) == [held[1]] and len(jobs(0)) == 2
  assert "Resumed from checkpoint at step" in (
      workdirs[0] / f"slurm-{jobs(0)[1]}.log").read_text()
  reference = tmp_path / "reference"
  proc = run_main("--config=experiments/seed_rnn.py", f"--workdir={reference}",
                  f"--config.data.tfds_dir={tfds_dir}", *_TINY, *longer[1:4],
                  "--config.seed=0", "--cpu_devices=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _predictions(workdirs[0]) == _predictions(reference)


def test_srun_two_processes_predict_as_one(tmp_path, tfds_dir, data_root,
                                           slurm_cluster):
  """jax.distributed set up from srun's own variables, no flags; gloo on CPU."""
  args = lambda workdir: [
      "--config=experiments/seed_lstm.py", f"--workdir={workdir}",
      f"--config.data.tfds_dir={tfds_dir}", "--config.num_epochs=1",
      "--config.max_train_examples=200", "--config.max_eval_examples=200",
      "--config.batch_size=50", "--config.eval_batch_size=64",
      "--config.model.hidden_size=16", "--config.log_every_steps=2"]
  proc = subprocess.run(["srun", "--ntasks=2", "--cpus-per-task=1",
                         "--kill-on-bad-exit=1", "--time=10", sys.executable, "-m",
                         "mnist_jax.main", *args(tmp_path / "two")], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for i in (0, 1):
    assert f"jax.distributed: process {i} of 2 (slurm)" in proc.stderr
  one = run_main(*args(tmp_path / "one"), "--cpu_devices=1")
  assert one.returncode == 0, one.stderr[-3000:]
  rows = lambda name: list(csv.DictReader(_predictions(tmp_path / name).decode()
                                          .splitlines()))
  two, single = rows("two"), rows("one")
  assert len(two) == len(single) == 200
  assert [r["index"] for r in two] == [r["index"] for r in single]
  assert sum(a["predicted"] != b["predicted"] for a, b in zip(two, single)) == 0
