"""What the command line does around the library: help, flag errors, setup, modes.

`main.py` defines the flags and calls `run_mode`; this module keeps JAX and the rest
of the library unimported until the flags have parsed, so `--help` is instant.
"""

import argparse
import logging as logging_lib
import os
import re
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging

_HELP = ("--help", "-h", "-?", "--helpshort")
# JAX's persistent compilation cache: $MNIST_JAX_COMPILATION_CACHE, else this.
DEFAULT_COMPILATION_CACHE = os.environ.get("MNIST_JAX_COMPILATION_CACHE",
                                           "~/.cache/mnist_jax/jax_compilation_cache")


def flags_parser(doc: str) -> Callable[[list[str]], list[str]]:
  """absl's flag parsing, with a --help that lists the flags and exits 0, and one-line
  errors (`error: ...; see --help.`) for bad flags, a missing or broken config file,
  or a --config.KEY that names no field. absl's own `app.parse_flags_with_usage`
  prints two lines ("FATAL Flags parsing error" and where help is), so it is not used.
  """

  def parse(argv: list[str]) -> list[str]:
    args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if any(a in _HELP for a in args):
      module = flags.FLAGS.find_module_defining_flag("workdir")
      listing = flags.FLAGS.module_help(module).split("\n", 1)[-1]  # Less its path.
      print(doc.strip() + "\n\nFlags:\n" + listing
            + "\n\nMore: --helpfull lists every flag (absl's and JAX's too).")
      sys.exit(0)
    _check_config_path(args)
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.exit(f"error: {_one_line(str(e)).rstrip('.')}; see --help.")
    except SyntaxError as e:  # config_flags imports the file: not Python (README.md?).
      sys.exit(f"error: --config: {e.filename} is not valid Python (line {e.lineno}: "
               f"{e.msg}); experiment configs are like experiments/seed_lstm.py.")
    except (AttributeError, KeyError) as e:  # config_flags: the config has no KEY.
      _exit_for_missing_key(e, args)
      raise  # Not an override's fault (e.g. a bug in the config file): keep it.

  return parse


def _exit_for_missing_key(error: Exception, args: Sequence[str]) -> None:
  """Exits with one line when `error` is a --config.KEY naming no field, or a config
  file without get_config(); returns for anything else."""
  cause = error.__context__ if isinstance(error.__context__, KeyError) else error
  detail = str(cause.args[0]) if cause.args else str(cause)
  key = detail.splitlines()[0].strip("'\"") if detail else ""
  if key and any(a.startswith("--config.") and key in a for a in args):
    sys.exit(f"error: --config override names no config field: "
             f"{' '.join(detail.split())} (see mnist_jax/config.py).")
  if isinstance(error, AttributeError) and error.name == "get_config":
    value = " ".join(_config_values(args)[-1:])
    sys.exit(f"error: --config={value}: defines no get_config(); "
             f"experiment configs do, like experiments/seed_lstm.py.")


def _one_line(message: str) -> str:
  """absl's flag error on one line. A traceback inside it (config_flags quotes one when
  a config file's get_config raises) shrinks to its last line and the innermost place
  outside installed packages: where to look, without the traceback."""
  head, found, trace = message.partition("Traceback (most recent call last):")
  text = " ".join(head.split()).rstrip(":")
  if not found:
    return text
  lines = [line.strip() for line in trace.splitlines() if line.strip()]
  places = [(path, line) for path, line in re.findall(r'File "([^"]+)", line (\d+)',
                                                        trace)
            if "-packages" + os.sep not in path]
  where = f" ({places[-1][0]}, line {places[-1][1]})" if places else ""
  return f"{text}: {lines[-1] if lines else 'failed'}{where}"


def config_overrides(argv: Sequence[str]) -> list[str]:
  """The --config.KEY=VALUE arguments of a command line, to pass on unchanged."""
  return [a for a in argv[1:] if a.startswith("--config.")]


def _config_values(args: Sequence[str]) -> list[str]:
  """The values given to --config in `args`, in order."""
  values = []
  for i, arg in enumerate(args):
    if arg.startswith("--config="):
      values.append(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(args):
      values.append(args[i + 1])
  return values


def _check_config_path(args: Sequence[str]) -> None:
  """Exits with one line if --config names a file that does not exist."""
  for value in _config_values(args):
    path = value.split(":", 1)[0]  # config_flags: FILE[:ARGUMENT].
    if not os.path.isfile(path):
      sys.exit(f"error: --config={value}: no such file; experiment configs are in "
               f"experiments/ (e.g. --config=experiments/seed_lstm.py).")


def use_compilation_cache(folder: str) -> None:
  """Turns on JAX's persistent compilation cache in `folder` (every executable).

  Entries are keyed by the program, compile options, JAX version and device, so a
  changed model or another machine compiles afresh. A damaged entry (e.g. a run killed
  while writing it) is reported by JAX as a warning and compiled again.

  Args:
    folder: the cache folder ("~" expanded), created now; empty, or a folder that
      cannot be created (a warning then says so): leave the cache off.
  """
  if not folder:
    return
  folder = os.path.expanduser(folder)
  try:  # JAX would warn at every compilation instead (a file there, a read-only disk).
    os.makedirs(folder, exist_ok=True)
    problem = None if os.access(folder, os.W_OK | os.X_OK) else "not writable"
  except FileExistsError:
    problem = "a file, not a folder"
  except OSError as e:
    problem = e.strerror or str(e)
  if problem:
    logging.warning("--compilation_cache=%s: %s; compiling without a cache.", folder,
                    problem)
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", folder)
  # The defaults skip programs that compile in under 1 s; here those add up to seconds.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_compilation_cache_max_size", 2**30)  # LRU-evicted beyond.


def _ignore_closed_event_loops(unraisable) -> None:
  """Orbax's background reads can outlive its event loop after a failed restore and
  print "Exception ignored ... Event loop is closed" tracebacks over the one-line
  error that already explains the failure; everything else is reported as usual."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
    return
  sys.__unraisablehook__(unraisable)


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO chatter from Orbax, TensorFlow and JAX; warnings still show."""

  def filter(self, record):
    noisy = any(f"{os.sep}{lib}{os.sep}" in record.pathname
                for lib in ("orbax", "tensorflow", "tensorflow_datasets", "jax"))
    return record.levelno >= logging_lib.WARNING or not noisy


class _QuietAsyncio(logging_lib.Filter):
  """Drops asyncio's "Task exception was never retrieved" for Orbax's reads of a
  checkpoint whose failure the one-line error already reported."""

  def filter(self, record):
    return "exception was never retrieved" not in record.getMessage()


def refuse_if_busy(argv: Sequence[str], what: str = "workdir",
                   modes: tuple[str, ...] | None = ("train", "report")) -> None:
  """A second writer of a --workdir (training or report; `modes` None: any, as for a
  sweep folder) exits here, within a second or two: before the config file loads the
  models and JAX (seconds). Not in a job of several processes (its process 0 takes the
  lock; the others never do), nor for --help."""
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False,
                                   exit_on_error=False)
  for name in ("mode", "workdir", "coordinator_address", "num_processes"):
    parser.add_argument(f"--{name}")
  try:
    known, _ = parser.parse_known_args(argv[1:argv.index("--")] if "--" in argv
                                       else argv[1:])
  except argparse.ArgumentError:
    return  # absl's parsing says what is wrong, in one line.
  if (modes and (known.mode or "train") not in modes) or not known.workdir or any(
      a in _HELP for a in argv):
    return
  from mnist_jax import cluster_env, locks
  from mnist_jax.errors import UserError
  if known.coordinator_address or known.num_processes not in (None, "1") or (
      cluster_env.detect_cluster()):
    return
  try:
    locks.check_free(known.workdir, what, "use another --workdir")
  except UserError as e:
    sys.exit(f"error: {e}")


def setup(compilation_cache: str, cpu_devices: int | None,
          coordinator_address: str | None, num_processes: int | None,
          process_id: int | None) -> None:
  """Quiet library logs, compilation cache, then several processes or several CPU
  devices, before JAX starts any backend; with $JAX_PLATFORMS set, the backend then
  starts at once, so a platform missing here is a one-line error.

  Raises:
    ConfigError: bad --cpu_devices or process flags, or an unusable $JAX_PLATFORMS.
  """
  from mnist_jax import distributed, hugepages
  logging.get_absl_handler().addFilter(_QuietLibraries())
  sys.unraisablehook = _ignore_closed_event_loops
  logging_lib.getLogger("asyncio").addFilter(_QuietAsyncio())
  line = hugepages.announcement()
  if line:
    logging.info(line)
  use_compilation_cache(compilation_cache)
  if not distributed.initialize(coordinator_address, num_processes, process_id):
    distributed.set_cpu_devices(cpu_devices)
  elif cpu_devices is not None:
    logging.warning("--cpu_devices ignored: several processes use the data mesh, "
                    "one CPU device each.")
  if os.environ.get("JAX_PLATFORMS"):  # Else the first computation starts it.
    distributed.start_backend()


def run_mode(mode: str, workdir: str, *, config=None, checkpoint=None,
             split: str = "test", workdirs: Sequence[str] = (),
             files: Sequence[str] = (), as_json: bool = False) -> int:
  """Runs one mode of `mnist-jax`; returns the exit status.

  Raises:
    UserError: bad input, with a message that says what to do.
  """
  from mnist_jax.errors import UserError
  if files and mode != "predict":
    raise UserError(f"unexpected arguments {' '.join(files)}: only --mode=predict "
                    f"takes files (flags need --name=value).")
  if mode == "train":
    if config is None:
      raise UserError("--config is required to train (e.g. "
                      "--config=experiments/seed_lstm.py).")
    from mnist_jax import train
    train.train_and_evaluate(config, workdir)
  elif mode == "eval":
    from mnist_jax import evaluate
    evaluate.evaluate_workdir(workdir, checkpoint or "best", split)
  elif mode == "report":
    from mnist_jax import report
    paths = (report.compare(workdirs, workdir) if workdirs
             else report.write_report(workdir, checkpoint=checkpoint))
    print("\n".join(f"{name}: {path}" for name, path in paths.items()))
  else:
    if not files:
      raise UserError("--mode=predict needs image files after the flags, e.g. "
                      "--mode=predict --workdir=runs/seed_lstm digit.png.")
    from mnist_jax import predict
    predictor = predict.Predictor(workdir, checkpoint or "best")
    return predict.print_results(predict.predict_files(predictor, list(files)),
                                 as_json)
  return 0
