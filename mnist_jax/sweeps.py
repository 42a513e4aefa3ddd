"""Sweeps: the cartesian product of a few settings, every run in its own workdir.

`grid(axes)` expands {"seed": ["0", "1"], "model.hidden_size": ["64", "128"]} into
runs; `Sweep.run()` trains them N at a time, each as its own `mnist_jax.main`
process (so a crash stays in its run), with a share of the CPU cores or one GPU. Running
the same sweep again skips finished runs and resumes interrupted ones (each run's own
resume). `summary.py` turns the finished runs into tables and plots.

    SWEEP_DIR/<key=value+key=value>/   one training workdir per run
    SWEEP_DIR/<run>/sweep.log          that run's output
    SWEEP_DIR/sweep.json               the sweep: config file, overrides, axes, runs

A sweep holds SWEEP_DIR's lock (`locks.py`) while it runs or writes its summary: a
second sweep on the same folder is refused at once, naming the first. A sweep folder
is not a training workdir, nor the reverse: each refuses the other's folder.
"""

import dataclasses
import glob
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Sequence

from mnist_jax import config as config_lib
from mnist_jax import locks
from mnist_jax import provenance
from mnist_jax.errors import (ConfigError, DamagedFileError, UserError, WriteError,
                              disk_errors)
from mnist_jax.workdir import write_atomic

Axes = dict[str, list[str]]


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of the grid: its overrides, as given on the command line."""
  overrides: tuple[tuple[str, str], ...]

  @property
  def name(self) -> str:
    """The workdir name: `key=value` joined by `+`, keys in sweep order."""
    return "+".join(f"{k}={re.sub(r'[^A-Za-z0-9._=-]', '_', v)}"
                    for k, v in self.overrides)

  @property
  def setting(self) -> str:
    """The name without the seed: runs that differ only in seed share a setting."""
    return "+".join(f"{k}={v}" for k, v in self.overrides if k != "seed") or "base"

  def flags(self) -> list[str]:
    return [f"--config.{k}={v}" for k, v in self.overrides]


def parse_axis(text: str) -> tuple[str, list[str]]:
  """'model.hidden_size=64,128' -> ('model.hidden_size', ['64', '128'])."""
  key, sep, values = text.partition("=")
  items = [v.strip() for v in values.split(",")] if sep else []
  if not key.strip() or not items or not all(items):
    raise UserError(f"--sweep={text!r} must look like KEY=VALUE,VALUE,... (e.g. "
                    f"--sweep=seed=0,1,2).")
  return key.strip(), items


def grid(axes: Axes) -> list[Run]:
  """Every combination of the axes' values, the first axis varying slowest.

  Raises:
    UserError: two runs would share a folder (a value repeated, or values that differ
      only in characters a folder name cannot hold).
  """
  keys = list(axes)
  runs = [Run(tuple(zip(keys, values)))
          for values in itertools.product(*(axes[k] for k in keys))]
  names = [r.name for r in runs]
  twice = next((n for n in names if names.count(n) > 1), None)
  if twice:
    raise UserError(f"two runs of the sweep would share the folder {twice!r}: a "
                    f"--sweep value is repeated (or differs only in characters outside "
                    f"A-Za-z0-9._=-); give each value once.")
  return runs


def finished(workdir: str) -> bool:
  """A run that completed training and its test evaluation (see provenance.py).

  A damaged run_info.json counts as unfinished (one line says so): the run is started
  again, resumes from its checkpoints and writes a whole one.
  """
  try:
    return provenance.finished(workdir)
  except DamagedFileError as e:
    print(f"[sweep] {e}: it is started again and resumes from its checkpoints.",
          flush=True)
    return False


def slots(parallel: int | None) -> list[dict[str, str]]:
  """What each concurrent run gets: a GPU (`{"gpu": "i"}`) or a share of the CPUs.

  One run per GPU where there are GPUs, else one run per CPU core this process may
  use, each with one CPU device; fewer runs than cores (--parallel) get the cores
  shared out as CPU devices (`{"cpu_devices": "n"}`: --parallel=1 on 2 cores gives
  each run 2). CPU runs are not pinned to cores: a process pinned to one core gets a
  one-thread XLA pool and computes in another float order than `mnist-jax
  --cpu_devices=1` on the same machine, so its results would not be those of a single
  run. More runs than cores share the cores, which ends a sweep sooner when its last
  wave would leave cores idle (3 runs on 2 cores). On a TPU pod slice every run needs
  the whole slice: use --parallel=1 there.
  """
  gpus = sorted(glob.glob("/dev/nvidia[0-9]*"))
  if gpus and os.environ.get("JAX_PLATFORMS", "") in ("", "cuda", "gpu"):
    found = [{"gpu": str(i)} for i in range(len(gpus))]
    count = parallel or len(found)
    return [found[i % len(found)] for i in range(count)]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
  count = parallel or cores
  return [{"cpu_devices": str(max(1, cores // count))} for _ in range(count)]


class Sweep:
  """Runs a grid of `mnist_jax.main` trainings, `len(slots)` at a time."""

  def __init__(self, config_path: str, sweep_dir: str, runs: Sequence[Run],
               common: Sequence[str], slots_: Sequence[dict[str, str]],
               report_every_s: float = 30.0):
    self.config_path, self.dir, self.runs = config_path, sweep_dir, list(runs)
    self.common, self.slots = list(common), list(slots_)
    self.report_every_s = report_every_s
    self.state = {r.name: "pending" for r in self.runs}
    self._procs: dict[str, tuple[subprocess.Popen, dict]] = {}
    self._stop = None

  def workdir(self, run: Run) -> str:
    return os.path.join(self.dir, run.name)

  def command(self, run: Run, slot: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "mnist_jax.main", f"--config={self.config_path}",
            f"--workdir={self.workdir(run)}", *self.common, *run.flags(),
            f"--cpu_devices={slot.get('cpu_devices', '1')}"]

  def _start(self, run: Run, slot: dict[str, str]) -> None:
    env = dict(os.environ)
    if "gpu" in slot:
      env["CUDA_VISIBLE_DEVICES"] = slot["gpu"]
    log_path = os.path.join(self.workdir(run), "sweep.log")
    with disk_errors(log_path):
      os.makedirs(self.workdir(run), exist_ok=True)
      log = open(log_path, "a")
    proc = subprocess.Popen(self.command(run, slot), stdout=log, stderr=subprocess.STDOUT,
                            env=env, stdin=subprocess.DEVNULL)
    log.close()
    self._procs[run.name] = (proc, slot)
    self.state[run.name] = "running"

  def _handle(self, signum, frame) -> None:
    """No new runs; running ones save a checkpoint and exit.

    Ctrl-C in a terminal already reaches every run (one process group), and a second
    signal would make a run exit without saving; so only SIGTERM is passed on.
    """
    del frame
    self._stop = signal.Signals(signum).name
    if signum == signal.SIGTERM:
      for proc, _ in self._procs.values():
        proc.send_signal(signal.SIGTERM)

  def run(self) -> dict[str, str]:
    """Trains every run not finished yet; returns {run name: final state}.

    States: "done" (finished, now or before), "failed" (non-zero exit; the others go
    on), "stopped" (a signal stopped the sweep: run it again to resume), "pending".
    """
    for run in self.runs:
      if finished(self.workdir(run)):
        self.state[run.name] = "done"
    self._write_manifest()
    previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM,
                                                           signal.SIGINT)}
    try:
      self._loop()
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
    self._print_status(final=True)
    return dict(self.state)

  def _loop(self) -> None:
    pending = [r for r in self.runs if self.state[r.name] == "pending"]
    free = list(self.slots)
    last_report = 0.0
    while pending or self._procs:
      while pending and free and self._stop is None:
        self._start(pending.pop(0), free.pop(0))
        last_report = 0.0
      for name, (proc, slot) in list(self._procs.items()):
        if proc.poll() is not None:
          del self._procs[name]
          free.append(slot)
          self.state[name] = self._outcome(name, proc.returncode)
          last_report = 0.0
      if (self._stop is not None and not self._procs) or not (pending or self._procs):
        break
      if time.monotonic() - last_report > self.report_every_s:
        self._print_status()
        last_report = time.monotonic()
      time.sleep(0.2)

  def _outcome(self, name: str, returncode: int) -> str:
    if returncode != 0:
      return "failed"
    return "done" if finished(os.path.join(self.dir, name)) else "stopped"

  def _write_manifest(self) -> None:
    os.makedirs(self.dir, exist_ok=True)
    write_atomic(os.path.join(self.dir, "sweep.json"), json.dumps({
        "config": self.config_path, "common_overrides": self.common,
        "runs": [{"name": r.name, "setting": r.setting,
                  "overrides": dict(r.overrides)} for r in self.runs]}, indent=2))

  def _print_status(self, final: bool = False) -> None:
    """One line of counts, then one line per run that is running or failed."""
    counts = {s: list(self.state.values()).count(s)
              for s in ("done", "running", "failed", "stopped", "pending")}
    head = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"[sweep {self.dir}] {head}", flush=True)
    for name, state in self.state.items():
      if state == "running":
        print(f"  running  {name}: {_last_progress(self.dir, name)}", flush=True)
      elif state == "failed" and final:
        print(f"  failed   {name}: see {os.path.join(self.dir, name, 'sweep.log')}",
              flush=True)


def _last_progress(sweep_dir: str, name: str) -> str:
  """The run's latest 'step N/M ... ETA' log line, shortened."""
  try:
    with open(os.path.join(sweep_dir, name, "sweep.log"), errors="replace") as f:
      lines = [l for l in f.read().splitlines()[-50:]
               if re.search(r"\bstep \d+/\d+", l)]
  except OSError:
    return "starting"
  return lines[-1].split("] ", 1)[-1] if lines else "starting"


def _typed(config, key: str, text: str):
  """`text` as the type of config field `key` (as --config.KEY=TEXT would parse)."""
  current = config
  for part in key.split("."):
    if not hasattr(current, "keys") or part not in current:
      raise ConfigError(f"--sweep={key}=...: config has no field {key!r}.")
    current = current[part]
  try:
    if isinstance(current, bool):
      if text.lower() not in ("true", "false"):
        raise ValueError(text)
      return text.lower() == "true"
    if isinstance(current, (int, float)):
      return type(current)(text)
  except ValueError:
    raise ConfigError(f"--sweep={key}={text}: {text!r} is not a valid "
                      f"{type(current).__name__} for config.{key}.") from None
  if current is None and text.lower() == "none":
    return None
  if current is None:
    for kind in (int, float):
      try:
        return kind(text)
      except ValueError:
        pass
  return text


def axes_for(config_path: str, flags_: Sequence[str]) -> Axes:
  """The grid's axes: the config file's `get_sweep()` (if any), then --sweep flags.

  A --sweep of a key that `get_sweep()` also sweeps replaces its values (in place in
  the axis order); the same key in two --sweep flags is an error.
  """
  axes: Axes = {}
  module = config_lib.load_experiment(config_path)
  if hasattr(module, "get_sweep"):
    axes.update({k: [str(v) for v in values]
                 for k, values in module.get_sweep().items()})
  given: dict[str, str] = {}
  for text in flags_:
    key, values = parse_axis(text)
    if key in given:
      merged = ",".join(dict.fromkeys(parse_axis(given[key])[1] + values))
      raise UserError(f"--sweep={given[key]} and --sweep={text} both sweep {key}; give "
                      f"its values in one flag (--sweep={key}={merged}).")
    given[key] = text
    axes[key] = values
  if not axes:
    raise UserError("nothing to sweep: give --sweep=KEY=VALUE,VALUE,... (e.g. "
                    "--sweep=seed=0,1,2) or define get_sweep() in the config file.")
  return axes


def check_runs(config, runs: Sequence[Run]) -> None:
  """Resolves every run's config before anything starts (one-line ConfigError)."""
  from ml_collections import config_dict
  for run in runs:
    cfg = config_dict.ConfigDict(config.to_dict())
    with cfg.ignore_type():
      config_lib.override(cfg, {k: _typed(config, k, v) for k, v in run.overrides})
    config_lib.resolve(cfg)


def run_sweep(config_path: str | None, config, sweep_dir: str,
              sweep_flags: Sequence[str], parallel: int | None,
              common: Sequence[str], summary_only: bool = False) -> int:
  """`mnist-jax-sweep`: trains the grid, then writes the summary; the exit status."""
  runs = None
  if not summary_only:
    if config_path is None:
      raise UserError("--config is required (e.g. --config=experiments/seed_lstm.py).")
    runs = grid(axes_for(config_path, sweep_flags))
    check_runs(config, runs)
  _check_folder(sweep_dir, summary_only)
  try:
    with locks.locked(sweep_dir, "sweep folder", "use another --workdir"):
      return _run_locked(config_path, sweep_dir, runs, parallel, common)
  except WriteError as e:
    raise e.advise(f"the runs' results in {sweep_dir} are intact: free space and run "
                   f"the same command again (finished runs are not trained again)"
                   ) from None


def _check_folder(sweep_dir: str, summary_only: bool) -> None:
  """A folder for a sweep (created unless `summary_only`), not a training workdir's."""
  if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
    raise UserError(f"--workdir={sweep_dir} is a file, not a folder.")
  if os.path.exists(os.path.join(sweep_dir, "config.json")):
    raise UserError(f"--workdir={sweep_dir} holds a training run (config.json), not a "
                    f"sweep; give the sweep a folder of its own.")
  if summary_only and not os.path.exists(os.path.join(sweep_dir, "sweep.json")):
    raise UserError(f"{sweep_dir} has no sweep.json; is it a sweep folder?")
  with disk_errors(sweep_dir):
    os.makedirs(sweep_dir, exist_ok=True)


def _run_locked(config_path: str | None, sweep_dir: str, runs: list[Run] | None,
                parallel: int | None, common: Sequence[str]) -> int:
  """Trains `runs` (None: none, --summary_only), then writes the summary."""
  from mnist_jax import summary
  states = {}
  if runs is not None:
    print(f"[sweep {sweep_dir}] {len(runs)} runs, {len(slots(parallel))} at a time",
          flush=True)
    states = Sweep(config_path, sweep_dir, runs, common, slots(parallel)).run()
  paths = summary.summarize(sweep_dir)
  print(f"Summary: {paths['summary.md']}")
  if "stopped" in states.values():
    print("Stopped: run the same command again to resume.")
  return 1 if "failed" in states.values() else 0
