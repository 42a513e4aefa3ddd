"""Train state, the jitted train/eval steps and the training loop.

`train(config, workdir)` trains into a workdir, resuming from its latest checkpoint:

    WORKDIR/config.json          the resolved config (same nesting as the ConfigDict)
    WORKDIR/metrics.jsonl        one JSON object per logged event (train/val metrics)
    WORKDIR/tensorboard/         the same metrics as TensorBoard summaries
    WORKDIR/permutation.npy      the pixel permutation (permuted_pixels only)
    WORKDIR/checkpoints/<step>/  Orbax checkpoints (see `checkpoints.py`)
"""

import collections
import functools
import json
import math
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

from absl import logging
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from mnist_jax import checkpoints
from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import models
from mnist_jax.errors import NonFiniteError, WorkdirError

Batch = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """Flax TrainState plus the run's base RNG key (per-step keys are folded in)."""
  rng: jax.Array


# ----------------------------------------------------------------------------------
# Optimizer and state.
# ----------------------------------------------------------------------------------
def create_learning_rate_schedule(opt: ml_collections.ConfigDict,
                                  steps_per_epoch: int,
                                  num_epochs: int) -> optax.Schedule:
  total = steps_per_epoch * num_epochs
  peak = opt.learning_rate
  end = peak * opt.end_learning_rate_factor
  warmup = int(opt.warmup_epochs * steps_per_epoch)
  if opt.schedule == "constant":
    return optax.constant_schedule(peak)
  if opt.schedule == "cosine":
    return optax.cosine_decay_schedule(peak, total, alpha=opt.end_learning_rate_factor)
  if opt.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1),
                                              end_value=end)
  # onecycle: warmup_epochs sets where the peak sits (default 30% of training).
  pct = warmup / total if warmup else 0.3
  return optax.cosine_onecycle_schedule(total, peak, pct_start=pct)


def create_optimizer(opt: ml_collections.ConfigDict, steps_per_epoch: int,
                     num_epochs: int) -> optax.GradientTransformation:
  lr = create_learning_rate_schedule(opt, steps_per_epoch, num_epochs)
  if opt.name == "adam":
    tx = optax.adam(lr)
  elif opt.name == "adamw":
    tx = optax.adamw(lr, weight_decay=opt.weight_decay)
  else:
    tx = optax.sgd(lr, momentum=opt.momentum, nesterov=True)
  if opt.grad_clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array,
                       steps_per_epoch: int) -> TrainState:
  """Initialises the model and optimizer. `rng` is a raw uint32 key."""
  model = models.build_model(config.model)
  params_rng, state_rng = jax.random.split(rng)
  dummy = jnp.zeros((1, *data.input_shape(config.data)), jnp.float32)
  params = model.init(params_rng, dummy, train=False)["params"]
  return TrainState.create(
      apply_fn=model.apply, params=params,
      tx=create_optimizer(config.optimizer, steps_per_epoch, config.num_epochs),
      rng=state_rng)


# ----------------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------------
def _all_finite(tree: Any) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite (a scalar bool array)."""
  checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def loss_and_gradients(params: Any, rng: jax.Array, batch: Batch, *,
                       apply_fn: Callable,
                       preprocess: Callable[[jax.Array], jax.Array],
                       label_smoothing: float = 0.0,
                       augment_max_shift: int = 0) -> tuple[Any, dict]:
  """Gradients of the mean loss over `batch`, and that batch's {loss, accuracy}.

  Args:
    params: model parameters.
    rng: this step's key (shift augmentation and dropout draw from it).
    batch: uint8 images [batch, 28, 28] and integer labels [batch].
    apply_fn: the model's `apply`.
    preprocess: images -> model inputs [batch, time, features].
    label_smoothing: optax.smooth_labels' alpha.
    augment_max_shift: random shift of up to this many pixels (0: none).

  Returns:
    (gradients shaped like `params`, {"loss": scalar, "accuracy": scalar}).
  """
  shift_rng, dropout_rng = jax.random.split(rng)
  images = data.random_shift(shift_rng, batch["image"], augment_max_shift)
  inputs = preprocess(images)
  labels = batch["label"]

  def loss_fn(params):
    logits = apply_fn({"params": params}, inputs, train=True,
                      rngs={"dropout": dropout_rng})
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                  label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return grads, {"loss": loss,
                 "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def apply_gradients(state: TrainState, grads: Any,
                    metrics: dict) -> tuple[TrainState, dict]:
  """The optimizer update, unless anything is not finite; adds grad_norm and finite.

  A step whose loss, gradients or updated state are not finite leaves the state
  unchanged (the caller stops the run); `finite` in the metrics reports it.

  Args:
    state: the train state (its step, params and optimizer state are updated).
    grads: gradients of the mean loss, shaped like `state.params`.
    metrics: {"loss", "accuracy"} of the batch the gradients came from.

  Returns:
    (new state, metrics plus "grad_norm" and "finite").
  """
  grad_norm = optax.global_norm(grads)
  new_state = state.apply_gradients(grads=grads)
  # Finite gradients can still give a non-finite update (e.g. a huge step size).
  finite = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
            & _all_finite((new_state.params, new_state.opt_state)))
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                           new_state, state)
  return new_state, {**metrics, "grad_norm": grad_norm, "finite": finite}


def train_step(state: TrainState, batch: Batch, *,
               preprocess: Callable[[jax.Array], jax.Array],
               label_smoothing: float = 0.0,
               augment_max_shift: int = 0) -> tuple[TrainState, dict]:
  """One optimizer step on a batch of uint8 images [batch, 28, 28] and labels.

  Metrics: loss, accuracy, grad_norm, and `finite` (False: the state was left
  unchanged because something was not finite; see `apply_gradients`).
  """
  grads, metrics = loss_and_gradients(
      state.params, jax.random.fold_in(state.rng, state.step), batch,
      apply_fn=state.apply_fn, preprocess=preprocess,
      label_smoothing=label_smoothing, augment_max_shift=augment_max_shift)
  return apply_gradients(state, grads, metrics)


def eval_step(params: Any, batch: Batch, *, apply_fn: Callable,
              preprocess: Callable[[jax.Array], jax.Array]) -> dict:
  """Logits [batch, classes] and per-example loss [batch] for a (padded) batch."""
  logits = apply_fn({"params": params}, preprocess(batch["image"]), train=False)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return {"logits": logits, "loss": loss}


# ----------------------------------------------------------------------------------
# Devices.
# ----------------------------------------------------------------------------------
class Placement:
  """A 1-D `data` mesh over all devices: batches sharded, state replicated.

  The placement for accelerators and for several processes (gradients are averaged
  by XLA's all-reduce). Several CPU devices in one process use `CpuReplicas`
  instead (see `make_placement`).
  """

  def __init__(self):
    # Auto axes: XLA propagates shardings through the model (no explicit-mode rules).
    self.mesh = jax.make_mesh((jax.device_count(),), ("data",),
                              axis_types=(jax.sharding.AxisType.Auto,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P("data"))
    # Several CPU devices in one process: XLA's in-process all-reduce rendezvous can
    # abort ("Expected 2 threads to join, only 1 arrived") when steps are dispatched
    # back to back; waiting for each step avoids it (docs/distributed.md).
    self.sync_every_step = (jax.default_backend() == "cpu" and
                            jax.local_device_count() > 1)

  def describe(self) -> str:
    """One line for the log: which devices and how the batch is split."""
    if jax.device_count() == 1:
      return f"one device ({jax.devices()[0].platform})"
    return (f"data mesh over {jax.device_count()} {jax.devices()[0].platform} devices "
            f"({jax.process_count()} processes)")

  def check_batch_size(self, batch_size: int, name: str) -> None:
    from mnist_jax.errors import ConfigError
    n = jax.device_count()
    if batch_size % n:
      raise ConfigError(f"config.{name}={batch_size} must be divisible by the "
                        f"{n} devices of the data mesh ({jax.process_count()} "
                        f"processes x {jax.local_device_count()} devices); use a "
                        f"multiple of {n}.")

  def put_batch(self, local_batch: dict) -> Batch:
    return {k: jax.make_array_from_process_local_data(self.batch, v)
            for k, v in local_batch.items()}

  def make_train_step(self, apply_fn: Callable, **step_options) -> Callable:
    """`train_step` jitted with the mesh shardings (see `make_train_step`)."""
    del apply_fn  # `train_step` reads it from the state.
    step = jax.jit(functools.partial(train_step, **step_options),
                   in_shardings=(self.replicated, self.batch),
                   out_shardings=(self.replicated, self.replicated),
                   donate_argnums=0)
    # For the benchmark: compile ahead of time, memory analysis of the executable.
    step.compile = lambda state, batch: step.lower(state, batch).compile()
    return step

  def make_eval_step(self, apply_fn: Callable, preprocess: Callable) -> Callable:
    """`eval_step` jitted with the mesh shardings (outputs replicated)."""
    return jax.jit(functools.partial(eval_step, apply_fn=apply_fn,
                                     preprocess=preprocess),
                   in_shardings=(self.replicated, self.batch),
                   out_shardings=self.replicated)


class CpuReplicas:
  """Data parallelism over the CPU devices of one process, without XLA collectives.

  XLA runs each of these recurrent models' small per-step matmuls on one core (a
  [100, 100] @ [100, 400] product is too small to split), so a second core sits idle;
  PyTorch's oneDNN threads use it. Here the batch is split into contiguous shards,
  one per CPU device (`jax_num_cpu_devices`, set by `main`); each device computes its
  shard's gradients concurrently, device 0 averages them (weighted by shard size, so
  the result is the full batch's mean-loss gradient) and applies the optimizer, and
  the new parameters are copied back to the other devices for the next step.

  Why not the `data` mesh of `Placement`: its in-process all-reduce can deadlock on
  CPU when steps are dispatched back to back, and waiting for each step halved the
  speed (../shared/notes/cpu-speed-facts.md). Measured here (2 cores, seed LSTM,
  batch 100, `experiments/benchmark.py --cpu_devices=1` / `2`): 6,795 -> 9,243
  training examples/s.

  Shards need not be equal: any batch size works, and a batch is split across at
  most `batch_size // MIN_SHARD` devices. The state lives on device 0, so checkpoints
  are the same as a one-device run's. Shard i > 0 folds its index into the step's
  key, so with shift augmentation or dropout a split batch draws differently from a
  one-device run (and sums always differ in float round-off): results depend on the
  number of shards, hence on the machine's core count unless --cpu_devices is set.
  """
  MIN_SHARD = 16  # Smaller shards do not pay for their dispatch and copies.

  def __init__(self, devices: list):
    self.devices = list(devices)
    self.replicated = jax.sharding.SingleDeviceSharding(self.devices[0])
    self.sync_every_step = False

  def describe(self) -> str:
    """One line for the log: which devices and how the batch is split."""
    return (f"{len(self.devices)} CPU devices (CpuReplicas: each batch split across "
            f"them, shards of at least {self.MIN_SHARD})")

  def check_batch_size(self, batch_size: int, name: str) -> None:
    del batch_size, name  # Any size splits into shards.

  def put_batch(self, local_batch: dict) -> list[Batch]:
    """Contiguous shards of the batch, shard i on device i (fewer for small batches)."""
    size = len(next(iter(local_batch.values())))
    num = max(1, min(len(self.devices), size // self.MIN_SHARD))
    bounds = [size * i // num for i in range(num + 1)]
    shards = [{k: v[a:b] for k, v in local_batch.items()}
              for a, b in zip(bounds, bounds[1:])]
    return jax.device_put(shards, self.devices[:num])  # One call for all arrays.

  def _replicate(self, tree: Any, num: int) -> list:
    """`tree` (on device 0) and copies of it on devices 1..num-1."""
    return [tree] + [jax.device_put(tree, d) for d in self.devices[1:num]]

  def make_train_step(self, apply_fn: Callable, **step_options) -> Callable:
    """Per-shard gradients on every device, averaged and applied on device 0."""
    def shard_gradients(params, rng, step, replica, shard):
      # Shard 0 draws with the one-device key, so a batch small enough for one
      # shard trains exactly as on one device; shard i > 0 folds in i.
      rng = jax.random.fold_in(rng, step)
      rng = jnp.where(replica == 0, rng, jax.random.fold_in(rng, replica))
      return loss_and_gradients(params, rng, shard, apply_fn=apply_fn,
                                **step_options)

    def combine_and_apply(state, grads, metrics, weights):
      average = lambda *xs: sum(w * x for w, x in zip(weights, xs))
      return apply_gradients(state, jax.tree.map(average, *grads),
                             jax.tree.map(average, *metrics))

    jit_gradients = jax.jit(shard_gradients)
    jit_apply = jax.jit(combine_and_apply, donate_argnums=0,
                        static_argnames="weights")

    def step(state: TrainState, shards: list[Batch]) -> tuple[TrainState, dict]:
      sizes = [len(shard["label"]) for shard in shards]
      inputs = self._replicate((state.params, state.rng, state.step), len(shards))
      # Dispatched back to back: the devices run concurrently.
      outputs = [jit_gradients(*inputs[i], i, shard) for i, shard in enumerate(shards)]
      outputs = [outputs[0]] + [jax.device_put(o, self.devices[0]) for o in outputs[1:]]
      weights = tuple(n / sum(sizes) for n in sizes)
      return jit_apply(state, [g for g, _ in outputs], [m for _, m in outputs],
                       weights=weights)

    def compile_step(state, shards):
      """Compiles ahead of time; returns one shard's gradient executable."""
      # Compiles the rest by running it once, on a copy (the step donates its state).
      jax.block_until_ready(step(jax.tree.map(jnp.copy, state), shards))
      return jit_gradients.lower(state.params, state.rng, state.step, 0,
                                 shards[0]).compile()

    step.compile = compile_step
    return step

  def make_eval_step(self, apply_fn: Callable, preprocess: Callable) -> Callable:
    """`eval_step` on every shard at once; `predict` joins the shards' outputs."""
    jitted = jax.jit(functools.partial(eval_step, apply_fn=apply_fn,
                                       preprocess=preprocess))

    copies = {}  # Parameters on every device, kept while the same params come back.

    def run(params: Any, shards: list[Batch]) -> dict:
      """{logits, loss}, each a list of per-shard device arrays in row order."""
      if copies.get("of") is not params:
        copies.update(of=params, on=self._replicate(params, len(self.devices)))
      outputs = [jitted(p, s) for p, s in zip(copies["on"], shards)]
      return {k: [o[k] for o in outputs] for k in outputs[0]}

    return run


def make_placement() -> Placement | CpuReplicas:
  """`CpuReplicas` for several CPU devices in one process, else the `data` mesh."""
  if (jax.default_backend() == "cpu" and jax.process_count() == 1
      and jax.local_device_count() > 1):
    return CpuReplicas(jax.local_devices())
  return Placement()


def make_train_step(placement: Placement | CpuReplicas, apply_fn: Callable,
                    preprocess: Callable, label_smoothing: float = 0.0,
                    augment_max_shift: int = 0) -> Callable:
  """`train_step` for `placement`: (state, batch) -> (state, metrics), state donated.

  `batch` is what `placement.put_batch` returns. The callable also has
  `.compile(state, batch)` (ahead-of-time compilation, for the benchmark).
  """
  return placement.make_train_step(apply_fn, preprocess=preprocess,
                                   label_smoothing=label_smoothing,
                                   augment_max_shift=augment_max_shift)


def make_eval_step(apply_fn: Callable, preprocess: Callable,
                   placement: Placement | CpuReplicas) -> Callable:
  """`eval_step` for `placement`: (params, batch) -> {logits, loss} (all rows).

  With `CpuReplicas` each value is a list of per-shard arrays, in row order.
  """
  return placement.make_eval_step(apply_fn, preprocess)


def predict(params: Any, jit_eval_step: Callable, split: data.Split, batch_size: int,
            placement: Placement | CpuReplicas
            ) -> tuple[np.ndarray, np.ndarray]:
  """Logits [n, classes] and losses [n] for every example of `split`, in order.

  The last batch is padded to `batch_size` (one compilation) and the padding dropped.
  Up to `_EVAL_IN_FLIGHT` batches are dispatched before the oldest is fetched, so the
  devices never wait for the host.
  """
  placement.check_batch_size(batch_size, "eval_batch_size")  # Also for --mode=eval.
  rows = data.process_slice(batch_size)
  logits, losses = [], []
  in_flight = collections.deque()

  def fetch_oldest():
    out, mask = in_flight.popleft()
    out = jax.device_get(out)  # Replicated output: every process has all rows.
    for name, kept in (("logits", logits), ("loss", losses)):
      value = out[name]  # CpuReplicas: a list of shards.
      value = np.concatenate(value) if isinstance(value, list) else np.asarray(value)
      kept.append(value[mask])

  for batch in data.eval_batches(split, batch_size):
    mask = batch.pop("mask")
    in_flight.append((jit_eval_step(params, placement.put_batch(
        {k: v[rows] for k, v in batch.items()})), mask))
    if len(in_flight) > _EVAL_IN_FLIGHT:
      fetch_oldest()
  while in_flight:
    fetch_oldest()
  return np.concatenate(logits), np.concatenate(losses)


_EVAL_IN_FLIGHT = 2


# ----------------------------------------------------------------------------------
# Workdir files.
# ----------------------------------------------------------------------------------
# Keys that define what a workdir's checkpoints are; a resumed run must match them.
_IDENTITY_KEYS = ("seed", "batch_size", "model", "data.name", "data.sequence",
                  "data.resize", "data.permutation", "data.permutation_seed",
                  "data.validation_size", "data.standardize")


def _lookup(d: dict, dotted: str):
  for part in dotted.split("."):
    d = d.get(part) if isinstance(d, dict) else None
  return d


def write_atomic(path: str, text: str) -> None:
  """Writes via a temporary file and rename, so a kill never leaves half a file."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Creates the workdir, refusing one that holds a different experiment."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  new = config.to_dict()
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    for key in _IDENTITY_KEYS:
      if _lookup(old, key) != _lookup(new, key):
        raise WorkdirError(
            f"{workdir} holds a run with {key}={_lookup(old, key)!r}, not "
            f"{_lookup(new, key)!r}; use a new --workdir or the original config.")
  if jax.process_index() == 0:
    write_atomic(path, config_lib.to_json(config))


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise WorkdirError(f"{workdir} has no config.json; is it a training workdir?")
  with open(path) as f:
    return config_lib.from_json(f.read())


class MetricWriter:
  """Appends metrics to WORKDIR/metrics.jsonl and TensorBoard (process 0 only).

  TensorBoard events are written with the `tensorboard` package's record writer and
  protos (what torch.utils.tensorboard uses), not tf.summary: importing TensorFlow
  costs ~6 s of start-up here, and nothing else in a run needs it once the data is
  cached. Each write is flushed; a killed run leaves at most a truncated last
  record, which TensorBoard skips.
  """

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    tb_dir = os.path.join(workdir, "tensorboard")
    os.makedirs(tb_dir, exist_ok=True)
    # One file per writer, named as TensorBoard expects; a resumed run adds a file.
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.{time.monotonic_ns()}")
    try:
      self._events_file = open(os.path.join(tb_dir, name), "xb")  # Never truncate.
    except OSError:
      self._jsonl.close()
      raise
    self._events = RecordWriter(self._events_file)
    self._write_event(self._event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write_event(self, event) -> None:
    self._events.write(event.SerializeToString())
    self._events.flush()

  def write(self, step: int, prefix: str, values: dict, **extra) -> None:
    if not self.enabled:
      return
    record = {"step": step, "split": prefix, **extra,
              **{k: float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    summary = self._summary(value=[
        self._summary.Value(tag=f"{prefix}/{k}", simple_value=float(v))
        for k, v in values.items()])
    self._write_event(self._event(wall_time=time.time(), step=step, summary=summary))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events_file.close()


# ----------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------
class _StopSignal:
  """Turns SIGTERM/SIGINT into a stop decision taken between steps (preemption notice).

  With one process the decision is the local flag, checked after every step. With
  several, a signal may reach only some of them (a pod scheduler preempting one
  host), and a process that stops alone leaves the others blocked in the next
  collective. So every `check_every` steps (and at epoch ends) all processes share
  their flags in one small all-gather and stop together, at the same step.
  """

  def __init__(self, check_every: int = 10):
    self.received = None
    self.check_every = check_every
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:  # Second signal: stop now.
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name

  def decision(self, step: int, epoch_end: bool) -> str | None:
    """The signal all processes stop for after `step`, or None to go on.

    Every process must call this after every step: with several processes it is a
    collective at the steps where it checks.
    """
    if jax.process_count() == 1:
      return self.received
    if step % self.check_every and not epoch_end:
      return None
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(
        np.int32(self.received is not None))
    if not np.any(flags):
      return None
    first = int(np.argmax(flags))
    return self.received or f"a signal to process {first}"

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def data_pipeline(config: ml_collections.ConfigDict, workdir: str | None = None):
  """Loads the splits and builds the on-device preprocessing for `config`.

  With a workdir, the permutation saved there is used (and saved on first use), so
  a run is evaluated with exactly the sequence order it was trained on.
  """
  splits = data.load_splits(config)
  mean, std = 0.0, 1.0
  if config.data.standardize:
    pixels = splits["train"].images.astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
  perm = data.permutation(config.data)
  if perm is not None and workdir is not None:
    path = os.path.join(workdir, "permutation.npy")
    if os.path.exists(path):
      perm = np.load(path)
    elif jax.process_index() == 0:
      np.save(path, perm)
  return splits, data.make_preprocess(config.data, mean, std, perm)


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the experiment in `workdir`.

  Args:
    config: the experiment config (resolved and validated here).
    workdir: where config, metrics and checkpoints live.

  Returns:
    {"completed": bool, "step": int, "stopped_by": signal name or None,
     "best_step": int | None, "val_accuracy": float | None}.

  Raises:
    UserError subclasses for bad config, data, workdir or non-finite training.
  """
  config = config_lib.resolve(config)
  placement = make_placement()
  logging.info("Devices: %s.", placement.describe())
  placement.check_batch_size(config.batch_size, "batch_size")
  placement.check_batch_size(config.eval_batch_size, "eval_batch_size")
  prepare_workdir(config, workdir)
  splits, preprocess = data_pipeline(config, workdir)
  train_split = splits["train"]
  order = data.TrainOrder(config.seed, len(train_split), config.batch_size)
  spe = order.steps_per_epoch
  total_steps = spe * config.num_epochs

  state = create_train_state(config, jax.random.PRNGKey(config.seed), spe)
  state = jax.device_put(state, placement.replicated)
  store = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                      keep=config.keep_checkpoints)
  history = {"best_val_accuracy": None, "epochs_since_best": 0}
  latest = store.latest_step()
  if latest is not None:
    state, meta = store.restore(latest, state)
    history.update(meta.get("history", {}))
    logging.info("Resumed from checkpoint at step %d (epoch %.2f).", latest,
                 latest / spe)
  start_step = int(jax.device_get(state.step))
  patience = config.early_stopping_patience
  if patience and history["epochs_since_best"] >= patience:
    # This workdir already early-stopped: running the command again must not train on.
    logging.info("Early-stopped at step %d (no validation gain for %d epochs); "
                 "nothing left to train.", start_step, history["epochs_since_best"])
    total_steps = start_step

  jit_train_step = make_train_step(placement, state.apply_fn, preprocess,
                                   config.optimizer.label_smoothing,
                                   config.data.augment_max_shift)

  jit_eval_step = make_eval_step(state.apply_fn, preprocess, placement)
  writer = MetricWriter(workdir)
  pending: list[dict] = []  # Device metrics since the last flush (no per-step sync).
  window_start = time.perf_counter()
  window_step = start_step

  def flush(step: int) -> None:
    """Fetches pending metrics; stops the run if any step was not finite."""
    nonlocal pending, window_start, window_step
    if not pending:
      return
    fetched = jax.device_get(pending)
    first_step = step - len(fetched)
    for i, m in enumerate(fetched):
      if not bool(m["finite"]):
        raise NonFiniteError(
            f"non-finite loss, gradient or update at step {first_step + i + 1} (loss "
            f"{float(m['loss'])}, grad norm {float(m['grad_norm'])}); the state "
            f"was not updated and nothing was saved. The last good checkpoint is "
            f"step {store.latest_step()}. Lower optimizer.learning_rate or set "
            f"optimizer.grad_clip_norm.")
    means = {k: float(np.mean([m[k] for m in fetched]))
             for k in ("loss", "accuracy", "grad_norm")}
    now = time.perf_counter()
    rate = (step - window_step) * config.batch_size / max(now - window_start, 1e-9)
    eta = (total_steps - step) * config.batch_size / max(rate, 1e-9)
    writer.write(step, "train", {**means, "examples_per_sec": rate},
                 epoch=step / spe)
    logging.info("step %d/%d (epoch %.2f) loss %.4f acc %.2f%% | %s ex/s | ETA %s",
                 step, total_steps, step / spe, means["loss"],
                 100 * means["accuracy"], f"{rate:,.0f}", _format_duration(eta))
    pending = []
    window_start, window_step = now, step

  def save(step: int, val_metrics: dict | None = None, force: bool = False) -> None:
    meta = {"step": step, "epoch": step / spe, "history": dict(history),
            "val": val_metrics}
    metrics = ({checkpoints.BEST_METRIC: val_metrics["accuracy"]}
               if val_metrics else None)
    store.save(step, state, meta, metrics=metrics, force=force)

  def validate_now(step: int) -> dict | None:
    if not len(splits["validation"]):
      return None
    logits, losses = predict(state.params, jit_eval_step, splits["validation"],
                             config.eval_batch_size, placement)
    acc = float(np.mean(logits.argmax(-1) == splits["validation"].labels))
    metrics = {"accuracy": acc, "loss": float(losses.mean())}
    writer.write(step, "validation", metrics, epoch=step / spe)
    logging.info("epoch %d validation: accuracy %.2f%%, loss %.4f", step // spe,
                 100 * acc, metrics["loss"])
    return metrics

  progress = _progress_bar(total_steps, start_step)
  stopped_by = None
  step = start_step
  try:
    with _StopSignal() as stop:
      for batch in data.train_batches(train_split, order, start_step, total_steps,
                                      placement.put_batch):
        state, metrics = jit_train_step(state, batch)
        if placement.sync_every_step:
          jax.block_until_ready(state)
        pending.append(metrics)
        step += 1
        progress.update(1)
        epoch_end = step % spe == 0
        stopping = stop.decision(step, epoch_end)
        if step % config.log_every_steps == 0 or epoch_end or stopping:
          flush(step)
        if stopping and not epoch_end:
          stopped_by = stopping
          save(step, force=True)
          break
        if epoch_end:
          val = validate_now(step)
          if val is not None:
            best = history["best_val_accuracy"]
            if best is None or val["accuracy"] > best:
              history["best_val_accuracy"] = val["accuracy"]
              history["epochs_since_best"] = 0
            else:
              history["epochs_since_best"] += 1
          save(step, val, force=bool(stopping))
          if patience and history["epochs_since_best"] >= patience:
            logging.info("Early stopping: no validation gain for %d epochs.", patience)
            break
          if stopping:  # Stopped at an epoch end: validated and saved first.
            stopped_by = stopping
            break
        elif config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
          flush(step)
          save(step)
      else:
        flush(step)
      if step == start_step and store.latest_step() is None:
        save(step, validate_now(step))  # Zero-step run: still leave a checkpoint.
  finally:
    progress.close()
    writer.close()
    store.wait()  # Surfaces async save errors, even when leaving on an exception.
  result = {"completed": stopped_by is None, "step": step, "stopped_by": stopped_by,
            "best_step": store.best_step(),
            "val_accuracy": history["best_val_accuracy"]}
  store.close()
  return result


def _progress_bar(total: int, initial: int):
  """A tqdm bar on interactive terminals; the periodic log lines serve elsewhere."""
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
              disable=not sys.stderr.isatty(), leave=False)
