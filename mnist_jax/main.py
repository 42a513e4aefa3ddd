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
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train: train (resuming if possible), then evaluate on test. "
                  "eval: evaluate a checkpoint of an existing workdir.")
flags.DEFINE_string("checkpoint", "best", "eval mode: 'best', 'latest' or a step.")
flags.DEFINE_enum("split", "test", ["test", "validation"], "eval mode: which split.")
flags.mark_flag_as_required("workdir")


class _QuietLibraries(pylogging.Filter):
  """Drops INFO chatter from Orbax and TensorFlow; warnings and errors still show."""

  def filter(self, record):
    noisy = any(f"{os.sep}{lib}{os.sep}" in record.pathname
                for lib in ("orbax", "tensorflow", "tensorflow_datasets", "jax"))
    return record.levelno >= pylogging.WARNING or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # TensorFlow only feeds tfds; keep it off the GPUs so JAX gets all their memory.
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")

  from mnist_jax import evaluate  # After flags parse: keeps --help fast.
  from mnist_jax.errors import UserError
  try:
    if FLAGS.mode == "train":
      if FLAGS.config is None:
        raise UserError("--config is required to train (e.g. "
                        "--config=experiments/seed_lstm.py).")
      evaluate.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      evaluate.evaluate_workdir(FLAGS.workdir, FLAGS.checkpoint, FLAGS.split)
  except UserError as e:
    logging.flush()
    sys.exit(f"error: {e}")


def run():
  """Console-script entry point (`mnist-jax`)."""
  app.run(main)


if __name__ == "__main__":
  run()
