"""Populations: runs that differ only in seed (and learning rate) as one program.

    mnist-jax-sweep --config=experiments/seed_lstm.py --workdir=runs/pop \\
        --sweep=seed=0,1,2 [--sweep=optimizer.learning_rate=1e-3,2e-3] --population

trains the sweep's unfinished runs, the K "members", in one process with one jitted
step over a leading member axis (population_step.py): `jax.vmap(steps.train_step)`
over the members' stacked train states and stacked batches. A member draws what it
would draw alone: its batches come from its own seed's `data.TrainOrder` (a pure
function of (seed, step)), its dropout and shift keys are `fold_in` of its own seed's
key with the step (`steps.train_step` itself, unchanged). The rest is each member's
own `train._Run`, the lone run's code: its workdir is an ordinary one (config.json,
preprocessing.json, checkpoints with the best, metrics.jsonl, tensorboard/,
run_info.json, then eval/ and report/ through `train.evaluate_trained` and
`train.draw_report`), so the sweep summary, `mnist-jax --mode=eval|report|predict`,
and a lone `mnist-jax` resuming it, read it unchanged. Each member's workdir lock is
held throughout.

* Learning rates: when the members' rates differ, the optimizer is built inside the
  step with each member's rate as a traced scalar, so one program serves them all;
  the optimizer state has the lone run's structure either way.
* Validation, early stopping, checkpoints: per member, at the lone run's steps, by the
  lone run's code (validation member by member with the lone eval step). A member
  whose patience runs out stops at that epoch as it would alone (state, files and
  checkpoints frozen there) while the others go on; its slot in the step is still
  computed, and masked. A non-finite step fails that member alone (run_info
  "failed"); the others go on.
* Resume: the same command resumes every member from its latest checkpoint. The
  members still training restart from one step: if their latest checkpoints differ (a
  kill between two members' saves), those ahead go back to the oldest one's step,
  which they must hold (their newer checkpoints are removed and trained again); if
  one does not, the population is refused with one line.
* Exactness: a member's numbers equal its lone run's up to float round-off, since
  XLA compiles the batched (vmapped) matmuls of the population differently from the
  lone ones (docs/distributed.md, "Populations", has the measured differences).
* One process, one device (the sweep sets one CPU device); no W&B.
"""

import contextlib
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import models
from mnist_jax import population_step
from mnist_jax import steps
from mnist_jax import train
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError, NonFiniteError, UserError, WorkdirError
from mnist_jax.metric_writer import Progress
from mnist_jax.preemption import StopSignal
from mnist_jax.provenance import RunInfo

MAY_DIFFER = ("seed", "optimizer.learning_rate")


# ----------------------------------------------------------------------------------
# Checks.
# ----------------------------------------------------------------------------------
def _flat(value, prefix: str = "") -> dict:
  if not isinstance(value, dict):
    return {prefix.rstrip("."): value}
  out = {}
  for key, sub in value.items():
    out.update(_flat(sub, f"{prefix}{key}."))
  return out


def differing_keys(configs) -> dict[str, list]:
  """{dotted key: the members' values} for every config field whose values differ."""
  flats = [_flat(c.to_dict()) for c in configs]
  keys = sorted(set().union(*flats))
  return {k: [f.get(k) for f in flats] for k in keys
          if len({repr(f.get(k)) for f in flats}) > 1}


def check_members(configs) -> None:
  """Raises ConfigError (one line) unless the configs differ only in `MAY_DIFFER`
  and a population can train them."""
  other = {k: v for k, v in differing_keys(configs).items() if k not in MAY_DIFFER}
  if other:
    what = "; ".join(f"{k} ({', '.join(dict.fromkeys(map(str, v)))})"
                     for k, v in other.items())
    raise ConfigError(f"--population: the runs may differ only in seed and "
                      f"optimizer.learning_rate, but these differ: {what}; drop "
                      f"--population to train them apart.")
  model = configs[0].model
  if model.options.to_dict().get(model.name, {}).get("implementation") == "cudnn":
    # jax.experimental.rnn's primitive has no batching rule: vmap cannot batch it.
    raise ConfigError(f"--population vmaps the train step, which cuDNN's LSTM cannot "
                      f"be; set --config.model.options.{model.name}.implementation=scan "
                      f"or drop --population.")
  if configs[0].wandb.enabled:
    raise ConfigError("--population does not log to W&B (one W&B run per process); "
                      "set --config.wandb.enabled=false or drop --population.")


def check_flags(launcher: str, parallel: int | None, cpu_devices: int | None) -> None:
  """Raises UserError for `mnist-jax-sweep` flags that a population cannot honour."""
  given = [flag for flag, bad in (("--launcher=slurm", launcher != "local"),
                                  (f"--parallel={parallel}", (parallel or 1) > 1),
                                  (f"--cpu_devices={cpu_devices}",
                                   (cpu_devices or 1) > 1)) if bad]
  if given:
    raise UserError(f"--population trains every run in this one process, on one "
                    f"device: drop {given[0]} (or --population).")


def check_devices() -> None:
  """Raises ConfigError (one line) unless this is one process with one device."""
  if jax.process_count() > 1 or jax.device_count() > 1:
    raise ConfigError(f"--population trains on one device, but this job has "
                      f"{jax.device_count()} devices in {jax.process_count()} "
                      f"processes; make one visible (e.g. CUDA_VISIBLE_DEVICES=0).")


# ----------------------------------------------------------------------------------
# Batches and learning rates (the step itself: population_step.py).
# ----------------------------------------------------------------------------------
class _Orders:
  """The members' batch orders side by side. `indices(step)` is [batch, members], so
  that `data.train_batches` takes this process's rows of every member's batch."""

  def __init__(self, orders: list[data.TrainOrder]):
    self.orders, self.batch_size = orders, orders[0].batch_size

  def indices(self, step: int) -> np.ndarray:
    return np.stack([order.indices(step) for order in self.orders], axis=1)


class _WithLearningRate:
  """`config.optimizer` with another learning rate (a traced scalar in the step)."""

  def __init__(self, opt, learning_rate):
    self._opt, self.learning_rate = opt, learning_rate

  def __getattr__(self, name):
    return getattr(self._opt, name)


def optimizer_for(config, steps_per_epoch: int) -> population_step.OptimizerFor:
  """learning rate -> the optimizer `config` describes with that rate (traced)."""
  recurrence = models.layer_class(config.model).RECURRENCE_PARAMS
  return lambda rate: steps.create_optimizer(
      _WithLearningRate(config.optimizer, rate), steps_per_epoch, config.num_epochs,
      recurrence)


# ----------------------------------------------------------------------------------
# The members.
# ----------------------------------------------------------------------------------
def _resume(runs: list, names: list[str], total_steps: int) -> list[bool]:
  """Resumes every member from its latest checkpoint; returns which still train.

  Those restart from one step: members ahead go back to the oldest one's step.

  Raises:
    WorkdirError: a member ahead holds no checkpoint at that step.
  """
  for run in runs:
    run.resume(run.store.latest_step())
  active = [run.step < total_steps and not run.early_stopped() for run in runs]
  start = min((r.step for r, a in zip(runs, active) if a), default=None)
  behind = next((n for r, n, a in zip(runs, names, active) if a and r.step == start),
                None)
  for run, name, is_active in zip(runs, names, active):
    if not is_active or run.step == start:
      continue
    held = sorted(run.store.steps())
    if start not in held:
      raise WorkdirError(
          f"population member {name} is at step {run.step} but holds no checkpoint "
          f"at step {start}, where {behind} restarts (it holds "
          f"{', '.join(map(str, held))}); train the runs apart (without "
          f"--population), or remove {run.store.directory} to restart {name}.")
    newer = [s for s in held if s > start]
    logging.warning("%s: back from step %d to step %d, where %s restarts; its "
                    "checkpoints at steps %s are removed and trained again.", name,
                    run.step, start, behind, newer)
    for step in newer:
      run.store.delete(step)
    run.resume(start)
  return active


class _SharedRate:
  """The population's `Progress` for every member: measured once per logged step."""

  def __init__(self, progress: Progress):
    self.progress, self.total_steps, self._last = progress, progress.total_steps, None

  def rate_and_eta(self, step: int) -> tuple[float, str]:
    if self._last is None or self._last[0] != step:
      self._last = (step, self.progress.rate_and_eta(step))
    return self._last[1]


class _Population:
  """The members' `train._Run`s, their stacked state, and which still train."""

  def __init__(self, configs: list, workdirs: list[str]):
    splits = data.load_splits(configs[0])  # The members' data settings are equal.
    self.runs = [train._Run(c, w, splits=splits, resume=False)  # pylint: disable=W0212
                 for c, w in zip(configs, workdirs)]
    self.names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    lead = self.runs[0]
    self.spe, self.train_split = lead.spe, splits["train"]
    total_steps = lead.spe * configs[0].num_epochs
    self.active = _resume(self.runs, self.names, total_steps)
    self.failed = [False] * len(self.runs)
    training = [r.step for r, a in zip(self.runs, self.active) if a]
    self.step = training[0] if training else max(r.step for r in self.runs)
    self.end_step = total_steps if training else self.step
    rates = [c.optimizer.learning_rate for c in configs]
    self.rates = jnp.asarray(rates, jnp.float32)
    self.train_step = population_step.make_step(
        lead.step_options,
        optimizer_for(configs[0], lead.spe) if len(set(rates)) > 1 else None)
    self.stacked = lead.placement.put_state(
        population_step.stack([r.state for r in self.runs]))
    self.order = _Orders([r.order for r in self.runs])
    self.put = lambda batch: lead.placement.put_batch(
        {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) for k, v in batch.items()})

  def live(self) -> list[tuple[int, "train._Run"]]:
    return [(i, run) for i, run in enumerate(self.runs) if self.active[i]]

  def sync(self, i: int, step: int) -> None:
    """Member i's `_Run` takes its state from the stacked one (to save, validate)."""
    run = self.runs[i]
    run.state = population_step.member(self.stacked, i, run.state)
    run.step = step

  def flush(self, step: int, pending: list, rate: _SharedRate) -> None:
    """Each training member logs its metrics; a non-finite step fails that member."""
    fetched = jax.device_get(pending)
    pending.clear()
    for i, run in self.live():
      try:
        run.flush(step, [{k: v[i] for k, v in m.items()} for m in fetched], rate)
      except NonFiniteError as e:
        print(f"[population] {self.names[i]} failed: {e}", flush=True)
        self.active[i], self.failed[i] = False, True

  def end_epoch(self, step: int, force: bool) -> None:
    """Each training member validates, saves and decides on early stopping."""
    for i, run in self.live():
      self.sync(i, step)
      run.save(step, run.validate(step), force=force)
      if run.early_stopped():
        logging.info("%s: early stopping, no validation gain for %d epochs.",
                     self.names[i], run.config.early_stopping_patience)
        self.active[i] = False

  def save(self, step: int, force: bool) -> None:
    for i, run in self.live():
      self.sync(i, step)
      run.save(step, force=force)

  def status(self, i: int, overall: str) -> str:
    """Member i's run_info status once training ended `overall`."""
    if self.failed[i] or overall == "failed":
      return "failed"
    return "stopped" if overall == "stopped" and self.active[i] else "completed"


# ----------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------
def _run_steps(pop: _Population, progress: Progress) -> str | None:
  """`train._run_steps` for the training members, from `pop.step` to `pop.end_step`.

  Returns the signal training stopped for (saved, resumable), or None.
  """
  config = pop.runs[0].config
  rate, pending, mask = _SharedRate(progress), [], None
  with StopSignal() as stop:
    for batch in data.train_batches(pop.train_split, pop.order, pop.step,
                                    pop.end_step, pop.put):
      if mask is None or mask[0] != pop.active:
        mask = (list(pop.active), jnp.asarray(pop.active))
      pop.stacked, metrics = pop.train_step(pop.stacked, pop.rates, mask[1], batch)
      pending.append(metrics)
      pop.step += 1
      step = pop.step
      progress.update()
      epoch_end = step % pop.spe == 0
      stopping = stop.decision(step, epoch_end)
      if step % config.log_every_steps == 0 or epoch_end or stopping:
        pop.flush(step, pending, rate)
      if epoch_end:  # Validated and saved first, even when stopping.
        pop.end_epoch(step, force=bool(stopping))
      elif stopping or (config.checkpoint_every_steps
                        and step % config.checkpoint_every_steps == 0):
        pop.flush(step, pending, rate)
        pop.save(step, force=bool(stopping))
      if not any(pop.active):
        return None
      if stopping:
        return stopping
    pop.flush(pop.step, pending, rate)
  return None


def _train(configs: list, workdirs: list[str]) -> list[dict]:
  """Trains the members (their locks held); `train.train`'s result for each."""
  pop = _Population(configs, workdirs)
  where = f"population of {len(pop.runs)} on {pop.runs[0].placement.describe()}"
  infos = [RunInfo(w, where) for w in workdirs]
  progress = Progress(pop.step, pop.end_step, configs[0].batch_size)
  stopped_by, overall = None, "failed"
  try:
    stopped_by = _run_steps(pop, progress)
    for run in pop.runs:
      run.store.wait()  # Surfaces async save errors before the runs count as ended.
    overall = "stopped" if stopped_by else "completed"
  finally:
    progress.close()
    for i, (run, info) in enumerate(zip(pop.runs, infos)):
      run.writer.close()
      run.store.wait()
      info.end(pop.status(i, overall), run.step)
  results = []
  for i, (run, info) in enumerate(zip(pop.runs, infos)):
    status = pop.status(i, overall)
    results.append({"completed": status == "completed", "status": status,
                    "step": run.step,
                    "stopped_by": stopped_by if status == "stopped" else None,
                    "best_step": run.store.best_step(),
                    "val_accuracy": run.history["best_val_accuracy"],
                    "run_info": info})
    run.store.close()
  return results


def train_and_evaluate(configs: list, workdirs: list[str]) -> list[dict]:
  """Trains the members as one population, then evaluates and reports each as
  `train.train_and_evaluate` does.

  Args:
    configs: the members' configs (resolved here), differing only in `MAY_DIFFER`.
    workdirs: one ordinary training workdir per member.

  Returns:
    Per member, {"status": "completed" | "stopped" | "failed", "test": its test
    metrics, or None when not completed}.

  Raises:
    UserError subclasses: configs that differ elsewhere, several devices, a workdir
      in use or of another run, members that cannot restart from one step.
  """
  if not configs:
    return []
  configs = [config_lib.resolve(c) for c in configs]
  check_members(configs)
  check_devices()
  out = []
  with contextlib.ExitStack() as held:
    for workdir in workdirs:
      held.enter_context(workdir_lib.writing(workdir))
    for config, workdir, result in zip(configs, workdirs, _train(configs, workdirs)):
      metrics = None
      if result["status"] != "failed":
        metrics = train.evaluate_trained(config, workdir, result)
      if metrics is not None:
        train.draw_report(workdir, metrics)
      out.append({"status": result["status"], "test": metrics})
  return out
