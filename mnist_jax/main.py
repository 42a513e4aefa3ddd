"""Command line: train and evaluate, or evaluate a checkpoint.

    python -m mnist_jax.main --config=experiments/seed_lstm.py --workdir=runs/seed_lstm
    python -m mnist_jax.main --mode=eval --workdir=runs/seed_lstm --checkpoint=best

Only this module defines flags. Any config field can be overridden, e.g.
`--config.num_epochs=1 --config.model.hidden_size=64`.
"""

import logging as pylogging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # Hide TensorFlow's C++ INFO lines.

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (see experiments/).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where config, metrics and checkpoints live.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "report"],
                  "train: train (resuming if possible), then evaluate on test and draw "
                  "the report. eval: evaluate a checkpoint of an existing workdir. "
                  "report: draw WORKDIR/report/ (or compare --workdirs into WORKDIR).")
flags.DEFINE_string("checkpoint", "best", "eval mode: 'best', 'latest' or a step.")
flags.DEFINE_enum("split", "test", ["test", "validation"], "eval mode: which split.")
flags.DEFINE_list("workdirs", [], "report mode: several workdirs to compare in one "
                  "table and plot, written into --workdir.")
flags.DEFINE_string("coordinator_address", None, "Several processes: HOST:PORT of "
                    "process 0, reachable from all (default: from SLURM, Open MPI, a "
                    "TPU VM or $JAX_COORDINATOR_ADDRESS; see mnist_jax/distributed.py).")
flags.DEFINE_integer("num_processes", None, "Several processes: how many.")
flags.DEFINE_integer("process_id", None, "Several processes: this one's index.")
flags.DEFINE_string("compilation_cache", "~/.cache/mnist_jax/jax_compilation_cache",
                    "Folder for JAX's persistent compilation cache: a rerun of a model "
                    "skips XLA compilation (one-epoch seed LSTM: 17-18 s without, "
                    "12-13 s with a filled cache). Empty: off.")
flags.DEFINE_integer("cpu_devices", None, "One process on CPU: split each batch across "
                     "this many CPU devices, one core each (default: one per logical "
                     "CPU this process may use, at most 8; 1: off). See "
                     "train.CpuReplicas.")
flags.mark_flag_as_required("workdir")


class _QuietLibraries(pylogging.Filter):
  """Drops INFO chatter from Orbax and TensorFlow; warnings and errors still show."""

  def filter(self, record):
    if "did not provide metrics" in record.getMessage():
      return False  # Orbax, for every mid-epoch checkpoint: saved without val metrics.
    noisy = any(f"{os.sep}{lib}{os.sep}" in record.pathname
                for lib in ("orbax", "tensorflow", "tensorflow_datasets", "jax"))
    return record.levelno >= pylogging.WARNING or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # TensorFlow only feeds tfds and is imported only when tfds must read (a first run;
  # later runs read data.py's array cache): data._tfds hides the GPUs from it there.

  from mnist_jax import distributed, evaluate  # After flags parse: keeps --help fast.
  from mnist_jax.errors import UserError
  try:
    _use_compilation_cache(FLAGS.compilation_cache)
    if not distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id):
      distributed.set_cpu_devices(FLAGS.cpu_devices)
    elif FLAGS.cpu_devices is not None:
      logging.warning("--cpu_devices ignored: several processes use the data mesh, "
                      "one CPU device each.")
    if FLAGS.mode == "train":
      if FLAGS.config is None:
        raise UserError("--config is required to train (e.g. "
                        "--config=experiments/seed_lstm.py).")
      evaluate.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
      evaluate.evaluate_workdir(FLAGS.workdir, FLAGS.checkpoint, FLAGS.split)
    else:
      from mnist_jax import report
      if FLAGS.workdirs:
        paths = report.compare(FLAGS.workdirs, FLAGS.workdir)
      else:
        paths = report.write_report(FLAGS.workdir)
      print("\n".join(f"{name}: {path}" for name, path in paths.items()))
  except UserError as e:
    logging.flush()
    sys.exit(f"error: {e}")


def _use_compilation_cache(folder: str) -> None:
  """Turns on JAX's persistent compilation cache in `folder` (every executable).

  Entries are keyed by the program, compile options, JAX version and device, so a
  changed model or another machine compiles afresh. A damaged entry (e.g. a run killed
  while writing it) is reported by JAX as a warning and compiled again.

  Args:
    folder: the cache folder ("~" expanded); empty: leave the cache off.
  """
  if not folder:
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(folder))
  # The defaults skip programs that compile in under 1 s; here those add up to seconds.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_compilation_cache_max_size", 2**30)  # LRU-evicted beyond.


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a --config.KEY override of no config field is one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # config_flags: the config has no KEY.
    cause = e.__context__ if isinstance(e.__context__, KeyError) else e
    detail = str(cause.args[0]) if cause.args else str(cause)
    key = detail.splitlines()[0].strip("'\"") if detail else ""
    if not key or not any(a.startswith("--config.") and key in a for a in argv):
      raise  # Not an override's fault (e.g. a bug in the config file): keep it.
    sys.exit(f"error: --config override names no config field: "
             f"{' '.join(detail.split())} (see mnist_jax/config.py).")


def run():
  """Console-script entry point (`mnist-jax`)."""
  from mnist_jax import hugepages
  hugepages.relaunch_with_huge_pages()  # Long sequences: +30% (see hugepages.py).
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
