"""mnist-jax-sweep: many runs (seeds x settings), then one table with mean ± std.

    python -m mnist_jax.sweep --config=experiments/seed_lstm.py --workdir=runs/seeds \\
        --sweep=seed=0,1,2 [--sweep=model.hidden_size=64,128] [--parallel=N] \\
        [--config.num_epochs=5]

Every combination of the --sweep values (and of the config file's `get_sweep()`, if it
has one; a --sweep of a key that `get_sweep()` sweeps too replaces its values, while
one key in two --sweep flags is an error) trains in its own workdir,
SWEEP_DIR/<key=value+...>, as its own `mnist_jax.main` process: on a CPU one run per
core with one CPU device (with --parallel below the core count, the cores are shared
out: --parallel=1 gives one run every core), on a machine with GPUs one run per GPU
(on a TPU pod slice use --parallel=1).
`--config.*` overrides apply to every run. Running the same command again skips
finished runs and resumes interrupted ones; a failed run is reported and the others
go on; SIGTERM or Ctrl-C stops all runs at a checkpoint. At the end (and with
--summary_only at any time) SWEEP_DIR/summary.md, summary.csv and plots are written.
One sweep at a time per SWEEP_DIR: a second is refused at once, naming the first.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (see experiments/).", lock_config=True)
flags.DEFINE_string("workdir", None, "The sweep folder: one workdir per run inside.")
flags.DEFINE_multi_string("sweep", [], "KEY=VALUE,VALUE,...: a config field and its "
                          "values; several --sweep flags make a grid.")
flags.DEFINE_integer("parallel", None, "Runs at a time (default: one per GPU, else "
                     "one per CPU core; fewer runs than cores get several CPU devices "
                     "each).", lower_bound=1)
flags.DEFINE_bool("summary_only", False, "Only (re)write the summary of what ran.")
flags.mark_flag_as_required("workdir")
flags.register_validator("workdir", lambda value: value is None or bool(value.strip()),
                         "--workdir must name a folder, not be empty.")


def main(argv):
  from mnist_jax import cli
  from mnist_jax import sweeps
  from mnist_jax.errors import UserError
  try:
    if len(argv) > 1:
      raise UserError(f"unexpected arguments {' '.join(argv[1:])} (flags need "
                      f"--name=value).")
    config_path = (config_flags.get_config_filename(FLAGS["config"])
                   if FLAGS.config else None)
    return sweeps.run_sweep(config_path, FLAGS.config, FLAGS.workdir, FLAGS.sweep,
                            FLAGS.parallel, common=cli.config_overrides(sys.argv),
                            summary_only=FLAGS.summary_only)
  except UserError as e:
    sys.exit(f"error: {e}")


def run():
  """Console-script entry point (`mnist-jax-sweep`)."""
  from mnist_jax import cli
  app.run(main, flags_parser=cli.flags_parser(__doc__))


if __name__ == "__main__":
  run()
