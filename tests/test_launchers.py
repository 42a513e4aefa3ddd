"""The sweep's launchers without a cluster: SlurmLauncher against stand-in `sbatch` and
`squeue` scripts (what it submits, what it records, how it reads job states, one-line
errors), and the --slurm_* flags. tests/test_slurm.py runs them on a real SLURM."""

import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from conftest import REPO, one_line_error
from mnist_jax import launchers
from mnist_jax import slurm_launcher
from mnist_jax import sweeps
from mnist_jax.errors import DamagedFileError

# Stand-ins: sbatch logs its arguments and prints the next job id; squeue prints
# $FAKE/states (lines "ID STATE"), or fails as told by $FAKE/squeue_error.
_SBATCH = """#!/bin/bash
if [ -f "$FAKE/sbatch_error" ]; then cat "$FAKE/sbatch_error" >&2; exit 1; fi
printf '%s\\n' "$@" > "$FAKE/sbatch_args.$(cat "$FAKE/next_id")"
cat "$FAKE/next_id"
echo $(( $(cat "$FAKE/next_id") + 1 )) > "$FAKE/next_id"
"""
_SQUEUE = """#!/bin/bash
printf '%s\\n' "$@" > "$FAKE/squeue_args"
if [ -f "$FAKE/squeue_error" ]; then cat "$FAKE/squeue_error" >&2; exit 1; fi
cat "$FAKE/states" 2>/dev/null
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
  bin_dir, state = tmp_path / "bin", tmp_path / "fake"
  bin_dir.mkdir()
  state.mkdir()
  (state / "next_id").write_text("100\n")
  for name, text in (("sbatch", _SBATCH), ("squeue", _SQUEUE)):
    path = bin_dir / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE", str(state))
  return state


def _launcher(**options):
  return slurm_launcher.SlurmLauncher(slurm_launcher.Options(**options), None, None, 4)


def test_a_run_is_one_sbatch_job_recorded_in_its_folder(fake_slurm, tmp_path):
  launcher = _launcher(partition="cpu", time="1:00:00", cpus_per_run=2,
                       sbatch="--account=ml --signal=B:TERM@300")
  assert launcher.slots == [{"cpu_devices": "1"}] * 4  # One device each, by default.
  workdir = str(tmp_path / "sweep" / "seed=0")
  job = launcher.start("seed=0", workdir, ["python", "-m", "mnist_jax.main", "--a=b c"],
                       launcher.slots[0])
  assert (job.handle, job.state) == ("100", "queued")
  assert job.log == os.path.join(workdir, "slurm-100.log")
  args = (fake_slurm / "sbatch_args.100").read_text().splitlines()
  assert args[0] == "--parsable" and args[-1] == os.path.join(workdir, "slurm_job.sh")
  for wanted in ("--job-name=sweep/seed=0", f"--output={workdir}/slurm-%j.log",
                 "--ntasks=1", "--cpus-per-task=2", "--partition=cpu",
                 "--time=1:00:00", "--requeue", "--account=ml"):
    assert wanted in args
  # The user's --signal comes after the sweep's, so sbatch keeps theirs.
  assert args.index("--signal=B:TERM@300") > args.index("--signal=B:TERM@120")
  script = open(os.path.join(workdir, "slurm_job.sh")).read()
  assert "exec python -m mnist_jax.main '--a=b c'\n" in script
  launcher.start("seed=0", workdir, ["python"], launcher.slots[0])
  assert [j["id"] for j in slurm_launcher.recorded_jobs(workdir)] == ["100", "101"]


def test_job_states_decide_what_ended_and_how(fake_slurm, tmp_path):
  launcher = _launcher()
  jobs = {n: launchers.Job(n, str(tmp_path / n), {}, "log", str(i))
          for i, n in enumerate(["queued", "running", "done", "cancelled", "failed",
                                 "forgotten"])}
  (fake_slurm / "states").write_text("0 PENDING\n1 RUNNING\n2 COMPLETED\n"
                                     "3 CANCELLED+\n4 FAILED\n")
  ended = launcher.ended(list(jobs.values()))
  assert ended == {"done": "exited", "cancelled": "killed", "failed": "failed",
                   "forgotten": "failed"}  # Gone from slurmctld, no run_info.json.
  assert jobs["queued"].state == "queued" and jobs["running"].state == "running"
  assert "--jobs=0,1,2,3,4,5" in (fake_slurm / "squeue_args").read_text().split()
  # A forgotten job whose run recorded a stopped session was stopped, not failed.
  os.makedirs(jobs["forgotten"].workdir)
  with open(os.path.join(jobs["forgotten"].workdir, "run_info.json"), "w") as f:
    json.dump({"status": "stopped"}, f)
  assert launcher.ended([jobs["forgotten"]]) == {"forgotten": "killed"}


def test_a_job_still_in_slurm_is_followed_not_submitted_again(fake_slurm, tmp_path):
  launcher = _launcher()
  runs = {n: str(tmp_path / n) for n in ("a", "b", "c")}
  launcher.start("a", runs["a"], ["true"], {})  # Job 100.
  launcher.start("b", runs["b"], ["true"], {})  # Job 101.
  (fake_slurm / "states").write_text("100 RUNNING\n101 COMPLETED\n")
  [job] = launcher.adopt(runs)
  assert (job.name, job.handle, job.state) == ("a", "100", "running")
  # slurmctld forgot every job asked for: squeue fails, and that is no error.
  (fake_slurm / "squeue_error").write_text(
      "slurm_load_jobs error: Invalid job id specified\n")
  assert launcher.adopt(runs) == []


def test_slurm_failures_are_one_line(fake_slurm, tmp_path, monkeypatch):
  launcher = _launcher()
  (fake_slurm / "sbatch_error").write_text(
      "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
  with pytest.raises(slurm_launcher.SlurmError, match=r"^sbatch failed: sbatch: error: "
                     r"Batch job submission failed: Invalid partition name specified$"):
    launcher.start("a", str(tmp_path / "a"), ["true"], {})
  (fake_slurm / "squeue_error").write_text("squeue: error: Unable to contact slurm "
                                           "controller (connect failure)\n")
  jobs = [launchers.Job("a", str(tmp_path / "a"), {}, "log", "7")]
  os.makedirs(tmp_path / "a", exist_ok=True)
  (tmp_path / "a" / slurm_launcher.RECORD).write_text(
      '{"jobs": [{"id": "7", "log": "log"}]}')
  with pytest.raises(slurm_launcher.SlurmError, match="^squeue failed: .*connect"):
    launcher.adopt({"a": str(tmp_path / "a")})
  # While following jobs, a failing squeue is retried for a while, then an error.
  assert launcher.ended(jobs) == {}
  monkeypatch.setattr(slurm_launcher, "POLL_FAILURES_ALLOWED_S", -1)
  with pytest.raises(slurm_launcher.SlurmError, match="connect failure"):
    launcher.ended(jobs)
  monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
  with pytest.raises(slurm_launcher.SlurmError, match="`squeue` not found; run the "
                                                      "sweep where SLURM's commands"):
    slurm_launcher.job_states(["1"])
  (tmp_path / "a" / slurm_launcher.RECORD).write_text('{"jobs": [{"id": 7}]}')
  with pytest.raises(DamagedFileError, match="slurm_jobs.json is damaged"):
    slurm_launcher.recorded_jobs(str(tmp_path / "a"))


def test_a_stopped_sweep_leaves_slurm_jobs_running(fake_slurm, capsys):
  sweep = sweeps.Sweep("x.py", "/tmp/unused", [], [], _launcher())
  sweep._jobs = {"a": launchers.Job("a", "/tmp/unused", {}, "log", "42")}
  sweep._handle(signal.SIGTERM, None)
  assert sweep._detached and sweep._stop == "SIGTERM"
  assert "left in SLURM: jobs 42; run the same command again" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--slurm_partition=cpu"], "--slurm_partition is for --launcher=slurm"),
    (["--launcher=slurm", "--slurm_sbatch=--comment='x"],
     "--slurm_sbatch=\"--comment='x\": No closing quotation"),
])
def test_bad_slurm_flags_are_one_line(tmp_path, flags, message):
  proc = subprocess.run([sys.executable, "-m", "mnist_jax.sweep",
                         "--config=experiments/seed_rnn.py", "--sweep=seed=0",
                         f"--workdir={tmp_path / 's'}", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert message in one_line_error(proc)
