"""MNIST-format data through tensorflow-datasets: preparation, splits, batch order.

* Preparation (`datasets.py`): tfds builds its dataset from the four canonical .gz
  files, downloaded or (offline) from `config.data.manual_dir`.
* Splits: `validation` is the first `validation_size` examples of tfds' train split,
  `train` the rest, `test` the test split. Each is held in memory as uint8 (MNIST is
  47 MB) so batches are plain NumPy indexing.
* Batch order is a pure function of (seed, step): epoch e uses the permutation drawn
  from `np.random.default_rng([seed, e])`, so a resumed run sees exactly the batches an
  uninterrupted one would. Each process takes its slice of every global batch.
* Sequencing (`make_preprocess`) runs on the device inside the jitted steps: uint8
  [batch, 28, 28] -> float32 [batch, time, features].
"""

import dataclasses
import queue
import threading
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import datasets
from mnist_jax.errors import ConfigError

IMAGE_SIZE = datasets.IMAGE_SIZE


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in host memory.

  Attributes:
    images: uint8 [num_examples, 28, 28].
    labels: int32 [num_examples].
    source_index: int32 [num_examples], each image's position in the official IDX
      file it came from (train-images for train and validation, t10k-images for
      test); -1 where unknown. None: not recorded.
  """
  images: np.ndarray
  labels: np.ndarray
  source_index: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.labels)

  def rows(self, part: slice) -> "Split":
    """The examples in `part`, every array sliced alike."""
    return Split(self.images[part], self.labels[part],
                 None if self.source_index is None else self.source_index[part])


def load_splits(config) -> dict[str, Split]:
  """Prepares the dataset and loads train / validation / test into memory.

  Args:
    config: the resolved run config (reads `data`, `batch_size`, `max_*_examples`).

  Returns:
    {"train": Split, "validation": Split, "test": Split}; validation may be empty.

  Raises:
    DataError, ConfigError: bad files, or split sizes that do not fit the dataset.
  """
  arrays = datasets.read_arrays(config.data)
  full_train = Split(arrays["train_images"], arrays["train_labels"],
                     arrays["train_source_index"])
  val_size = config.data.validation_size
  if val_size >= len(full_train):
    raise ConfigError(f"config.data.validation_size={val_size} must be smaller than "
                      f"{config.data.name}'s {len(full_train)} training examples.")
  splits = {
      "validation": full_train.rows(slice(None, val_size)),
      "train": full_train.rows(slice(val_size, None)),
      "test": Split(arrays["test_images"], arrays["test_labels"],
                    arrays["test_source_index"]),
  }
  if config.max_train_examples:
    n = config.max_train_examples
    splits["train"] = splits["train"].rows(slice(None, n))
  if config.max_eval_examples:
    n = config.max_eval_examples
    for name in ("validation", "test"):
      splits[name] = splits[name].rows(slice(None, n))
  if config.batch_size > len(splits["train"]):
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the "
                      f"{len(splits['train'])} training examples; lower it.")
  return splits


# ----------------------------------------------------------------------------------
# Sequences.
# ----------------------------------------------------------------------------------
def sequence_length(data_config) -> int:
  side = data_config.resize or IMAGE_SIZE
  return side if data_config.sequence == "rows" else side * side


def input_shape(data_config) -> tuple[int, int]:
  """[time, features] of one example."""
  side = data_config.resize or IMAGE_SIZE
  return (side, side) if data_config.sequence == "rows" else (side * side, 1)


def permutation(data_config) -> np.ndarray | None:
  """The fixed pixel permutation for `permuted_pixels`, else None.

  `random`: `np.random.default_rng(permutation_seed).permutation(length)`.
  `bit_reversal`: pixel indices ordered by their bit-reversed 10-bit code.
  """
  if data_config.sequence != "permuted_pixels":
    return None
  length = sequence_length(data_config)
  if data_config.permutation == "random":
    return np.random.default_rng(data_config.permutation_seed).permutation(length)
  bits = int(np.ceil(np.log2(length)))
  codes = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(length)]
  return np.argsort(codes, kind="stable")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """The constants a run's inputs depend on; fixed when it trains, saved in its workdir.

  Attributes:
    mean, std: pixels (in [0, 1]) are standardised with these (0 and 1: unchanged).
    permutation: int [time] pixel order for `permuted_pixels`, else None.
  """
  mean: float = 0.0
  std: float = 1.0
  permutation: np.ndarray | None = None


def preprocessing_for(config, train: Split) -> Preprocessing:
  """The constants for `config`: standardisation statistics of `train`, permutation."""
  mean, std = 0.0, 1.0
  if config.data.standardize:
    pixels = train.images.astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
  return Preprocessing(mean, std, permutation(config.data))


def make_preprocess(data_config, mean: float = 0.0, std: float = 1.0,
                    perm: np.ndarray | None = None) -> Callable[[jax.Array], jax.Array]:
  """Returns a jnp function uint8 [batch, 28, 28] -> float32 [batch, time, features].

  Pixels are scaled to [0, 1], then standardised with (mean, std) if configured.
  """
  side = data_config.resize
  mode = data_config.sequence
  perm = None if perm is None else jnp.asarray(perm)

  def preprocess(images):
    x = images.astype(jnp.float32) / 255.0
    if side is not None and side != IMAGE_SIZE:
      x = jax.image.resize(x, (x.shape[0], side, side), method="bilinear")
    if data_config.standardize:
      x = (x - mean) / std
    if mode == "rows":
      return x
    x = x.reshape(x.shape[0], -1, 1)
    if perm is not None:
      x = x[:, perm]
    return x

  return preprocess


def random_shift(rng: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
  """Translates each image by up to `max_shift` pixels per axis, filling with 0."""
  if max_shift == 0:
    return images
  batch, size = images.shape[0], images.shape[-1]
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
  offsets = jax.random.randint(rng, (batch, 2), 0, 2 * max_shift + 1)
  # A gather rather than vmap(dynamic_slice): it keeps the batch sharding as is.
  rows = jnp.arange(size)[None, :] + offsets[:, :1]  # [batch, size]
  cols = jnp.arange(size)[None, :] + offsets[:, 1:]
  return padded[jnp.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


# ----------------------------------------------------------------------------------
# Batch order.
# ----------------------------------------------------------------------------------
def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch; the remainder rotates since each epoch reshuffles."""
  return num_examples // batch_size


class TrainOrder:
  """Global batch indices as a pure function of (seed, step)."""

  def __init__(self, seed: int, num_examples: int, batch_size: int):
    self.seed = seed
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.steps_per_epoch = steps_per_epoch(num_examples, batch_size)
    self._cached_epoch = None
    self._cached_perm = None

  def epoch_permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._cached_epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._cached_perm = rng.permutation(self.num_examples)
      self._cached_epoch = epoch
    return self._cached_perm

  def indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    return self.epoch_permutation(epoch)[i * self.batch_size:(i + 1) * self.batch_size]


def process_slice(global_size: int) -> slice:
  """This process's rows of a global batch (processes take equal, contiguous parts)."""
  local = global_size // jax.process_count()
  start = jax.process_index() * local
  return slice(start, start + local)


def train_batches(split: Split, order: TrainOrder, start_step: int, end_step: int,
                  put: Callable[[dict], Any], prefetch: int = 2) -> Iterator[Any]:
  """Yields device batches for steps [start_step, end_step), prepared in a thread.

  Args:
    split: the training split.
    order: the batch order.
    start_step, end_step: step range.
    put: places a host batch (this process's rows) on the devices (a placement's
      `put_batch`: a dict of arrays, or a list of per-device shards).
    prefetch: batches prepared ahead.
  """
  rows = process_slice(order.batch_size)
  q: queue.Queue = queue.Queue(maxsize=prefetch)
  stop = threading.Event()

  def offer(item) -> bool:
    """Queues `item` unless the consumer has stopped; False if it has."""
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def producer():
    try:
      for step in range(start_step, end_step):
        idx = order.indices(step)[rows]
        if not offer(put({"image": split.images[idx], "label": split.labels[idx]})):
          return
    except BaseException as e:  # Surface producer errors in the consumer.
      offer(e)
    offer(None)

  thread = threading.Thread(target=producer, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is None:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    # Leave no thread inside JAX's C++ code: a daemon thread that wakes up while
    # the interpreter exits (e.g. right after a SIGTERM stop) aborts the process.
    thread.join()


def eval_batches(split: Split, batch_size: int) -> Iterator[dict]:
  """Yields every example once, in order; the last batch is padded with mask 0.

  All batches have the same shape, so the eval step compiles once.
  """
  n = len(split)
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    pad = batch_size - len(idx)
    mask = np.concatenate([np.ones(len(idx), bool), np.zeros(pad, bool)])
    idx = np.concatenate([idx, np.zeros(pad, idx.dtype)])
    yield {"image": split.images[idx], "label": split.labels[idx], "mask": mask}
