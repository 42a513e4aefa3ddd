"""A training workdir: the one way to create, check and open one.

    WORKDIR/config.json          the resolved config (same nesting as the ConfigDict)
    WORKDIR/preprocessing.json   standardisation mean and std, fixed at training time
    WORKDIR/permutation.npy      the pixel permutation (permuted_pixels only)
    WORKDIR/metrics.jsonl        one JSON object per logged event (metric_writer.py)
    WORKDIR/tensorboard/         the same metrics as TensorBoard summaries
    WORKDIR/checkpoints/<step>/  Orbax checkpoints (checkpoints.py)
    WORKDIR/eval/                <split>_step<N>_metrics.json, _predictions.csv
    WORKDIR/report/              figures and report.md (report.py)

`Workdir.create` checks that a workdir being resumed holds the same experiment;
`Workdir.open` reads one for evaluation, prediction and reports, which need nothing
else: the model, its preprocessing and its parameters all come from here.
"""

import contextlib
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from mnist_jax import checkpoints
from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import locks
from mnist_jax import models
from mnist_jax import steps
from mnist_jax.errors import ConfigError, WorkdirError, disk_errors
from mnist_jax.models import external

# Fields that define what a workdir's checkpoints are; a resumed run must match them.
# `model` counts without the options of cells other than the chosen one, without the
# chosen cell's `runtime` options (how it computes, e.g. LSTM's implementation), and
# without `cell_file` (where an import-path cell's code lives, not what the cell is).
# optimizer.ema_decay counts because the optimizer state (and so each checkpoint) holds
# the average only when it is above 0, and its value is what the average means.
IDENTITY_KEYS = ("seed", "batch_size", "model", "data.name", "data.sequence",
                 "data.resize", "data.permutation", "data.permutation_seed",
                 "data.validation_size", "data.standardize", "optimizer.ema_decay")


def write_atomic(path: str, text: str) -> None:
  """Writes via a temporary file and rename, so a kill never leaves half a file.

  Raises:
    WriteError: a full disk, quota, read-only or forbidden folder (the temporary
      file is removed and an older `path` is left as it was).
  """
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with disk_errors(path):
      with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def make_folder(path: str) -> None:
  """Creates the workdir `path` (and its parents) if needed.

  Raises:
    WorkdirError: `path` is a file or cannot be created.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir={path} is a file, not a folder; name a new "
                       f"folder (it is created).")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot create --workdir={path} ({e.strerror}).") from None


@contextlib.contextmanager
def writing(path: str, create: bool = True):
  """Holds the workdir's lock (locks.py) while this process writes it.

  Training, an evaluation that writes its files and a report each hold it, so two
  processes never write one workdir. In a job of several processes only process 0
  takes it (the others write their checkpoint shards beside it).

  Raises:
    locks.LockedError: another process holds it (the message names that process).
  """
  if create:
    make_folder(path)
  if jax.process_count() > 1 and jax.process_index() != 0:
    yield
    return
  with locks.locked(path, "workdir", "use another --workdir"):
    yield


def eval_path(workdir: str, split: str, step: int, kind: str) -> str:
  """WORKDIR/eval/<split>_step<step>_<kind>, kind "metrics.json" or "predictions.csv"."""
  return os.path.join(workdir, "eval", f"{split}_step{step}_{kind}")


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
  if not isinstance(value, dict):
    return {prefix: value}
  out = {}
  for key, sub in value.items():
    out.update(_flatten(sub, f"{prefix}.{key}"))
  return out


def identity(config: dict) -> dict[str, Any]:
  """The identity fields of a config dict, flattened to dotted keys."""
  out = {}
  for key in IDENTITY_KEYS:
    value = config
    for part in key.split("."):
      value = value.get(part) if isinstance(value, dict) else None
    if key == "model":
      value = dict(value)
      value.pop("cell_file", None)
      options = value.pop("options", {})
      chosen = external.options_key(value["name"])
      value["options"] = {chosen: _without_runtime(value["name"],
                                                   options.get(chosen, {}))}
    out.update(_flatten(value, key))
  return out


def _without_runtime(name: str, options: dict) -> dict:
  """A registered cell's option values less its `runtime` ones (base.Option)."""
  cell = models.CELLS.get(name) if isinstance(name, str) else None
  runtime = {k for k, o in cell.OPTIONS.items() if o.runtime} if cell else set()
  return {k: v for k, v in options.items() if k not in runtime}


def differences(old: dict, new: dict) -> list[str]:
  """'key=old -> new' for every identity field that differs."""
  a, b = identity(old), identity(new)
  return [f"{k}={a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]


def config_to_json(config: ml_collections.ConfigDict) -> str:
  """The text of WORKDIR/config.json."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def _migrate(saved: dict) -> dict:
  """A saved config dict in today's layout (moves the legacy model keys)."""
  model = saved.get("model")
  if not isinstance(model, dict):
    return saved
  options = model.setdefault("options", {})
  for old, (cells, key) in config_lib.LEGACY_MODEL_KEYS.items():
    if old in model:
      value = model.pop(old)
      for cell in cells:
        options.setdefault(cell, {})[key] = value
  return saved


def config_from_json(text: str) -> ml_collections.ConfigDict:
  """Rebuilds a saved config on top of the base one, so new keys get defaults.

  Raises:
    ConfigError: the text is not a config written by mnist_jax.
  """
  saved = _migrate(json.loads(text))
  config = config_lib.get_config()
  config.unlock()

  # An import-path cell's settings are whatever its experiment file chose.
  free = f"model.options.{external.OPTIONS_KEY}."

  def merge(target, values, prefix=""):
    for key, value in values.items():
      if key not in target and prefix != free:
        raise ConfigError(f"saved config has unknown key {prefix}{key}; it was written "
                          f"by another version of mnist_jax.")
      if isinstance(value, dict):
        merge(target[key], value, f"{prefix}{key}.")
      else:
        with target.ignore_type():
          target[key] = value

  merge(config, saved)
  return config


def read_config(path: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json as a config (legacy layouts migrated), not yet resolved."""
  file = os.path.join(path, "config.json")
  if not os.path.exists(file) and os.path.exists(os.path.join(path, "sweep.json")):
    raise WorkdirError(f"{path} is a sweep folder, not a training workdir; name one of "
                       f"its runs' folders ({os.path.join(path, '<run>')}).")
  if not os.path.exists(file):
    raise WorkdirError(f"{path} has no config.json; is it a training workdir?")
  try:
    with open(file) as f:
      return config_from_json(f.read())
  except (ValueError, ConfigError, OSError) as e:
    raise WorkdirError(f"{file} cannot be read ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}); restore it from "
                       f"a copy, or train into a new --workdir.") from None


def _read(path: str) -> str:
  with open(path) as f:
    return f.read()


def _mean_std(saved: Any) -> dict:
  """preprocessing.json's content, checked: {"mean": number, "std": number}."""
  if not (isinstance(saved, dict) and isinstance(saved.get("mean"), (int, float))
          and isinstance(saved.get("std"), (int, float))):
    raise ValueError("not {mean, std}")
  return saved


def _load_or_none(path: str, load: Callable[[str], Any]) -> Any:
  """`load(path)`, or None when the file is missing or damaged.

  Both preprocessing files hold constants that are a pure function of the config and
  the training split, so a damaged one (say, a run killed while writing it) is
  computed again rather than trusted or fatal.
  """
  if not os.path.exists(path):
    return None
  try:
    return load(path)
  except (OSError, ValueError, EOFError) as e:
    from absl import logging
    logging.warning("%s is damaged (%s); computing its constants again.", path,
                    type(e).__name__)
    return None


class Workdir:
  """An existing workdir and its resolved config.

  Attributes:
    path: the folder.
    config: the run's resolved, locked config.
  """

  def __init__(self, path: str, config: ml_collections.ConfigDict):
    self.path, self.config = path, config

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, path: str) -> "Workdir":
    """Creates `path` for `config` (resolved), or checks that it holds the same run.

    Raises:
      WorkdirError: `path` is a file or cannot be created, or holds another run
        (every differing identity field is named).
    """
    if os.path.exists(os.path.join(path, "sweep.json")):
      raise WorkdirError(f"--workdir={path} holds a sweep (sweep.json); train into one "
                         f"of its runs' folders or a new --workdir.")
    make_folder(path)
    if os.path.exists(os.path.join(path, "config.json")):
      changed = differences(read_config(path).to_dict(), config.to_dict())
      if changed:
        raise WorkdirError(
            f"{path} holds another run ({'; '.join(changed)}); use a new --workdir, "
            f"or the config it was trained with.")
    if jax.process_index() == 0:
      write_atomic(os.path.join(path, "config.json"), config_to_json(config))
    return cls(path, config)

  @classmethod
  def open(cls, path: str) -> "Workdir":
    """Opens a trained workdir; its config is resolved for this machine.

    Raises:
      WorkdirError: no such folder, or no readable config.json.
    """
    if not os.path.isdir(path):
      raise WorkdirError(f"workdir {path} does not exist.")
    config = read_config(path)
    if config.data.manual_dir and not os.path.isdir(config.data.manual_dir):
      # Copied from another machine: the data is found as on this one.
      config.data.manual_dir = None
    fitted = models.fit_to_machine(config.model)  # Trained with cuDNN, opened on a CPU.
    if fitted:
      from absl import logging
      logging.info("%s", fitted)
    return cls(path, config_lib.resolve(config))

  # -- Preprocessing constants. ------------------------------------------------------
  def preprocessing(self, compute: Callable[[], data.Preprocessing],
                    save: bool = False) -> data.Preprocessing:
    """The saved constants; computed with `compute()` when there are none.

    Training saves what it computed (`save`); evaluation and prediction only read, so
    a read-only workdir still evaluates. Workdirs from before preprocessing.json keep
    their permutation.npy and compute the mean and std again (which needs the dataset
    when data.standardize is on).
    """
    json_path = os.path.join(self.path, "preprocessing.json")
    perm_path = os.path.join(self.path, "permutation.npy")
    saved_perm = _load_or_none(perm_path, np.load)
    saved = _load_or_none(json_path, lambda p: _mean_std(json.loads(_read(p))))
    if saved is not None:
      if saved_perm is None:  # Missing or damaged: a pure function of the config.
        saved_perm = data.permutation(self.config.data)
      return data.Preprocessing(saved["mean"], saved["std"], saved_perm)
    computed = compute()
    if saved_perm is not None:
      computed = data.Preprocessing(computed.mean, computed.std, saved_perm)
    if save and jax.process_index() == 0:
      if computed.permutation is not None and saved_perm is None:
        tmp = f"{perm_path}.tmp-{os.getpid()}.npy"
        np.save(tmp, computed.permutation)
        os.replace(tmp, perm_path)  # A kill never leaves half a permutation.
      write_atomic(json_path, json.dumps({"mean": computed.mean, "std": computed.std}))
    return computed

  def saved_preprocessing(self) -> data.Preprocessing:
    """The constants, loading the training split only for a legacy standardised run."""
    def compute():
      if not self.config.data.standardize:
        return data.Preprocessing(permutation=data.permutation(self.config.data))
      return data.preprocessing_for(self.config,
                                    data.load_splits(self.config)["train"])
    return self.preprocessing(compute)

  # -- Checkpoints. ------------------------------------------------------------------
  def checkpoint_store(self, read_only: bool = False) -> checkpoints.CheckpointStore:
    directory = os.path.join(self.path, "checkpoints")
    if read_only and not os.path.isdir(directory):
      raise WorkdirError(f"no checkpoint in {directory}; train first.")
    return checkpoints.CheckpointStore(directory, keep=self.config.keep_checkpoints,
                                       read_only=read_only)

  def restore_params(self, which: str | int = "best",
                     sharding: jax.sharding.Sharding | None = None,
                     kind: str | None = None) -> tuple[int, Any]:
    """(step, params) of checkpoint `which`: "best", "latest" or a step number.

    Args:
      which: the checkpoint.
      sharding: where the parameters go (default: this process's first device).
      kind: "raw" or "ema" (the moving average, read from the saved optimizer
        state); None: `config.eval_params`, which is "raw" for runs without an EMA
        and for workdirs written before it existed.

    Raises:
      WorkdirError: no such checkpoint, or a damaged one.
    """
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    kind = kind or self.config.eval_params
    store = self.checkpoint_store(read_only=True)
    try:
      step = store.resolve_step(which)
      if kind == "ema":  # The whole optimizer state: the EMA sits at its end.
        opt_state = store.restore_part(step, "opt_state",
                                       steps.abstract_opt_state(self.config), sharding)
        params = steps.eval_params(None, opt_state, "ema")
      else:
        params = store.restore_params(step, steps.abstract_params(self.config),
                                      sharding)
    finally:
      store.close()
    return step, params
