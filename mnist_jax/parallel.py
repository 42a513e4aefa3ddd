"""Where state and batches live, and the jitted steps for that placement.

Two placements share one small interface (`Placement`):

* `MeshPlacement`: a 1-D `data` mesh over every device of the job (accelerators,
  several processes); batches sharded, state replicated, gradients averaged by XLA.
* `CpuReplicas`: several CPU devices of one process, without XLA collectives.

`make_placement()` picks one. The loop and evaluation only call `put_state`,
`put_batch`, `train_step(...)` and `eval_step(...)`; `predict` runs an eval step over
every example of a split.
"""

import abc
import collections
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from mnist_jax import data
from mnist_jax import steps
from mnist_jax.errors import ConfigError

Batch = steps.Batch
EVAL_IN_FLIGHT = 2  # Eval batches dispatched before the oldest is fetched.


class TrainStep(abc.ABC):
  """(state, placed batch) -> (state, metrics); the state is donated."""

  @abc.abstractmethod
  def __call__(self, state: steps.TrainState, batch: Any) -> tuple[Any, dict]:
    ...

  @abc.abstractmethod
  def compile(self, state: steps.TrainState, batch: Any) -> Any:
    """Compiles ahead of time; returns a compiled executable (for memory analysis)."""


class EvalStep(abc.ABC):
  """(params, placed batch) -> outputs on the devices; `fetch` brings them home."""

  @abc.abstractmethod
  def __call__(self, params: Any, batch: Any) -> Any:
    ...

  @abc.abstractmethod
  def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
    """{"logits": [batch, classes], "loss": [batch]} as host arrays, all rows."""


class Placement(abc.ABC):
  """How a run lays its state and batches over the devices."""

  @abc.abstractmethod
  def describe(self) -> str:
    """One line for the log: which devices and how the batch is split."""

  def check_batch_size(self, batch_size: int, name: str) -> None:
    """Raises ConfigError if `config.<name>` cannot be split over the devices."""
    del batch_size, name

  @property
  @abc.abstractmethod
  def state_sharding(self) -> jax.sharding.Sharding:
    """Where the train state and parameters live."""

  def put_state(self, tree: Any) -> Any:
    """The train state (or params) where the steps expect it."""
    return jax.device_put(tree, self.state_sharding)

  @abc.abstractmethod
  def put_batch(self, local_batch: dict[str, np.ndarray]) -> Any:
    """This process's rows of a host batch, placed for the steps."""

  @abc.abstractmethod
  def train_step(self, apply_fn: Callable, **step_options) -> TrainStep:
    """`steps.train_step` for this placement (`step_options` are its keywords)."""

  @abc.abstractmethod
  def eval_step(self, apply_fn: Callable, preprocess: steps.Preprocess) -> EvalStep:
    """`steps.eval_step` for this placement."""


# ----------------------------------------------------------------------------------
# A data mesh.
# ----------------------------------------------------------------------------------
class _JitTrainStep(TrainStep):

  def __init__(self, jitted: Callable, sync: bool):
    self._jitted, self._sync = jitted, sync

  def __call__(self, state, batch):
    out = self._jitted(state, batch)
    if self._sync:
      jax.block_until_ready(out[0])
    return out

  def compile(self, state, batch):
    return self._jitted.lower(state, batch).compile()


class _JitEvalStep(EvalStep):

  def __init__(self, jitted: Callable):
    self._jitted = jitted

  def __call__(self, params, batch):
    return self._jitted(params, batch)

  def fetch(self, outputs):
    # Replicated outputs: every process has all rows.
    return {k: np.asarray(v) for k, v in jax.device_get(outputs).items()}


class MeshPlacement(Placement):
  """A 1-D `data` mesh over all devices: batches sharded, state replicated.

  For accelerators and several processes (gradients averaged by XLA's all-reduce).
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
    self._sync = jax.default_backend() == "cpu" and jax.local_device_count() > 1

  def describe(self):
    if jax.device_count() == 1:
      return f"one device ({jax.devices()[0].platform})"
    return (f"data mesh over {jax.device_count()} {jax.devices()[0].platform} devices "
            f"({jax.process_count()} processes)")

  def check_batch_size(self, batch_size, name):
    n = jax.device_count()
    if batch_size % n:
      raise ConfigError(f"config.{name}={batch_size} must be divisible by the "
                        f"{n} devices of the data mesh ({jax.process_count()} "
                        f"processes x {jax.local_device_count()} devices); use a "
                        f"multiple of {n}.")

  @property
  def state_sharding(self):
    return self.replicated

  def put_batch(self, local_batch):
    return {k: jax.make_array_from_process_local_data(self.batch, v)
            for k, v in local_batch.items()}

  def train_step(self, apply_fn, **step_options):
    del apply_fn  # `steps.train_step` reads it from the state.
    return _JitTrainStep(
        jax.jit(functools.partial(steps.train_step, **step_options),
                in_shardings=(self.replicated, self.batch),
                out_shardings=(self.replicated, self.replicated), donate_argnums=0),
        self._sync)

  def eval_step(self, apply_fn, preprocess):
    return _JitEvalStep(jax.jit(
        functools.partial(steps.eval_step, apply_fn=apply_fn, preprocess=preprocess),
        in_shardings=(self.replicated, self.batch), out_shardings=self.replicated))


# ----------------------------------------------------------------------------------
# CPU devices of one process.
# ----------------------------------------------------------------------------------
class CpuReplicas(Placement):
  """Data parallelism over the CPU devices of one process, without XLA collectives.

  XLA runs these models' small per-step matmuls ([100, 100] @ [100, 400]) on one
  core, so on a multi-core CPU the other cores would sit idle. Here each batch is split
  into contiguous shards, one per CPU device (`jax_num_cpu_devices`, set by
  `distributed.set_cpu_devices`); each device computes its shard's gradients
  concurrently, device 0 averages them (weighted by shard size: the full batch's
  mean-loss gradient) and applies the optimizer, and the new parameters are copied
  back to the other devices.

  Kept by hand rather than the `data` mesh because XLA's in-process CPU all-reduce
  can deadlock when steps are dispatched back to back, and waiting for each step
  halves the speed (docs/distributed.md, docs/performance.md).

  Shards need not be equal: any batch size works, split across at most
  `batch_size // MIN_SHARD` devices. The state lives on device 0, so checkpoints are
  those of a one-device run. Shard 0 draws with the one-device key; shard i > 0 folds
  its index into the step's key, so with shift augmentation or dropout a split batch
  draws differently from a one-device run (and float sums differ in round-off):
  results depend on the number of shards, hence on --cpu_devices.
  """
  MIN_SHARD = 16  # Smaller shards do not pay for their dispatch and copies.

  def __init__(self, devices: list):
    self.devices = list(devices)

  def describe(self):
    return (f"{len(self.devices)} CPU devices (CpuReplicas: each batch split across "
            f"them, shards of at least {self.MIN_SHARD})")

  @property
  def state_sharding(self):
    return jax.sharding.SingleDeviceSharding(self.devices[0])

  def put_batch(self, local_batch):
    """Contiguous shards of the batch, shard i on device i (fewer for small batches)."""
    size = len(next(iter(local_batch.values())))
    num = max(1, min(len(self.devices), size // self.MIN_SHARD))
    bounds = [size * i // num for i in range(num + 1)]
    shards = [{k: v[a:b] for k, v in local_batch.items()}
              for a, b in zip(bounds, bounds[1:])]
    return jax.device_put(shards, self.devices[:num])  # One call for all arrays.

  def replicate(self, tree: Any, num: int) -> list:
    """`tree` (on device 0) and copies of it on devices 1..num-1."""
    return [tree] + [jax.device_put(tree, d) for d in self.devices[1:num]]

  def train_step(self, apply_fn, **step_options):
    return _ReplicaTrainStep(self, apply_fn, step_options)

  def eval_step(self, apply_fn, preprocess):
    return _ReplicaEvalStep(self, jax.jit(functools.partial(
        steps.eval_step, apply_fn=apply_fn, preprocess=preprocess)))


class _ReplicaTrainStep(TrainStep):
  """Per-shard gradients on every device, averaged and applied on device 0."""

  def __init__(self, replicas: CpuReplicas, apply_fn: Callable, step_options: dict):
    self._replicas = replicas

    def shard_gradients(params, rng, step, replica, shard):
      # Shard 0 draws with the one-device key, so a batch small enough for one
      # shard trains exactly as on one device; shard i > 0 folds in i.
      rng = jax.random.fold_in(rng, step)
      rng = jnp.where(replica == 0, rng, jax.random.fold_in(rng, replica))
      return steps.loss_and_gradients(params, rng, shard, apply_fn=apply_fn,
                                      **step_options)

    def combine_and_apply(state, grads, metrics, weights):
      average = lambda *xs: sum(w * x for w, x in zip(weights, xs))
      return steps.apply_gradients(state, jax.tree.map(average, *grads),
                                   jax.tree.map(average, *metrics))

    self._gradients = jax.jit(shard_gradients)
    self._apply = jax.jit(combine_and_apply, donate_argnums=0,
                          static_argnames="weights")

  def __call__(self, state, shards):
    devices = self._replicas.devices
    sizes = [len(shard["label"]) for shard in shards]
    inputs = self._replicas.replicate((state.params, state.rng, state.step),
                                      len(shards))
    # Dispatched back to back: the devices run concurrently.
    outputs = [self._gradients(*inputs[i], i, shard) for i, shard in enumerate(shards)]
    outputs = [outputs[0]] + [jax.device_put(o, devices[0]) for o in outputs[1:]]
    weights = tuple(n / sum(sizes) for n in sizes)
    return self._apply(state, [g for g, _ in outputs], [m for _, m in outputs],
                       weights=weights)

  def compile(self, state, shards):
    """Runs one step on a copy (compiling the rest); returns one shard's executable."""
    jax.block_until_ready(self(jax.tree.map(jnp.copy, state), shards))
    return self._gradients.lower(state.params, state.rng, state.step, 0,
                                 shards[0]).compile()


class _ReplicaEvalStep(EvalStep):
  """The eval step on every shard at once; parameters copied once per params object."""

  def __init__(self, replicas: CpuReplicas, jitted: Callable):
    self._replicas, self._jitted = replicas, jitted
    self._copies_of, self._copies = None, None

  def __call__(self, params, shards):
    if self._copies_of is not params:  # Validation reuses one params object per epoch.
      self._copies_of = params
      self._copies = self._replicas.replicate(params, len(self._replicas.devices))
    return [self._jitted(p, s) for p, s in zip(self._copies, shards)]

  def fetch(self, outputs):
    outputs = jax.device_get(outputs)
    return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def make_placement() -> Placement:
  """`CpuReplicas` for several CPU devices in one process, else the `data` mesh."""
  if (jax.default_backend() == "cpu" and jax.process_count() == 1
      and jax.local_device_count() > 1):
    return CpuReplicas(jax.local_devices())
  return MeshPlacement()


def predict(placement: Placement, eval_step: EvalStep, params: Any, split: data.Split,
            batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Logits [n, classes] and losses [n] for every example of `split`, in order.

  The last batch is padded to `batch_size` (one compilation) and the padding dropped.
  Up to `EVAL_IN_FLIGHT` batches are dispatched before the oldest is fetched, so the
  devices never wait for the host.
  """
  placement.check_batch_size(batch_size, "eval_batch_size")
  rows = data.process_slice(batch_size)
  logits, losses = [], []
  in_flight = collections.deque()

  def fetch_oldest():
    outputs, mask = in_flight.popleft()
    fetched = eval_step.fetch(outputs)
    logits.append(fetched["logits"][mask])
    losses.append(fetched["loss"][mask])

  for batch in data.eval_batches(split, batch_size):
    mask = batch.pop("mask")
    placed = placement.put_batch({k: v[rows] for k, v in batch.items()})
    in_flight.append((eval_step(params, placed), mask))
    if len(in_flight) > EVAL_IN_FLIGHT:
      fetch_oldest()
  while in_flight:
    fetch_oldest()
  return np.concatenate(logits), np.concatenate(losses)
