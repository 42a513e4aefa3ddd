"""Sweeps: the cartesian product of a few settings, every run in its own workdir.

`grid(axes)` expands {"seed": ["0", "1"], "model.hidden_size": ["64", "128"]} into
runs; `Sweep.run()` trains them N at a time, each as its own `mnist_jax.main`
process (so a crash stays in its run), with a share of the CPU cores or one GPU, or
as a SLURM job each: how a run starts is its launcher's (launchers.py). Running
the same sweep again skips finished runs and resumes interrupted ones (each run's own
resume). `summary.py` turns the finished runs into tables and plots.

    SWEEP_DIR/<key=value+key=value>/   one training workdir per run
    SWEEP_DIR/<run>/sweep.log          that run's output (SLURM: slurm-<jobid>.log)
    SWEEP_DIR/sweep.json               the sweep: config file, overrides, axes, runs

A sweep holds SWEEP_DIR's lock (`locks.py`) while it runs or writes its summary: a
second sweep on the same folder is refused at once, naming the first. A sweep folder
is not a training workdir, nor the reverse: each refuses the other's folder.
"""

import dataclasses
import itertools
import json
import os
import re
import signal
import sys
import time
from typing import Sequence

from mnist_jax import config as config_lib
from mnist_jax import launchers
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


class Sweep:
  """Runs a grid of `mnist_jax.main` trainings through a launcher (launchers.py),
  `len(launcher.slots)` at a time."""

  def __init__(self, config_path: str, sweep_dir: str, runs: Sequence[Run],
               common: Sequence[str], launcher, report_every_s: float = 30.0):
    self.config_path, self.dir, self.runs = config_path, sweep_dir, list(runs)
    self.common, self.launcher = list(common), launcher
    self.report_every_s = report_every_s
    self.state = {r.name: "pending" for r in self.runs}
    self.logs = {r.name: os.path.join(self.workdir(r), "sweep.log") for r in self.runs}
    self._jobs: dict[str, launchers.Job] = {}
    self._stop = None
    self._detached = False

  def workdir(self, run: Run) -> str:
    return os.path.join(self.dir, run.name)

  def command(self, run: Run, slot: dict[str, str]) -> list[str]:
    # The W&B group (used only with wandb.enabled) names the sweep; --config.* given
    # to the sweep come later and win.
    group = os.path.basename(os.path.abspath(self.dir))
    return [sys.executable, "-m", "mnist_jax.main", f"--config={self.config_path}",
            f"--workdir={self.workdir(run)}",
            *([f"--config.wandb.group={group}"] if group else []),
            *self.common, *run.flags(), f"--cpu_devices={slot.get('cpu_devices', '1')}"]

  def _follow(self, job: launchers.Job) -> None:
    self._jobs[job.name] = job
    self.logs[job.name] = job.log
    self.state[job.name] = job.state

  def _handle(self, signum, frame) -> None:
    """No new runs; the launcher passes the stop on (local runs save a checkpoint and
    exit; SLURM jobs go on, no longer followed)."""
    del frame
    self._stop = signal.Signals(signum).name
    if not self.launcher.stop(list(self._jobs.values()), signum):
      self._detached = True

  def run(self) -> dict[str, str]:
    """Trains every run not finished yet; returns {run name: final state}.

    States: "done" (finished, now or before), "failed" (non-zero exit; the others go
    on), "stopped" (a signal stopped the sweep, or the run's job: run it again to
    resume), "pending", and, when the sweep stopped following a scheduler's jobs,
    "queued" or "running".
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
    free = list(self.launcher.slots)
    for job in self.launcher.adopt({r.name: self.workdir(r) for r in pending}):
      pending = [r for r in pending if r.name != job.name]  # Not submitted twice.
      self._follow(job)
      if free:
        free.pop()
    last_report = 0.0
    while pending or self._jobs:
      while pending and free and self._stop is None:
        run, slot = pending.pop(0), free.pop(0)
        self._follow(self.launcher.start(run.name, self.workdir(run),
                                         self.command(run, slot), slot))
        last_report = 0.0
      for name, how in self.launcher.ended(list(self._jobs.values())).items():
        job = self._jobs.pop(name)
        if len(free) + len(self._jobs) < len(self.launcher.slots):
          free.append(job.slot)
        self.state[name] = self._outcome(name, how)
        last_report = 0.0
      for job in self._jobs.values():
        self.state[job.name] = job.state
      if (self._stop is not None and (self._detached or not self._jobs)) or not (
          pending or self._jobs):
        break
      if time.monotonic() - last_report > self.report_every_s:
        self._print_status()
        last_report = time.monotonic()
      time.sleep(self.launcher.poll_every_s)

  def _outcome(self, name: str, how: str) -> str:
    """"failed" for a failed job, else "done" or "stopped" by the run's own files."""
    if how == "failed":
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
    states = ("done", "running", "queued", "failed", "stopped", "pending")
    counts = {s: list(self.state.values()).count(s) for s in states}
    head = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"[sweep {self.dir}] {head}", flush=True)
    for name, state in self.state.items():
      if state == "running":
        print(f"  running  {name}: {_last_progress(self.logs[name])}", flush=True)
      elif state == "failed" and final:
        print(f"  failed   {name}: see {self.logs[name]}", flush=True)


def _last_progress(log: str) -> str:
  """The run's latest 'step N/M ... ETA' log line, shortened."""
  try:
    with open(log, errors="replace") as f:
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


def run_config(config, run: Run):
  """`config` with `run`'s overrides, as the run's own `mnist_jax.main` builds it (an
  unlocked copy, not resolved; ConfigError for a bad override)."""
  from ml_collections import config_dict
  cfg = config_dict.ConfigDict(config.to_dict())
  with cfg.ignore_type():
    config_lib.override(cfg, {k: _typed(config, k, v) for k, v in run.overrides})
  return cfg


def check_runs(config, runs: Sequence[Run]) -> list:
  """Resolves every run's config before anything starts (one-line ConfigError);
  returns them."""
  return [config_lib.resolve(run_config(config, run)) for run in runs]


def run_sweep(config_path: str | None, config, sweep_dir: str,
              sweep_flags: Sequence[str], parallel: int | None,
              common: Sequence[str], summary_only: bool = False,
              launcher: str = "local", cpu_devices: int | None = None,
              slurm_options=None, population: bool = False) -> int:
  """`mnist-jax-sweep`: trains the grid, then writes the summary; the exit status.

  `launcher`, `cpu_devices` and `slurm_options` (a slurm_launcher.Options) choose
  how runs start: launchers.make_launcher. `population`: the runs, which may differ
  only in seed and learning rate, train in this process as one (population.py).
  """
  runs = None
  if not summary_only:
    if config_path is None:
      raise UserError("--config is required (e.g. --config=experiments/seed_lstm.py).")
    if population:
      from mnist_jax import population as population_lib
      population_lib.check_flags(launcher, parallel, cpu_devices)
    runs = grid(axes_for(config_path, sweep_flags))
    resolved = check_runs(config, runs)
    if population:
      population_lib.check_members(resolved)
  _check_folder(sweep_dir, summary_only)
  try:
    with locks.locked(sweep_dir, "sweep folder", "use another --workdir"):
      make = lambda count: launchers.make_launcher(launcher, parallel, cpu_devices,
                                                   count, slurm_options)
      return _run_locked(config_path, sweep_dir, runs, make, common,
                         config if population else None)
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
                make_launcher, common: Sequence[str], population_config=None) -> int:
  """Trains `runs` (None: none, --summary_only), then writes the summary; with a
  `population_config` (the sweep's config), as one population."""
  from mnist_jax import summary
  states = {}
  if runs is not None and population_config is not None:
    states = _run_population(population_config, config_path, sweep_dir, runs, common)
  elif runs is not None:
    launcher = make_launcher(len(runs))
    print(f"[sweep {sweep_dir}] {len(runs)} runs, {launcher.describe()}", flush=True)
    states = Sweep(config_path, sweep_dir, runs, common, launcher).run()
  paths = summary.summarize(sweep_dir)
  print(f"Summary: {paths['summary.md']}")
  if "stopped" in states.values():
    print("Stopped: run the same command again to resume.")
  return 1 if "failed" in states.values() else 0


def _run_population(config, config_path: str, sweep_dir: str, runs: list[Run],
                    common: Sequence[str]) -> dict[str, str]:
  """Trains the unfinished runs in this process as one population (population.py),
  each in its own workdir; returns the runs' states."""
  from mnist_jax import population
  sweep = Sweep(config_path, sweep_dir, runs, common, launcher=None)
  sweep._write_manifest()  # pylint: disable=protected-access
  todo = [r for r in runs if not finished(sweep.workdir(r))]
  print(f"[sweep {sweep_dir}] {len(runs)} runs as one population, {len(todo)} to "
        f"train", flush=True)
  configs = [run_config(config, run) for run in todo]
  group = os.path.basename(os.path.abspath(sweep_dir))
  for cfg in configs:  # As a launched run's command line sets it.
    if group and not any(a.startswith("--config.wandb.group=") for a in common):
      cfg.wandb.group = group
  outcomes = population.train_and_evaluate(configs, [sweep.workdir(r) for r in todo])
  sweep.state = {r.name: "done" for r in runs}
  for run, outcome in zip(todo, outcomes):
    sweep.state[run.name] = ("done" if finished(sweep.workdir(run)) else
                             "failed" if outcome["status"] == "failed" else "stopped")
    sweep.logs[run.name] = "the population's output above"
  sweep._print_status(final=True)  # pylint: disable=protected-access
  return dict(sweep.state)
