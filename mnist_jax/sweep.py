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

--launcher=slurm submits each run as its own SLURM job instead (sbatch; one CPU device
each unless --cpu_devices says otherwise), follows them with squeue, and records the
job ids in each run's folder: the same command again follows jobs still queued or
running, skips finished runs and resubmits the rest, which resume from their
checkpoints. Ctrl-C or SIGTERM then stops following; the jobs go on. See
docs/distributed.md, "SLURM".

--population trains the runs, which may then differ only in seed and
optimizer.learning_rate, in this one process on one device, as one jitted step over
the runs (mnist_jax/population.py); each still gets its own ordinary workdir, and the
same command again resumes them. See docs/distributed.md, "Populations".
"""

import os
import shlex
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
flags.DEFINE_integer("cpu_devices", None, "CPU devices of each run (main's "
                     "--cpu_devices; default: local, the cores shared out as "
                     "--parallel says; slurm, 1).", lower_bound=1)
flags.DEFINE_enum("launcher", "local", ["local", "slurm"], "local: runs are processes "
                  "of this machine. slurm: one sbatch job per run, followed with "
                  "squeue; --parallel caps the jobs queued at once (default: all).")
flags.DEFINE_string("slurm_partition", None, "slurm: sbatch --partition.")
flags.DEFINE_string("slurm_time", None, "slurm: sbatch --time of each job, e.g. "
                    "2:00:00 (default: the partition's). SIGTERM comes 120 s before "
                    "it: the run saves and the next sweep resumes it.")
flags.DEFINE_integer("slurm_cpus_per_run", 1, "slurm: --cpus-per-task of each job.",
                     lower_bound=1)
flags.DEFINE_integer("slurm_gpus_per_run", 0, "slurm: --gpus of each job.",
                     lower_bound=0)
flags.DEFINE_string("slurm_sbatch", "", "slurm: more sbatch options, quoted as one "
                    "string, e.g. --slurm_sbatch='--account=ml --qos=low'; they "
                    "override the sweep's.")
flags.DEFINE_bool("population", False, "Train the runs (differing only in seed and "
                  "optimizer.learning_rate) in this process, one vmapped step for all.")
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
    if FLAGS.population and not FLAGS.summary_only:
      # This process trains: set up as `mnist-jax --cpu_devices=1` (main's cache).
      cli.setup(cli.DEFAULT_COMPILATION_CACHE, 1, None, None, None)
    return sweeps.run_sweep(config_path, FLAGS.config, FLAGS.workdir, FLAGS.sweep,
                            FLAGS.parallel, common=cli.config_overrides(sys.argv),
                            summary_only=FLAGS.summary_only, launcher=FLAGS.launcher,
                            cpu_devices=FLAGS.cpu_devices,
                            slurm_options=_slurm_options(),
                            population=FLAGS.population)
  except UserError as e:
    sys.exit(f"error: {e}")


def _slurm_options():
  """The --slurm_* flags; given with --launcher=local they are an error."""
  from mnist_jax import slurm_launcher
  from mnist_jax.errors import UserError
  given = [f"--{name}" for name in ("slurm_partition", "slurm_time",
                                    "slurm_cpus_per_run", "slurm_gpus_per_run",
                                    "slurm_sbatch") if FLAGS[name].present]
  if given and FLAGS.launcher != "slurm":
    raise UserError(f"{given[0]} is for --launcher=slurm; add it or drop {given[0]}.")
  try:
    shlex.split(FLAGS.slurm_sbatch)
  except ValueError as e:
    raise UserError(f"--slurm_sbatch={FLAGS.slurm_sbatch!r}: {e}; quote the options "
                    f"as one shell string.") from None
  return slurm_launcher.Options(
      partition=FLAGS.slurm_partition, time=FLAGS.slurm_time,
      cpus_per_run=FLAGS.slurm_cpus_per_run, gpus_per_run=FLAGS.slurm_gpus_per_run,
      sbatch=FLAGS.slurm_sbatch)


def run():
  """Console-script entry point (`mnist-jax-sweep`)."""
  from mnist_jax import cli
  cli.refuse_if_busy(sys.argv, "sweep folder", modes=None)  # Before the config loads.
  app.run(main, flags_parser=cli.flags_parser(__doc__))


if __name__ == "__main__":
  run()
