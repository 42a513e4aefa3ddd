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
"""

import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import models
from mnist_jax import parallel
from mnist_jax import steps

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


# Models `--compare=torch` can build (torch.nn.LSTM, GRU, RNN).
TORCH_MODELS = ("lstm", "gru", "simple_rnn", "irnn")

# Name -> (config file, overrides). Base recipes: batch 100, Adam 1e-3, no schedule.
PRESETS = {
    "seed_lstm": ("seed_lstm.py", {}),
    "seed_rnn": ("seed_rnn.py", {}),
    "gru": ("seed_lstm.py", {"model.name": "gru"}),
    "smnist_lstm": ("seed_lstm.py", {"data.sequence": "pixels",
                                     "model.hidden_size": 128}),
}


# ----------------------------------------------------------------------------------
# Memory.
# ----------------------------------------------------------------------------------
def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark for this process (Linux >= 4.0)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _rss_mib() -> tuple[float, float]:
  """(current, peak) resident set size in MiB."""
  current = peak = None
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          current = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
          peak = int(line.split()[1]) / 1024
  except OSError:
    pass
  maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # ru_maxrss is in bytes on macOS, KiB on Linux.
  maxrss_mib = maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024
  return (current if current is not None else float("nan"),
          peak if peak is not None else maxrss_mib)


class _PeakRss:
  """Peak RSS over a `with` block, and how far it rose above the RSS at entry."""

  def __enter__(self):
    self.per_phase = _reset_peak_rss()
    self.start_mib, _ = _rss_mib()
    return self

  def __exit__(self, *exc):
    _, self.peak_mib = _rss_mib()
    self.rise_mib = self.peak_mib - self.start_mib


# ----------------------------------------------------------------------------------
# FLOPs and the matmul reference.
# ----------------------------------------------------------------------------------
def param_shapes(config: ml_collections.ConfigDict) -> dict:
  """The model's parameter shapes (abstract: nothing is computed)."""
  model = models.build_model(config.model)
  dummy = jax.ShapeDtypeStruct((1, *data.input_shape(config.data)), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                        dummy)["params"]


def flops_per_example(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Matmul FLOPs of one example: {"forward": ..., "train": 3 * forward}.

  Read off the parameter shapes: every 2-D weight of a recurrent layer (input
  projection W_x [features, gates * hidden], recurrent matrix W_h [hidden, gates *
  hidden], or any other per-step matrix) is applied once per time step, 2 FLOPs per
  weight; the head once per example. So an LSTM layer costs T * 2 * 4H * (F + H).
  Diagonal recurrences (1-D weights), biases and gate arithmetic are not counted.
  Training counts 3x forward (backward computes gradients for both the inputs and the
  weights of every matmul), the usual convention.
  """
  steps = data.input_shape(config.data)[0]
  forward = 0.0
  for name, subtree in param_shapes(config).items():
    weights = sum(leaf.size for leaf in jax.tree.leaves(subtree) if leaf.ndim == 2)
    forward += 2 * weights * (1 if name == "head" else steps)
  return {"forward": forward, "train": 3 * forward}


def recurrent_matmul_shape(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """(hidden, gates * hidden) of the first layer's recurrent matrix, if it has one."""
  layer = param_shapes(config).get("layer0_fwd", {})
  kernel = layer.get("recurrent_kernel") if hasattr(layer, "get") else None
  return tuple(kernel.shape) if kernel is not None and kernel.ndim == 2 else None


def matmul_gflops(m: int, k: int, n: int, iterations: int, repeats: int = 3) -> float:
  """GFLOP/s of an f32 [m, k] @ [k, n] matmul iterated in a jitted `fori_loop`.

  Each iteration feeds the first k columns of its product back in, so XLA cannot hoist
  the matmul out of the loop; the columns come from orthogonal blocks, so values keep
  their scale.
  """
  key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
  blocks = [jax.nn.initializers.orthogonal()(key, (k, k))
            for key in jax.random.split(key_w, -(-n // k))]
  w = jnp.concatenate(blocks, axis=1)[:, :n]
  if n < k:  # Pad the fed-back slice up to k columns.
    w = jnp.pad(w, ((0, 0), (0, k - n)))
  x = jax.random.normal(key_x, (m, k), jnp.float32)

  @jax.jit
  def loop(x, w):
    return jax.lax.fori_loop(0, iterations, lambda _, h: (h @ w)[:, :k], x)

  loop(x, w).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    loop(x, w).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * m * k * w.shape[1] * iterations / min(times) / 1e9


# ----------------------------------------------------------------------------------
# Runners: one per framework, each timing n steps.
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Runner:
  """Runs and waits for n training or evaluation steps of one framework."""
  name: str
  train_steps: Callable[[int], None]
  eval_steps: Callable[[int], None]
  info: dict


def _random_batch(rng: np.random.Generator, batch_size: int,
                  num_classes: int) -> dict[str, np.ndarray]:
  size = data.IMAGE_SIZE  # Raw images are 28 x 28; `preprocess` resizes if configured.
  return {"image": rng.integers(0, 256, (batch_size, size, size), dtype=np.uint8),
          "label": rng.integers(0, num_classes, (batch_size,), dtype=np.int32)}


def jax_runner(config: ml_collections.ConfigDict, num_batches: int = 4) -> Runner:
  """Builds, compiles and warms up the library's train and eval steps for `config`.

  Args:
    config: a resolved config.
    num_batches: distinct batches cycled through (held on the device).
  """
  placement = parallel.make_placement()
  placement.check_batch_size(config.batch_size, "batch_size")
  placement.check_batch_size(config.eval_batch_size, "eval_batch_size")
  preprocess = data.make_preprocess(config.data, perm=data.permutation(config.data))
  spe = data.steps_per_epoch(55_000, config.batch_size)  # Only shapes the LR schedule.
  state = steps.create_train_state(config, jax.random.PRNGKey(config.seed), spe)
  state = placement.put_state(state)

  # Exactly as `train.train` builds it.
  jit_train_step = placement.train_step(
      state.apply_fn, preprocess=preprocess,
      label_smoothing=config.optimizer.label_smoothing,
      augment_max_shift=config.data.augment_max_shift)
  jit_eval_step = placement.eval_step(state.apply_fn, preprocess)

  rng = np.random.default_rng(0)
  classes = config.model.num_classes
  train_batches = [placement.put_batch(_random_batch(rng, config.batch_size, classes))
                   for _ in range(num_batches)]
  eval_batches = [placement.put_batch(_random_batch(rng, config.eval_batch_size,
                                                    classes))
                  for _ in range(num_batches)]

  # Compile ahead of time to time it; the jitted functions reuse the executables.
  start = time.perf_counter()
  compiled = jit_train_step.compile(state, train_batches[0])
  train_compile_s = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(jit_eval_step(state.params, eval_batches[0]))
  eval_compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()

  holder = {"state": state}  # The state is donated: always keep the latest.

  def train_steps(n: int) -> None:
    state = holder["state"]
    for i in range(n):
      state, _ = jit_train_step(state, train_batches[i % num_batches])
    holder["state"] = jax.block_until_ready(state)

  def eval_steps(n: int) -> None:
    params = holder["state"].params
    out = None
    for i in range(n):
      out = jit_eval_step(params, eval_batches[i % num_batches])
    jax.block_until_ready(out)

  info = {"train_compile_s": train_compile_s, "eval_compile_s": eval_compile_s,
          "placement": placement.describe()}
  if memory is not None:
    info["xla_train_step_mib"] = {
        "arguments": memory.argument_size_in_bytes / 2**20,
        "outputs": memory.output_size_in_bytes / 2**20,
        "aliased": memory.alias_size_in_bytes / 2**20,
        "temporaries": memory.temp_size_in_bytes / 2**20,
    }
  return Runner("jax", train_steps, eval_steps, info)


def torch_runner(config: ml_collections.ConfigDict, num_batches: int = 4,
                 threads: int = 0, device: str = "cpu") -> Runner:
  """The PyTorch equivalent of `config`'s model, loss and optimizer (eager).

  Args:
    config: a resolved config.
    num_batches: distinct batches cycled through.
    threads: intra-op threads; 0 keeps PyTorch's default.
    device: "cpu", or "cuda" (nn.LSTM / GRU / RNN then run cuDNN's kernels).
  """
  import torch  # Optional dependency: only --compare=torch needs it.
  from torch import nn
  import torch.nn.functional as F

  if threads:
    torch.set_num_threads(threads)

  m, opt = config.model, config.optimizer
  steps, features = data.input_shape(config.data)
  if m.name == "lstm":
    rnn_cls, extra = nn.LSTM, {}
  elif m.name == "gru":
    rnn_cls, extra = nn.GRU, {}
  elif m.name in ("simple_rnn", "irnn"):  # IRNN: relu Elman net, identity init.
    rnn_cls = nn.RNN
    extra = {"nonlinearity": "relu" if m.name == "irnn"
             else m.options.simple_rnn.activation}
  else:
    raise ValueError(f"no PyTorch equivalent of model {m.name!r}; "
                     f"choose one of {TORCH_MODELS}")

  class Net(nn.Module):
    """Recurrent layers -> dropout -> readout -> Linear, like `SequenceClassifier`."""

    def __init__(self):
      super().__init__()
      # nn.LSTM's `dropout` acts between layers; ours also follows the last layer.
      self.rnn = rnn_cls(features, m.hidden_size, num_layers=m.num_layers,
                         batch_first=True, bidirectional=m.bidirectional,
                         dropout=m.dropout if m.num_layers > 1 else 0.0, **extra)
      self.dropout = nn.Dropout(m.dropout)
      directions = 2 if m.bidirectional else 1
      self.head = nn.Linear(directions * m.hidden_size, m.num_classes)

    def forward(self, x):
      x, _ = self.rnn(x)
      x = self.dropout(x)
      if m.readout == "last":
        if m.bidirectional:
          h = m.hidden_size
          x = torch.cat([x[:, -1, :h], x[:, 0, h:]], dim=-1)
        else:
          x = x[:, -1]
      elif m.readout == "mean":
        x = x.mean(dim=1)
      else:
        x = x.amax(dim=1)
      return self.head(x)

  perm = data.permutation(config.data)
  perm = None if perm is None else torch.from_numpy(perm).to(device)
  side = config.data.resize

  def preprocess(images):
    x = images.float().div_(255.0)
    if side is not None and side != data.IMAGE_SIZE:
      x = F.interpolate(x[:, None], size=(side, side), mode="bilinear",
                        antialias=True)[:, 0]
    x = x.reshape(x.shape[0], steps, features)
    if perm is not None:
      x = x[:, perm]
    return x

  torch.manual_seed(config.seed)
  model = Net().to(device)
  if opt.name == "adam":
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.learning_rate)
  elif opt.name == "adamw":
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.learning_rate,
                                  weight_decay=opt.weight_decay)
  else:
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.learning_rate,
                                momentum=opt.momentum, nesterov=True)
  loss_fn = nn.CrossEntropyLoss(label_smoothing=opt.label_smoothing)

  rng = np.random.default_rng(0)
  to_torch = lambda b: {k: torch.from_numpy(v).to(device) for k, v in b.items()}
  train_batches = [to_torch(_random_batch(rng, config.batch_size, m.num_classes))
                   for _ in range(num_batches)]
  eval_batches = [to_torch(_random_batch(rng, config.eval_batch_size, m.num_classes))
                  for _ in range(num_batches)]
  for b in train_batches + eval_batches:
    b["label"] = b["label"].long()

  def train_steps(n: int) -> None:
    model.train()
    for i in range(n):
      batch = train_batches[i % num_batches]
      optimizer.zero_grad(set_to_none=True)
      loss = loss_fn(model(preprocess(batch["image"])), batch["label"])
      loss.backward()
      if opt.grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
      optimizer.step()
    _synchronize()

  def _synchronize() -> None:  # CUDA runs asynchronously: time finished work only.
    if device != "cpu":
      torch.cuda.synchronize()

  def eval_steps(n: int) -> None:
    model.eval()
    with torch.no_grad():
      for i in range(n):
        batch = eval_batches[i % num_batches]
        F.cross_entropy(model(preprocess(batch["image"])), batch["label"],
                        reduction="none")
    _synchronize()

  info = {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
          "device": device, "cudnn": bool(device != "cpu"
                                          and torch.backends.cudnn.is_available())}
  return Runner("torch", train_steps, eval_steps, info)


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
  m = config.model
  flops = flops_per_example(config)
  if peak_gflops is None:
    peak_gflops = matmul_gflops(1000, 400, 400, iterations=200)
  rec_shape = recurrent_matmul_shape(config)
  recurrent_gflops = (matmul_gflops(config.batch_size, *rec_shape, iterations=2000)
                      if rec_shape else None)

  runners = []
  with _PeakRss() as rss:
    runner = jax_runner(config)
    runner.train_steps(warmup_steps)
    runner.eval_steps(1)
  runner.info.update(peak_rss_mib=rss.peak_mib, rss_rise_mib=rss.rise_mib,
                     rss_per_phase=rss.per_phase)
  stats = jax.local_devices()[0].memory_stats()  # None on CPU; set on GPU / TPU.
  if stats and "peak_bytes_in_use" in stats:
    runner.info["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
  runners.append(runner)
  if compare == "torch":
    with _PeakRss() as rss:
      runner = torch_runner(config, threads=torch_threads, device=torch_device)
      runner.train_steps(warmup_steps)
      runner.eval_steps(1)
    runner.info.update(peak_rss_mib=rss.peak_mib, rss_rise_mib=rss.rise_mib,
                       rss_per_phase=rss.per_phase)
    runners.append(runner)
  elif compare is not None:
    raise ValueError(f"unknown compare={compare!r}")

  # Steps per repeat are fixed per side, then repeats alternate between the sides.
  plan = [(r, kind, getattr(r, f"{kind}_steps"), _steps_for(
      getattr(r, f"{kind}_steps"), min_repeat_s)) for kind in ("train", "eval")
          for r in runners]
  rates = {(r.name, kind): [] for r, kind, _, _ in plan}
  for _ in range(repeats):
    for r, kind, run, n in plan:
      start = time.perf_counter()
      run(n)
      elapsed = time.perf_counter() - start
      batch = config.batch_size if kind == "train" else config.eval_batch_size
      rates[(r.name, kind)].append(n * batch / elapsed)

  result = {
      "config": {"model": m.to_dict(), "sequence": config.data.sequence,
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
  for r in runners:
    side = dict(r.info)
    for kind in ("train", "eval"):
      values = rates[(r.name, kind)]
      side[f"{kind}_examples_per_s"] = statistics.median(values)
      side[f"{kind}_examples_per_s_repeats"] = values
    side["train_gflops"] = side["train_examples_per_s"] * flops["train"] / 1e9
    side["eval_gflops"] = side["eval_examples_per_s"] * flops["forward"] / 1e9
    side["train_fraction_of_peak"] = side["train_gflops"] / peak_gflops
    side["train_fraction_of_recurrent_shape"] = (
        side["train_gflops"] / recurrent_gflops if recurrent_gflops else None)
    result[r.name] = side
  return result


# ----------------------------------------------------------------------------------
# Reporting.
# ----------------------------------------------------------------------------------
def describe(config: ml_collections.ConfigDict) -> str:
  m = config.model
  cell = {"lstm": "LSTM", "gru": "GRU",
          "simple_rnn": f"RNN-{m.options.simple_rnn.activation}"}.get(m.name, m.name)
  layers = f"{m.num_layers}x" if m.num_layers > 1 else ""
  bi = "bi-" if m.bidirectional else ""
  steps = data.input_shape(config.data)[0]
  return f"{layers}{bi}{cell}({m.hidden_size}) {config.data.sequence} T={steps}"


def _spread(values: list[float]) -> str:
  """Half the min-max range as a percentage of the median: a noise indicator."""
  med = statistics.median(values)
  return f"{50 * (max(values) - min(values)) / med:.0f}%" if med else "-"


def _rss(side: dict) -> str:
  return f"{side['peak_rss_mib']:.0f} (+{side['rss_rise_mib']:.0f})"


def _percent(fraction: float | None) -> str:
  return "-" if fraction is None else f"{100 * fraction:.1f}%"


def format_table(results: list[tuple[str, dict]]) -> str:
  """One table: speed per config and side, ratios, FLOP rates and memory."""
  has_torch = any("torch" in r for _, r in results)
  width = max([len("model")] + [len(name) for name, _ in results])
  head = (f"{'model':<{width}} {'batch':>5} {'train ex/s':>11} {'±':>4} "
          f"{'eval ex/s':>10} "
          f"{'±':>4} {'compile s':>9} {'MFLOP/ex':>8} {'GFLOP/s':>7} {'%peak':>6} "
          f"{'%rec-mm':>7} {'RSS MiB (+rise)':>15}")
  if has_torch:
    head += (f" | {'torch train':>11} {'±':>4} {'torch eval':>10} {'±':>4} "
             f"{'GFLOP/s':>7} {'RSS MiB (+rise)':>15} | {'train x':>7} {'eval x':>6}")
  lines = [head, "-" * len(head)]
  for name, r in results:
    j = r["jax"]
    line = (f"{name:<{width}} {r['config']['batch_size']:>5} "
            f"{j['train_examples_per_s']:>11,.0f} "
            f"{_spread(j['train_examples_per_s_repeats']):>4} "
            f"{j['eval_examples_per_s']:>10,.0f} "
            f"{_spread(j['eval_examples_per_s_repeats']):>4} "
            f"{j['train_compile_s']:>9.2f} "
            f"{r['flops_per_example']['train'] / 1e6:>8.1f} {j['train_gflops']:>7.1f} "
            f"{100 * j['train_fraction_of_peak']:>5.1f}% "
            f"{_percent(j['train_fraction_of_recurrent_shape']):>7} "
            f"{_rss(j):>15}")
    if "torch" in r:
      t = r["torch"]
      line += (f" | {t['train_examples_per_s']:>11,.0f} "
               f"{_spread(t['train_examples_per_s_repeats']):>4} "
               f"{t['eval_examples_per_s']:>10,.0f} "
               f"{_spread(t['eval_examples_per_s_repeats']):>4} "
               f"{t['train_gflops']:>7.1f} {_rss(t):>15} | "
               f"{j['train_examples_per_s'] / t['train_examples_per_s']:>6.2f}x "
               f"{j['eval_examples_per_s'] / t['eval_examples_per_s']:>5.2f}x")
    elif has_torch:
      line += " | (no torch run)"
    lines.append(line)
  peak = results[0][1]["matmul"]["peak_gflops"] if results else float("nan")
  lines += [
      "",
      "ex/s: median of the repeats; ±: half the min-max range of the repeats, as % of "
      "the median. train x / eval x: JAX ex/s over PyTorch ex/s (>1: JAX faster).",
      "eval uses eval_batch_size (torch: no_grad). MFLOP/ex: matmul FLOPs of one "
      "training example (3x forward). compile s: JAX train step trace + compile.",
      f"%peak: training GFLOP/s over an f32 1000x400 @ 400x400 matmul in a jitted "
      f"fori_loop ({peak:.0f} GFLOP/s in this run); %rec-mm: over the model's own "
      f"recurrent matmul shape run the same way.",
      "RSS MiB: process peak resident set while that side compiled / built and "
      "warmed up (includes what the process already held; +rise: above the RSS at "
      "the start of that phase). JAX eval at eval_batch_size is part of the warm-up.",
  ]
  if any(r["config"]["model"]["name"] == "gru" for _, r in results):
    lines.append(
        "GRU: both sides run the reset-after variant, n = tanh(W_in x + b_in + r * "
        "(W_hn h + b_hn)) (mnist_jax.models.GRU; torch.nn.GRU). Flax's nn.GRUCell "
        "(reset before the matmul) is not used.")
  return "\n".join(lines)


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
  peak = matmul_gflops(1000, 400, 400, iterations=200)
  print(f"f32 matmul 1000x400 @ 400x400 in a fori_loop: {peak:.1f} GFLOP/s", flush=True)

  results = []
  for name, config in configs:
    label = describe(config)
    if name:
      label = f"{name}: {label}"
    compare = FLAGS.compare
    if compare == "torch" and config.model.name not in TORCH_MODELS:
      print(f"warning: {label}: no PyTorch equivalent; measuring JAX only.")
      compare = None
    if compare == "torch" and config.data.augment_max_shift:
      print(f"warning: {label}: PyTorch side does not reproduce shift augmentation.")
    print(f"measuring {label} ...", flush=True)
    r = measure(config, compare, FLAGS.repeats, FLAGS.min_repeat_s,
                FLAGS.warmup_steps, peak_gflops=peak, torch_threads=FLAGS.torch_threads,
                torch_device=FLAGS.torch_device)
    if "torch" in r:
      print(f"  torch {r['torch']['torch_version']}, "
            f"{r['torch']['threads']} intra-op threads")
    print(f"  {json.dumps({k: v for k, v in r['jax'].items() if 'repeats' not in k})}",
          flush=True)
    results.append((label, r))

  print()
  print(format_table(results))
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump([{"name": n, **r} for n, r in results], f, indent=2)


if __name__ == "__main__":
  from mnist_jax import hugepages
  hugepages.relaunch_with_huge_pages()  # As `mnist_jax.main` does: same allocator.
  _define_flags()
  app.run(main)
