"""Weights & Biases beside metrics.jsonl and TensorBoard: `config.wandb` (config.py).

`session(config, workdir)` yields a `WandbRun` when `config.wandb.enabled` (process 0
only), else None; `wandb` is imported only then, so a default run never loads it. The
run holds the resolved config, every metric `MetricWriter.write` logs, and the test
metrics as its summary (`record_test`).

One workdir is one W&B run: its id is kept in WORKDIR/wandb_run.json, and a resumed
training resumes that W&B run. Its files go to WORKDIR/wandb/ (offline, one
`offline-run-*` folder per session, all with that id: `wandb sync` uploads them into
the one run). A session resumed from step N logs from N + 1 on; W&B only accepts
increasing steps, so for the steps the killed session had logged after N it keeps
that session's rows (online this writer skips the steps below the resumed run's
`step`). They hold the values the resumed session computes again (a resumed run
repeats its steps bit for bit), examples/s apart. docs/distributed.md has more.
"""

import contextlib
import importlib.util
import json
import os
import secrets

import ml_collections

from mnist_jax.errors import ConfigError, DamagedFileError

MODES = ("online", "offline", "disabled")
ID_FILE = "wandb_run.json"


def validate(wandb: ml_collections.ConfigDict) -> None:
  """Checks `config.wandb` (called by config.validate).

  Raises:
    ConfigError: naming the first invalid field, or wandb missing while enabled.
  """
  if not isinstance(wandb.enabled, bool):
    raise ConfigError(f"config.wandb.enabled={wandb.enabled!r} must be True or False.")
  if not isinstance(wandb.project, str) or not wandb.project.strip():
    raise ConfigError(f"config.wandb.project={wandb.project!r} must name a project.")
  for key in ("entity", "group"):
    if wandb[key] is not None and (not isinstance(wandb[key], str)
                                   or not wandb[key].strip()):
      raise ConfigError(f"config.wandb.{key}={wandb[key]!r} must be a name or None.")
  if not isinstance(wandb.tags, str):
    raise ConfigError(f"config.wandb.tags={wandb.tags!r} must be comma-separated "
                      f"text, e.g. 'baseline,rows'.")
  if wandb.mode is not None and wandb.mode not in MODES:
    raise ConfigError(f"config.wandb.mode={wandb.mode!r} is not valid; choose one of: "
                      f"{', '.join(MODES)}.")
  # Said before any work rather than after training, and without importing it.
  if wandb.enabled and importlib.util.find_spec("wandb") is None:
    raise ConfigError("config.wandb.enabled=True needs the wandb package: "
                      "pip install -e '.[wandb]' (or set wandb.enabled=False).")


def run_id(workdir: str) -> str:
  """The workdir's W&B run id: read from WORKDIR/wandb_run.json, or made and saved.

  Raises:
    DamagedFileError: the file exists but holds no id.
  """
  path = os.path.join(workdir, ID_FILE)
  if os.path.exists(path):
    try:
      with open(path) as f:
        return str(json.load(f)["id"])
    except (OSError, ValueError, KeyError, TypeError):
      raise DamagedFileError(f"{path} is damaged; delete it to log to a new W&B "
                             f"run.") from None
  from mnist_jax.workdir import write_atomic  # config.validate imports this module.
  new_id = secrets.token_hex(6)  # W&B accepts [a-z0-9]; 48 bits never collide here.
  write_atomic(path, json.dumps({"id": new_id}))
  return new_id


class WandbRun:
  """One W&B run for one workdir; `write` mirrors `MetricWriter.write`.

  W&B starts at the first record, so a workdir refused before training (another
  run's, a sweep's folder) gets no W&B run and no id file.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self._run = None
    self._first_step = 0

  def _started(self):
    if self._run is None:
      import wandb
      settings = self.config.wandb
      tags = [t.strip() for t in settings.tags.split(",") if t.strip()]
      self._run = wandb.init(
          project=settings.project, entity=settings.entity, group=settings.group,
          tags=tags or None, mode=settings.mode, dir=self.workdir,
          id=run_id(self.workdir), resume="allow",
          name=os.path.basename(os.path.abspath(self.workdir)),
          config=self.config.to_dict(),
          # The workdir's log already has the output; W&B's capture of stdout and
          # stderr would only copy it.
          settings=wandb.Settings(console="off", save_code=False))
      # Online, a resumed run starts at W&B's last step + 1; offline this is 0.
      self._first_step = int(getattr(self._run, "step", 0) or 0)
    return self._run

  def write(self, step: int, prefix: str, values: dict, **extra) -> None:
    run = self._started()
    if step < self._first_step:  # W&B already holds this step (see the docstring).
      return
    row = {f"{prefix}/{k}": float(v) for k, v in values.items()}
    row.update({f"{prefix}/{k}": v for k, v in extra.items()})
    run.log(row, step=step)

  def record_test(self, metrics: dict) -> None:
    """The run's test metrics (evaluate.py's dict) as the W&B summary."""
    self._started().summary.update({
        "test/accuracy": metrics["accuracy"], "test/loss": metrics.get("loss"),
        "test/macro_f1": metrics["f1"]["macro"],
        "test/checkpoint_step": metrics["checkpoint_step"]})

  def finish(self, failed: bool = False) -> None:
    if self._run is not None:
      self._run.finish(exit_code=1 if failed else 0)
      self._run = None


@contextlib.contextmanager
def session(config: ml_collections.ConfigDict, workdir: str):
  """A `WandbRun` for the duration of the block (None when off or not process 0)."""
  import jax
  if not config.wandb.enabled or jax.process_index() != 0:
    yield None
    return
  run = WandbRun(config, workdir)
  failed = True
  try:
    yield run
    failed = False
  finally:
    run.finish(failed)
