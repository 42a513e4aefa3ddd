r"""Training and evaluation speed of an experiment config, optionally against PyTorch.

    python benchmarks/benchmark.py --config=experiments/seed_lstm.py
    python benchmarks/benchmark.py --config=experiments/seed_lstm.py \
        --config.model.name=gru --compare=torch
    python benchmarks/benchmark.py --preset=all --compare=torch \
        --json_out=benchmarks/results/NAME.json

The JAX side is the library's own code: `steps.create_train_state`, and the train and
eval steps exactly as `train.train` builds them (`parallel.make_placement`, then the
placement's `train_step` and `eval_step`): with several CPU devices (the default on a
multi-core CPU, `--cpu_devices`) that is `parallel.CpuReplicas`. Batches
are random uint8 images of the real shape (speed does not depend on pixel values),
placed on the devices before timing, so the numbers are the steps alone, as in
training where a thread prepares batches ahead.

Reported per config:

* train / eval examples/s: median over `--repeats` timed repeats after compilation and
  warm-up. Steps are dispatched back to back and waited for once per repeat, as the
  training loop does. With `--compare=torch`, JAX and PyTorch repeats alternate, so a
  change in background load hits both sides alike.
* compile: seconds to trace, lower and compile the train step (and the eval step).
  With several CPU devices (`parallel.CpuReplicas`, the default on a multi-core CPU)
  there is no single train executable: the figure is the first step run once (which
  compiles every device's program) plus an ahead-of-time compile of one shard's
  gradient program, and the eval figure includes one evaluation batch.
* FLOPs: counted analytically for the matmuls (input projection, recurrent matmul,
  head), x3 for a training step (forward, and backward to inputs and weights).
  Element-wise gate arithmetic is not counted. XLA's `cost_analysis()` is not used: it
  counts a while loop's body once, not once per time step.
* GFLOP/s achieved, and as a fraction of an f32 matmul peak measured in the same run
  (1000x400 @ 400x400 in a jitted `fori_loop`), and of a matmul of the model's own
  recurrent shape ([batch, hidden] @ [hidden, gates * hidden]) run the same way.
* memory: XLA's buffer sizes for the compiled train step (with CpuReplicas: one
  shard's gradient program, without the optimizer update), the device allocator's peak
  where the backend reports one (not on CPU), and the process's peak resident set
  while each side set up and warmed up (Linux: VmHWM, reset per phase through
  /proc/self/clear_refs; elsewhere getrusage's ru_maxrss, never reset).

GRU variants: ours (`mnist_jax.models.GRU`) and PyTorch's `nn.GRU` both apply the reset
gate after the recurrent matmul, n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) (cuDNN,
Keras `reset_after=True`); Flax's `nn.GRUCell` applies it before, (r * h) @ W_hn, and is
not what either side runs here.

PyTorch (`--compare=torch`, `pip install -e .[bench]`) runs `nn.LSTM` / `nn.GRU` /
`nn.RNN(nonlinearity=...)` with the same hidden size, layers and bidirectionality, the
same readout and a `Linear` head, the same batch, loss and optimizer (Adam / AdamW /
SGD-Nesterov, gradient clipping and label smoothing when configured), eager mode with
its default thread count. Shift augmentation and the learning-rate schedule are not
reproduced there (both are negligible per step; a warning says so).

A config this machine cannot run (the cuDNN LSTM anywhere but on a CUDA GPU) is
skipped with its reason, printed and kept in the JSON as {"name", "skipped"}; one whose
measurement raises is kept as {"name", "failed"} and makes the exit status 1, after the
other configs are measured.

Beside this file: `runners.py` (the JAX and PyTorch runners), `costs.py` (FLOPs, the
matmul reference, peak RSS), `tables.py` (the printed table).
"""

import importlib.util
import json
import math
import os
import platform
import statistics
import time
import traceback
from typing import Callable

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

import costs
import runners
import tables
from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import models

_EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "experiments")

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Flags exist only when run as a script: tests load this file as a module."""
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (see experiments/); or use --preset.",
      lock_config=True)
  flags.DEFINE_string(
      "preset", None, "'all' or a comma-separated list of: " + ", ".join(PRESETS) +
      ". Replaces --config.")
  flags.DEFINE_enum("compare", None, ["torch"], "Also measure the PyTorch equivalent.")
  flags.DEFINE_integer("repeats", 7, "Timed repeats per measurement (median reported).")
  flags.DEFINE_float("min_repeat_s", 2.0, "Each repeat runs enough steps to last this.")
  flags.DEFINE_integer("warmup_steps", 3, "Untimed steps after compilation, per side.")
  flags.DEFINE_integer("torch_threads", 0, "PyTorch intra-op threads; 0: its default "
                       "(one per physical core).")
  flags.DEFINE_string("torch_device", "cpu", "PyTorch's device: cpu, or cuda (cuDNN).")
  flags.DEFINE_string("json_out", None, "Also write the results as JSON to this path.")
  flags.DEFINE_integer("cpu_devices", None, "JAX CPU devices (parallel.CpuReplicas), as "
                       "`mnist_jax.main --cpu_devices`: default one per logical CPU, "
                       "1: off.", lower_bound=1)


# Name -> (config file, overrides). Base recipes: batch 100, Adam 1e-3, no schedule.
# The seed_lstm_* variants time the seed LSTM's other implementation (cuDNN: CUDA GPUs
# only, skipped elsewhere) and compute dtype (PyTorch's side stays float32, so none).
PRESETS = {
    "seed_lstm": ("seed_lstm.py", {}),
    "seed_rnn": ("seed_rnn.py", {}),
    "gru": ("seed_lstm.py", {"model.name": "gru"}),
    "pixel_lstm": ("seed_lstm.py", {"data.sequence": "pixels",
                                    "model.hidden_size": 128}),
    "seed_lstm_cudnn": ("seed_lstm.py", {"model.options.lstm.implementation": "cudnn"}),
    "seed_lstm_bf16": ("seed_lstm.py", {"model.dtype": "bfloat16"}),
}



# ----------------------------------------------------------------------------------
# Measuring.
# ----------------------------------------------------------------------------------
def _steps_for(run: Callable[[int], None], min_repeat_s: float) -> int:
  """Steps per timed repeat: enough to last `min_repeat_s`, judged from one step."""
  start = time.perf_counter()
  run(1)
  per_step = max(time.perf_counter() - start, 1e-6)
  return max(1, math.ceil(min_repeat_s / per_step))


def measure(config: ml_collections.ConfigDict, compare: str | None = None,
            repeats: int = 7, min_repeat_s: float = 2.0, warmup_steps: int = 3,
            peak_gflops: float | None = None, torch_threads: int = 0,
            torch_device: str = "cpu") -> dict:
  """Measures training and evaluation speed of `config` (and PyTorch's if asked).

  Args:
    config: an experiment config (resolved and validated here).
    compare: None, or "torch" to also time the PyTorch equivalent.
    repeats: timed repeats; medians are reported, every repeat is kept.
    min_repeat_s: each repeat runs at least about this long.
    warmup_steps: untimed steps after compilation, before the timed ones.
    peak_gflops: the matmul reference; measured here when None.
    torch_threads: PyTorch intra-op threads; 0 keeps its default.
    torch_device: PyTorch's device ("cpu" or "cuda").

  Returns:
    A JSON-ready dict: "config" (the fields that matter), "flops_per_example",
    "matmul" (reference GFLOP/s), and per side ("jax", "torch") "train_examples_per_s",
    "eval_examples_per_s" (medians), their repeats, "train_gflops",
    "train_fraction_of_peak", memory and compile figures.
  """
  config = config_lib.resolve(config)
  flops = costs.flops_per_example(config)
  if peak_gflops is None:
    peak_gflops = costs.matmul_gflops(1000, 400, 400, iterations=200)
  rec_shape = costs.recurrent_matmul_shape(config)
  recurrent_gflops = (costs.matmul_gflops(config.batch_size, *rec_shape,
                                          iterations=2000) if rec_shape else None)

  jax_side = _warmed_up(lambda: runners.jax_runner(config), warmup_steps)
  stats = jax.local_devices()[0].memory_stats()  # None on CPU; set on GPU / TPU.
  if stats and "peak_bytes_in_use" in stats:
    jax_side.info["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
  sides = [jax_side]
  if compare == "torch":
    sides.append(_warmed_up(lambda: runners.torch_runner(
        config, threads=torch_threads, device=torch_device), warmup_steps))
  elif compare is not None:
    raise ValueError(f"unknown compare={compare!r}")
  rates = _alternating_rates(sides, config, repeats, min_repeat_s)

  result = {
      "config": {"model": config.model.to_dict(), "sequence": config.data.sequence,
                 "time_steps": data.input_shape(config.data)[0],
                 "batch_size": config.batch_size,
                 "eval_batch_size": config.eval_batch_size,
                 "optimizer": config.optimizer.name},
      "flops_per_example": flops,
      "matmul": {"peak_gflops": peak_gflops,
                 "peak_shape": "1000x400 @ 400x400",
                 "recurrent_shape_gflops": recurrent_gflops,
                 "recurrent_shape": (f"{config.batch_size}x{rec_shape[0]} @ "
                                     f"{rec_shape[0]}x{rec_shape[1]}"
                                     if rec_shape else None)},
  }
  for side in sides:
    result[side.name] = _side_figures(side, rates, flops, peak_gflops,
                                      recurrent_gflops)
  return result


def _warmed_up(make_runner: Callable[[], runners.Runner],
               warmup_steps: int) -> runners.Runner:
  """Builds a runner and warms it up, recording the process's peak RSS meanwhile."""
  with costs.PeakRss() as rss:
    runner = make_runner()
    runner.train_steps(warmup_steps)
    runner.eval_steps(1)
  runner.info.update(peak_rss_mib=rss.peak_mib, rss_rise_mib=rss.rise_mib,
                     rss_per_phase=rss.per_phase)
  return runner


def _alternating_rates(sides: list[runners.Runner], config: ml_collections.ConfigDict,
                       repeats: int, min_repeat_s: float) -> dict:
  """{(side, "train" | "eval"): examples/s of each repeat}.

  Steps per repeat are fixed per side, then repeats alternate between the sides, so a
  change in background load hits both alike.
  """
  plan = [(r.name, kind, getattr(r, f"{kind}_steps")) for kind in ("train", "eval")
          for r in sides]
  plan = [(name, kind, run, _steps_for(run, min_repeat_s)) for name, kind, run in plan]
  rates = {(name, kind): [] for name, kind, _, _ in plan}
  for _ in range(repeats):
    for name, kind, run, n in plan:
      start = time.perf_counter()
      run(n)
      elapsed = time.perf_counter() - start
      batch = config.batch_size if kind == "train" else config.eval_batch_size
      rates[(name, kind)].append(n * batch / elapsed)
  return rates


def _side_figures(side: runners.Runner, rates: dict, flops: dict, peak_gflops: float,
                  recurrent_gflops: float | None) -> dict:
  """One side's info, its median rates with their repeats, and its FLOP rates."""
  figures = dict(side.info)
  for kind in ("train", "eval"):
    values = rates[(side.name, kind)]
    figures[f"{kind}_examples_per_s"] = statistics.median(values)
    figures[f"{kind}_examples_per_s_repeats"] = values
  figures["train_gflops"] = figures["train_examples_per_s"] * flops["train"] / 1e9
  figures["eval_gflops"] = figures["eval_examples_per_s"] * flops["forward"] / 1e9
  figures["train_fraction_of_peak"] = figures["train_gflops"] / peak_gflops
  figures["train_fraction_of_recurrent_shape"] = (
      figures["train_gflops"] / recurrent_gflops if recurrent_gflops else None)
  return figures


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if (FLAGS.preset is None) == (FLAGS.config is None):
    raise app.UsageError("Give exactly one of --config and --preset.")
  from mnist_jax import distributed
  distributed.set_cpu_devices(FLAGS.cpu_devices)  # As `mnist_jax.main` does.
  if FLAGS.preset is not None:
    names = list(PRESETS) if FLAGS.preset == "all" else FLAGS.preset.split(",")
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
      raise app.UsageError(f"Unknown preset {unknown}; choose from {list(PRESETS)}.")
    configs = [(n, config_lib.override(config_lib.from_experiment(
        os.path.join(_EXPERIMENTS, PRESETS[n][0])), PRESETS[n][1])) for n in names]
  else:
    configs = [(None, FLAGS.config)]

  print(f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} "
        f"device(s)), python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}", flush=True)
  peak = costs.matmul_gflops(1000, 400, 400, iterations=200)
  print(f"f32 matmul 1000x400 @ 400x400 in a fori_loop: {peak:.1f} GFLOP/s", flush=True)

  records = []  # {"name", and the results, "skipped" or "failed"}, in order.
  for name, config in configs:
    label = tables.describe(config)
    if name:
      label = f"{name}: {label}"
    records.append({"name": label, **_measure_or_say_why(label, config, peak)})

  measured = [(r["name"], r) for r in records if "jax" in r]
  print()
  print(tables.format_table(measured) if measured else "nothing measured")
  for r in records:
    if "jax" not in r:
      print(f"{r['name']}: {'skipped' if 'skipped' in r else 'failed'}: "
            f"{r.get('skipped') or r.get('failed')}")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(records, f, indent=2)
  return 1 if any("failed" in r for r in records) else 0


def _measure_or_say_why(label: str, config: ml_collections.ConfigDict,
                        peak: float) -> dict:
  """`measure`'s result; {"skipped": why} for what this machine cannot run (cuDNN off
  a CUDA GPU), {"failed": error} when measuring raises, so the other configs go on."""
  why = models.machine_error(config.model)
  if why:
    print(f"skipping {label}: {why}", flush=True)
    return {"skipped": why}
  compare = FLAGS.compare
  if compare == "torch" and importlib.util.find_spec("torch") is None:
    print(f"warning: {label}: PyTorch is not installed (`pip install -e .[bench]`); "
          f"measuring JAX only.")
    compare = None
  if compare == "torch" and config.model.name not in runners.TORCH_MODELS:
    print(f"warning: {label}: no PyTorch equivalent; measuring JAX only.")
    compare = None
  if compare == "torch" and config.model.dtype != "float32":
    print(f"warning: {label}: the PyTorch side computes in float32 only; measuring "
          f"JAX only.")
    compare = None
  if compare == "torch" and config.data.augment_max_shift:
    print(f"warning: {label}: PyTorch side does not reproduce shift augmentation.")
  print(f"measuring {label} ...", flush=True)
  try:
    r = measure(config, compare, FLAGS.repeats, FLAGS.min_repeat_s,
                FLAGS.warmup_steps, peak_gflops=peak, torch_threads=FLAGS.torch_threads,
                torch_device=FLAGS.torch_device)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    return {"failed": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
  if "torch" in r:
    print(f"  torch {r['torch']['torch_version']}, "
          f"{r['torch']['threads']} intra-op threads")
  print(f"  {json.dumps({k: v for k, v in r['jax'].items() if 'repeats' not in k})}",
        flush=True)
  return r


if __name__ == "__main__":
  from mnist_jax import hugepages
  hugepages.relaunch_with_huge_pages()  # As `mnist_jax.main` does: same allocator.
  _define_flags()
  app.run(main)  # Its return value is the exit status.
