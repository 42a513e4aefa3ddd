"""How a sweep starts its runs: processes on this machine, or SLURM jobs.

`Sweep` (sweeps.py) decides which runs to start and when; a launcher starts one run's
command, says which of its jobs ended and how, and passes a stop on. Both launchers
have the same methods, so the sweep never asks which one it has:

    slots                   what each concurrent run gets ({"cpu_devices": "1"}, ...)
    adopt(runs)             jobs still alive from an earlier sweep of the same folder
    start(name, workdir, command, slot) -> Job
    ended(jobs)             {name: "exited" | "failed" | "killed"} of those that ended
    stop(jobs, signum)      passes a signal on; False: the jobs go on without us

SLURM (slurm_launcher.py) is a job per run through plain `sbatch`.
"""

import dataclasses
import glob
import os
import signal
import subprocess
from typing import Any, Sequence

from mnist_jax.errors import disk_errors


@dataclasses.dataclass
class Job:
  """One run started by a launcher.

  Attributes:
    name: the run's name (its folder in the sweep).
    workdir: the run's workdir.
    slot: what it was given (see `local_slots`).
    log: the file its output goes to.
    handle: the launcher's own: a Popen, or a SLURM job id.
    state: "running", or "queued" while a scheduler has not started it.
  """
  name: str
  workdir: str
  slot: dict[str, str]
  log: str
  handle: Any
  state: str = "running"


def local_slots(parallel: int | None,
                cpu_devices: int | None = None) -> list[dict[str, str]]:
  """What each concurrent run gets: a GPU (`{"gpu": "i"}`) or a share of the CPUs.

  One run per GPU where there are GPUs, else one run per CPU core this process may
  use, each with one CPU device; fewer runs than cores (--parallel) get the cores
  shared out as CPU devices (`{"cpu_devices": "n"}`: --parallel=1 on 2 cores gives
  each run 2), unless `cpu_devices` says how many. CPU runs are not pinned to cores:
  a process pinned to one core gets a one-thread XLA pool and computes in another
  float order than `mnist-jax --cpu_devices=1` on the same machine, so its results
  would not be those of a single run. More runs than cores share the cores, which
  ends a sweep sooner when its last wave would leave cores idle (3 runs on 2 cores).
  On a TPU pod slice every run needs the whole slice: use --parallel=1 there.
  """
  gpus = sorted(glob.glob("/dev/nvidia[0-9]*"))
  if gpus and os.environ.get("JAX_PLATFORMS", "") in ("", "cuda", "gpu"):
    found = [{"gpu": str(i)} for i in range(len(gpus))]
    count = parallel or len(found)
    return [found[i % len(found)] for i in range(count)]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
  count = parallel or cores
  share = cpu_devices or max(1, cores // count)
  return [{"cpu_devices": str(share)} for _ in range(count)]


class LocalLauncher:
  """Each run a child process of the sweep, its output in WORKDIR/sweep.log."""

  poll_every_s = 0.2

  def __init__(self, parallel: int | None, cpu_devices: int | None = None):
    self.slots = local_slots(parallel, cpu_devices)

  def describe(self) -> str:
    return f"{len(self.slots)} at a time"

  def adopt(self, runs: dict[str, str]) -> list[Job]:
    """None: a local run ends with its sweep (or holds its workdir's lock until it
    does, and the restarted run says so)."""
    del runs
    return []

  def start(self, name: str, workdir: str, command: Sequence[str],
            slot: dict[str, str]) -> Job:
    env = dict(os.environ)
    if "gpu" in slot:
      env["CUDA_VISIBLE_DEVICES"] = slot["gpu"]
    log_path = os.path.join(workdir, "sweep.log")
    with disk_errors(log_path):
      os.makedirs(workdir, exist_ok=True)
      log = open(log_path, "a")
    proc = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                            env=env, stdin=subprocess.DEVNULL)
    log.close()
    return Job(name, workdir, slot, log_path, proc)

  def ended(self, jobs: Sequence[Job]) -> dict[str, str]:
    """"exited" (status 0: finished, or stopped by a signal at a checkpoint) or
    "failed" for each job whose process has ended."""
    out = {}
    for job in jobs:
      code = job.handle.poll()
      if code is not None:
        out[job.name] = "exited" if code == 0 else "failed"
    return out

  def stop(self, jobs: Sequence[Job], signum: int) -> bool:
    """Passes SIGTERM on; waits for the runs to save and exit.

    Ctrl-C in a terminal already reaches every run (one process group), and a second
    signal would make a run exit without saving; so only SIGTERM is passed on.
    """
    if signum == signal.SIGTERM:
      for job in jobs:
        job.handle.send_signal(signal.SIGTERM)
    return True


def make_launcher(name: str, parallel: int | None, cpu_devices: int | None,
                  count: int, slurm_options=None):
  """The launcher `--launcher=name` asks for, for `count` runs (slurm: with
  `slurm_options`, a slurm_launcher.Options)."""
  if name == "slurm":
    from mnist_jax import slurm_launcher
    return slurm_launcher.SlurmLauncher(slurm_options or slurm_launcher.Options(),
                                        parallel, cpu_devices, count)
  return LocalLauncher(parallel, cpu_devices)
