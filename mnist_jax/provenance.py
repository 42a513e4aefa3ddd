"""Where a run came from: WORKDIR/run_info.json.

    {"status": "running" | "completed" | "stopped" | "failed",
     "versions": {"jax": ..., "jaxlib", "flax", "optax", "orbax-checkpoint",
                  "tensorflow-datasets", "mnist_jax"},
     "git": {"commit": ..., "dirty": bool} or null (not a git checkout),
     "host", "command", "backend", "devices", "processes", "placement",
     "sessions": [{"start", "end", "status", "steps"}],   one per (re)start, UTC ISO
     "wall_time_s": sum of the sessions,
     "test": {"accuracy", "macro_f1", "checkpoint_step"}  once evaluated}

Written at the start and end of every session (atomically, process 0 only), so a
resumed run keeps the history of the processes that trained it. A damaged file (cut
short by a full disk, say) is read as no history: the run is resumed or evaluated
again, and a fresh history starts, with one warning.
"""

import datetime
import importlib.metadata
import json
import os
import socket
import subprocess
import sys

from absl import logging
import jax

from mnist_jax import results
from mnist_jax.errors import DamagedFileError, WriteError
from mnist_jax.workdir import write_atomic

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
            "tensorflow-datasets", "mnist_jax")


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="milliseconds")


def versions() -> dict[str, str | None]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def read(workdir: str) -> dict:
  """WORKDIR/run_info.json ({} if there is none).

  Raises:
    DamagedFileError: it cannot be read; the message says the run will be redone.
  """
  path = os.path.join(workdir, "run_info.json")
  if not os.path.exists(path):
    return {}
  info = results.read_json(path, "the run counts as unfinished")
  if not isinstance(info.get("sessions", []), list):
    raise DamagedFileError(f"{path} is damaged (sessions is not a list); the run "
                           f"counts as unfinished")
  return info


def finished(workdir: str) -> bool:
  """A run that completed training and its test evaluation (False if damaged)."""
  info = read(workdir)
  return info.get("status") == "completed" and info.get("test") is not None


def git_state() -> dict | None:
  """The commit of the mnist_jax checkout and whether its tree had changes."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"],
                            capture_output=True, text=True, timeout=10)
    if commit.returncode != 0:
      return None
    status = subprocess.run(["git", "-C", here, "status", "--porcelain"],
                            capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


class RunInfo:
  """WORKDIR/run_info.json of one training session (see the module docstring)."""

  def __init__(self, workdir: str, placement: str):
    self.path = os.path.join(workdir, "run_info.json")
    self.enabled = jax.process_index() == 0
    try:
      self.info = read(workdir)
    except DamagedFileError as e:
      logging.warning("%s; its session history starts afresh.", e)
      self.info = {}
    self.info.update({
        "status": "running", "versions": versions(), "git": git_state(),
        "host": socket.gethostname(), "command": list(sys.orig_argv),
        "backend": jax.default_backend(), "devices": jax.device_count(),
        "processes": jax.process_count(), "placement": placement})
    self.session = {"start": _now(), "end": None, "status": "running"}
    self.info.setdefault("sessions", []).append(self.session)
    self._write()

  def end(self, status: str, step: int) -> None:
    """Closes this session: "completed", "stopped" (signal) or "failed".

    A "failed" session ends on an error already on its way: a full disk then only
    warns, so that error (the reason the run failed) is the one reported.
    """
    self.session.update(status=status, steps=step)
    self.info["status"] = status
    try:
      self._close()
    except WriteError as e:
      if status != "failed":
        raise
      logging.warning("%s", e)

  def record_test(self, metrics: dict) -> None:
    """The test metrics the run reports; the session now ends after them."""
    self.info["test"] = {"accuracy": metrics["accuracy"],
                         "macro_f1": metrics["f1"]["macro"],
                         "checkpoint_step": metrics["checkpoint_step"]}
    self._close()

  def _close(self) -> None:
    self.session["end"] = _now()
    self.info["wall_time_s"] = sum(
        (datetime.datetime.fromisoformat(s["end"])
         - datetime.datetime.fromisoformat(s["start"])).total_seconds()
        for s in self.info["sessions"] if s.get("end"))
    self._write()

  def _write(self) -> None:
    if not self.enabled:
      return
    try:
      write_atomic(self.path, json.dumps(self.info, indent=2))
    except WriteError as e:
      raise e.advise(f"the checkpoints in {os.path.dirname(self.path)}/checkpoints are "
                     f"intact: free space and run the same command again (it resumes)"
                     ) from None
