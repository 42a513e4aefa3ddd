"""mnist-jax: train and evaluate recurrent networks on MNIST read as sequences.

    mnist-jax --config=experiments/seed_lstm.py --workdir=runs/seed_lstm
    mnist-jax --mode=eval --workdir=runs/seed_lstm --checkpoint=latest
    mnist-jax --mode=report --workdir=runs/seed_lstm
    mnist-jax --mode=predict --workdir=runs/seed_lstm digit.png [more.png ...]

(`python -m mnist_jax.main` is the same command.) Any config field can be overridden,
e.g. `--config.num_epochs=1 --config.model.hidden_size=64`; see mnist_jax/config.py.
`--config.model.name` takes a registered cell (lstm, gru, min_gru, ...) or a
`module:Class` import path (flax.linen:GRUCell, or my_cells:MyCell in your own file).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # Hide TensorFlow's C++ INFO lines.

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mnist_jax import cli  # Light: JAX loads after the flags parse.

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (see experiments/).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where config, metrics and checkpoints live.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "report", "predict"],
                  "train: train (resuming if possible), evaluate on test, draw the "
                  "report. eval: evaluate a checkpoint of a trained workdir. report: "
                  "draw WORKDIR/report/ (or compare --workdirs into WORKDIR). predict: "
                  "classify the image files given as arguments.")
flags.DEFINE_string("checkpoint", "best", "eval, report, predict: 'best', 'latest' or "
                    "a step number.")
flags.DEFINE_enum("split", "test", ["test", "validation"], "eval mode: which split.")
flags.DEFINE_list("workdirs", [], "report mode: several workdirs to compare in one "
                  "table and plot, written into --workdir.")
flags.DEFINE_bool("json", False, "predict mode: print a JSON list.")
flags.DEFINE_string("coordinator_address", None, "Several processes: HOST:PORT of "
                    "process 0, reachable from all (default: from SLURM, Open MPI, a "
                    "TPU VM or $JAX_COORDINATOR_ADDRESS; see docs/distributed.md).")
flags.DEFINE_integer("num_processes", None, "Several processes: how many.")
flags.DEFINE_integer("process_id", None, "Several processes: this one's index.")
flags.DEFINE_string("compilation_cache", cli.DEFAULT_COMPILATION_CACHE,
                    "Folder for JAX's persistent compilation cache: a rerun of a model "
                    "skips XLA compilation. Empty: off. Default from "
                    "$MNIST_JAX_COMPILATION_CACHE when set.")
flags.DEFINE_integer("cpu_devices", None, "One process on CPU: split each batch across "
                     "this many CPU devices, one core each (default: one per logical "
                     "CPU this process may use, at most 8; 1: off; more than the "
                     "usable CPUs is capped at their number, with a warning).")
flags.mark_flag_as_required("workdir")
flags.register_validator("workdir", lambda value: value is None or bool(value.strip()),
                         "--workdir must name a folder, not be empty.")


def main(argv):
  from mnist_jax.errors import UserError
  try:
    cli.setup(FLAGS.compilation_cache, FLAGS.cpu_devices, FLAGS.coordinator_address,
              FLAGS.num_processes, FLAGS.process_id)
    checkpoint = FLAGS.checkpoint if FLAGS["checkpoint"].present else None
    return cli.run_mode(FLAGS.mode, FLAGS.workdir, config=FLAGS.config,
                        checkpoint=checkpoint, split=FLAGS.split,
                        workdirs=FLAGS.workdirs, files=argv[1:], as_json=FLAGS.json)
  except UserError as e:
    logging.flush()
    sys.exit(f"error: {e}")


def run():
  """Console-script entry point (`mnist-jax`)."""
  from mnist_jax import hugepages
  cli.refuse_if_busy(sys.argv)  # In a second, before the config loads the models.
  hugepages.relaunch_with_huge_pages()  # Long sequences on CPU (see hugepages.py).
  app.run(main, flags_parser=cli.flags_parser(__doc__))


if __name__ == "__main__":
  run()
