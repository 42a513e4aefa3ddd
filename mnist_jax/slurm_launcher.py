"""SLURM as a sweep's launcher: one `sbatch` job per run, followed with `squeue`.

Plain sbatch rather than a launcher library (submitit): a run is already a command,
so its job is a two-line batch script, and the job id, log and signal options that
resubmission relies on stay in plain sight in the run's folder:

    WORKDIR/slurm_job.sh        the batch script: `exec` of the run's command
    WORKDIR/slurm-<jobid>.log   the job's output (a requeued job appends to it)
    WORKDIR/slurm_jobs.json     every job id submitted for the run, the latest last

A sweep run again first looks up each unfinished run's latest job: one still queued
or running is followed, not submitted twice. Stopping a job keeps its work:

  * `--signal=B:TERM@<grace>`: SLURM sends SIGTERM that many seconds before the time
    limit to the batch shell, which is the run itself (exec): it saves a checkpoint
    and exits 0. (Without `B:` SLURM signals job steps only, and this job has none.)
  * `scancel` and preemption send SIGTERM to every process of the job, then SIGKILL
    after the cluster's KillWait (30 s by default): the run saves in between.
  * `--requeue`: a job preempted with PreemptMode=REQUEUE goes back to the queue under
    its id and resumes from its checkpoint when it starts again.

Nothing here assumes the local cluster of tests/slurm/local_cluster.sh.
"""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Iterable, Sequence

from mnist_jax import provenance
from mnist_jax.errors import DamagedFileError, UserError
from mnist_jax.launchers import Job
from mnist_jax.workdir import write_atomic

# squeue's job states (squeue -t all): still to run or running, and how ended ones
# count for the sweep.
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING",
          "SUSPENDED", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
ACTIVE = QUEUED | {"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}
KILLED = {"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE"}
RECORD = "slurm_jobs.json"
POLL_FAILURES_ALLOWED_S = 300  # A busy slurmctld times out now and then.


class SlurmError(UserError):
  """An sbatch or squeue call failed; the message is its first error line."""


@dataclasses.dataclass(frozen=True)
class Options:
  """`mnist-jax-sweep --slurm_*`: what each run's job asks for."""
  partition: str | None = None
  time: str | None = None  # sbatch --time, e.g. "2:00:00". None: the partition's.
  cpus_per_run: int = 1
  gpus_per_run: int = 0
  sbatch: str = ""  # More sbatch options, as one shell-quoted string; they win.
  signal_grace_s: int = 120  # SIGTERM this long before the time limit.

  def sbatch_args(self) -> list[str]:
    args = ["--ntasks=1", f"--cpus-per-task={self.cpus_per_run}",
            f"--signal=B:TERM@{self.signal_grace_s}", "--requeue"]
    if self.partition:
      args.append(f"--partition={self.partition}")
    if self.time:
      args.append(f"--time={self.time}")
    if self.gpus_per_run:
      args.append(f"--gpus={self.gpus_per_run}")
    return args + shlex.split(self.sbatch)  # Later options override earlier ones.


def _call(args: Sequence[str], ok_errors: Iterable[str] = ()) -> str:
  """stdout of a SLURM command; "" when stderr holds one of `ok_errors`.

  Raises:
    SlurmError: the command is missing, timed out or failed (its first error line).
  """
  try:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
  except FileNotFoundError:
    raise SlurmError(f"--launcher=slurm: `{args[0]}` not found; run the sweep where "
                     f"SLURM's commands are (a login node), or see "
                     f"docs/distributed.md.") from None
  except subprocess.TimeoutExpired:
    raise SlurmError(f"{args[0]} did not answer in 120 s; is slurmctld up?") from None
  if proc.returncode != 0:
    if any(e in proc.stderr for e in ok_errors):
      return ""
    lines = [l for l in proc.stderr.splitlines() if l.strip()] or [
        f"exit status {proc.returncode}"]
    raise SlurmError(f"{args[0]} failed: {lines[-1].strip()}")
  return proc.stdout


def job_states(ids: Sequence[str]) -> dict[str, str]:
  """{job id: squeue state} of the jobs slurmctld still knows (finished ones for
  MinJobAge, 300 s by default, after they end)."""
  if not ids:
    return {}
  # One id slurmctld has forgotten fails the call when it is the only one asked.
  out = _call(["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}",
               "--format=%i %T"], ok_errors=("Invalid job id",))
  states = {}
  for line in out.splitlines():
    parts = line.split()
    if len(parts) == 2:
      states[parts[0]] = parts[1].rstrip("+")
  return states


def recorded_jobs(workdir: str) -> list[dict]:
  """WORKDIR/slurm_jobs.json's jobs, oldest first ([] if none)."""
  path = os.path.join(workdir, RECORD)
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      jobs = json.load(f)["jobs"]
    assert all(isinstance(j["id"], str) for j in jobs)
    return jobs
  except (OSError, ValueError, KeyError, TypeError, AssertionError):
    raise DamagedFileError(f"{path} is damaged; if no job of this run is queued or "
                           f"running (squeue), delete it and run the sweep again."
                           ) from None


class SlurmLauncher:
  """Runs as SLURM jobs (see the module docstring); the same methods as
  launchers.LocalLauncher."""

  poll_every_s = 2.0

  def __init__(self, options: Options, parallel: int | None, cpu_devices: int | None,
               count: int):
    self.options = options
    # One CPU device each, whatever the job's CPUs: a run's numbers then do not
    # depend on the node it lands on.
    self.slots = [{"cpu_devices": str(cpu_devices or 1)}] * (parallel or count or 1)
    self._failing_since = None

  def describe(self) -> str:
    return f"as SLURM jobs, {len(self.slots)} in the queue at a time"

  def adopt(self, runs: dict[str, str]) -> list[Job]:
    """Jobs of `runs` ({name: workdir}) that an earlier sweep submitted and SLURM
    still queues or runs."""
    latest = {name: jobs[-1] for name, workdir in runs.items()
              if (jobs := recorded_jobs(workdir))}
    states = job_states([job["id"] for job in latest.values()])
    adopted = []
    for name, job in latest.items():
      state = states.get(job["id"])
      if state in ACTIVE:
        adopted.append(Job(name, runs[name], self.slots[0], job["log"], job["id"],
                           "queued" if state in QUEUED else "running"))
    return adopted

  def start(self, name: str, workdir: str, command: Sequence[str],
            slot: dict[str, str]) -> Job:
    del slot  # Each job has the same; the command carries its --cpu_devices.
    os.makedirs(workdir, exist_ok=True)
    script = os.path.join(workdir, "slurm_job.sh")
    write_atomic(script, f"#!/bin/bash\n# mnist-jax-sweep run {name}. The run replaces "
                         f"this shell,\n# so signals to the batch shell reach it.\n"
                         f"exec {shlex.join(command)}\n")
    sweep = os.path.basename(os.path.dirname(os.path.abspath(workdir)))
    out = _call(["sbatch", "--parsable", f"--job-name={sweep}/{name}",
                 f"--output={os.path.abspath(workdir)}/slurm-%j.log",
                 "--open-mode=append", f"--chdir={os.getcwd()}",
                 *self.options.sbatch_args(), script])
    job_id = out.strip().split(";")[0]  # "id" or "id;cluster".
    if not job_id.isdigit():
      raise SlurmError(f"sbatch printed {out.strip()!r}, not a job id.")
    log = os.path.join(os.path.abspath(workdir), f"slurm-{job_id}.log")
    jobs = recorded_jobs(workdir) + [{"id": job_id, "log": log, "submitted":
                                      time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    write_atomic(os.path.join(workdir, RECORD), json.dumps({"jobs": jobs}, indent=2))
    return Job(name, workdir, self.slots[0], log, job_id, "queued")

  def ended(self, jobs: Sequence[Job]) -> dict[str, str]:
    """"exited", "failed" or "killed" for each job no longer queued or running;
    updates the others' `state`. A failing squeue is retried for a while."""
    try:
      states = job_states([job.handle for job in jobs])
    except SlurmError as e:
      now = time.monotonic()
      if self._failing_since is None:
        self._failing_since = now
        print(f"[sweep] {e} (retrying)", flush=True)
      if now - self._failing_since > POLL_FAILURES_ALLOWED_S:
        raise
      return {}
    self._failing_since = None
    out = {}
    for job in jobs:
      state = states.get(job.handle)
      if state in ACTIVE:
        job.state = "queued" if state in QUEUED else "running"
      else:
        out[job.name] = _outcome(state, job.workdir)
    return out

  def stop(self, jobs: Sequence[Job], signum: int) -> bool:
    """The jobs are SLURM's: they go on; the sweep stops following them."""
    del signum
    if jobs:
      ids = " ".join(str(job.handle) for job in jobs)
      print(f"[sweep] left in SLURM: jobs {ids}; run the same command again to follow "
            f"them, or `scancel {ids}` (each saves a checkpoint).", file=sys.stderr,
            flush=True)
    return False


def _outcome(state: str | None, workdir: str) -> str:
  """How an ended job counts: "exited" (status 0), "killed" (cancelled, timed out,
  preempted: resumable) or "failed". A job slurmctld has forgotten counts by the
  run's own record of its last session."""
  if state == "COMPLETED":
    return "exited"
  if state in KILLED:
    return "killed"
  if state is None:
    try:
      last = provenance.read(workdir).get("status")
    except DamagedFileError:
      last = None
    return "failed" if last in ("failed", None) else "killed"
  return "failed"  # FAILED, OUT_OF_MEMORY, NODE_FAIL, BOOT_FAIL.
