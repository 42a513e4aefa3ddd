"""MNIST-format data through tensorflow-datasets: preparation, splits, batch order.

* Preparation: tfds builds its dataset from the four canonical .gz files, either
  downloaded or (offline) from `config.data.manual_dir`, with tfds' own checksums
  checked. Files in the manual folder are checked first so a bad one is named.
* Splits: `validation` is the first `validation_size` examples of tfds' train split,
  `train` the rest, `test` the test split. Each is held in memory as uint8 (MNIST is
  47 MB) so batches are plain NumPy indexing.
* Batch order is a pure function of (seed, step): epoch e uses the permutation drawn
  from `np.random.default_rng([seed, e])`, so a resumed run sees exactly the batches an
  uninterrupted one would. Each process takes its slice of every global batch.
* Sequencing (`make_preprocess`) runs on the device inside the jitted steps: uint8
  [batch, 28, 28] -> float32 [batch, time, features].
"""

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import os
import queue
import socket
import struct
import tempfile
import threading
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.errors import DataError

IMAGE_SIZE = 28
_IDX_MAGIC = {"images": 2051, "labels": 2049}
_DOWNLOAD_HOSTS = {"mnist": "storage.googleapis.com",
                   "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com"}


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in host memory.

  Attributes:
    images: uint8 [num_examples, 28, 28].
    labels: int32 [num_examples].
  """
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


# ----------------------------------------------------------------------------------
# Preparation.
# ----------------------------------------------------------------------------------
@functools.cache
def _tfds():
  """tensorflow_datasets, imported on first use: it imports TensorFlow (~6 s here)."""
  import tensorflow as tf
  # TensorFlow only feeds tfds; keep it off the GPUs so JAX gets all their memory.
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow's devices already started (imported elsewhere).
    from absl import logging
    logging.warning("TensorFlow was initialised before mnist_jax could hide the GPUs "
                    "from it; it may hold GPU memory that JAX then lacks.")
  import tensorflow_datasets as tfds
  return tfds


def check_manual_files(name: str, manual_dir: str) -> None:
  """Checks the four .gz files against tfds' registered sizes and checksums.

  Raises:
    DataError: naming the first bad file and what was expected of it.
  """
  builder = _tfds().builder(name)
  hint = (f"Put the canonical {name} files (train-images-idx3-ubyte.gz, "
          f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
          f"t10k-labels-idx1-ubyte.gz) there, unchanged.")
  for info in builder.url_infos.values():
    path = os.path.join(manual_dir, info.filename)
    kind = "images" if "images" in info.filename else "labels"
    if not os.path.isfile(path):
      raise DataError(f"{path} is missing. {hint}")
    with open(path, "rb") as f:
      raw = f.read()
    if raw[:2] != b"\x1f\x8b":
      raise DataError(f"{path} is not a gzip file (expected the original "
                      f"{info.filename}). {hint}")
    try:
      content = gzip.decompress(raw)
    except (EOFError, OSError, gzip.BadGzipFile) as e:
      raise DataError(f"{path} is truncated or damaged ({e}); "
                      f"expected {info.size} bytes, found {len(raw)}. {hint}") from None
    magic = struct.unpack(">I", content[:4])[0] if len(content) >= 4 else None
    if magic != _IDX_MAGIC[kind]:
      raise DataError(f"{path} has IDX magic number {magic}, expected "
                      f"{_IDX_MAGIC[kind]} for {kind}. {hint}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != info.checksum:
      raise DataError(f"{path} has SHA-256 {digest[:16]}..., expected "
                      f"{info.checksum[:16]}... (tfds' registered checksum). {hint}")


def _network_reachable(host: str, timeout: float = 3.0) -> bool:
  try:
    with socket.create_connection((host, 443), timeout=timeout):
      return True
  except OSError:
    return False


def prepare(data_config):
  """Returns a prepared tfds builder for `data_config.name`.

  Raises:
    DataError: bad manual files, or nothing prepared, no manual files and no network.
  """
  tfds = _tfds()
  name = data_config.name
  builder = tfds.builder(name, data_dir=data_config.tfds_dir)
  if builder.is_prepared():
    return builder
  # Several processes of one job (or several jobs) may start on the same data dir:
  # one prepares while the others wait, then find it prepared.
  with _exclusive(os.path.join(builder.data_dir_root, f".{name}.prepare.lock")):
    builder = tfds.builder(name, data_dir=data_config.tfds_dir)
    if builder.is_prepared():
      return builder
    return _download_and_prepare(builder, data_config)


def _exclusive(lock_path: str):
  """An exclusive inter-process lock on `lock_path` (none on object stores, gs://)."""
  if "://" in lock_path:
    return contextlib.nullcontext()
  import filelock
  os.makedirs(os.path.dirname(lock_path), exist_ok=True)
  return filelock.FileLock(lock_path)


def _download_and_prepare(builder, data_config):
  tfds = _tfds()
  name = data_config.name
  manual_dir = data_config.manual_dir
  if manual_dir is not None:
    check_manual_files(name, manual_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  else:
    if not _network_reachable(_DOWNLOAD_HOSTS[name]):
      raise DataError(
          f"{name} is not prepared in {builder.data_dir} and its download host "
          f"cannot be reached. To run offline, point at a folder with the four "
          f"canonical .gz files: --config.data.manual_dir=DIR, or set "
          f"MNIST_JAX_MANUAL_DIR to a folder holding {name}/ (e.g. ../shared/data).")
    download_config = tfds.download.DownloadConfig()
  try:
    # A download dir per dataset: mnist and fashion_mnist share file names, and tfds'
    # shared extraction cache would otherwise feed one dataset's files to the other.
    builder.download_and_prepare(
        download_dir=os.path.join(builder.data_dir_root, "downloads", name),
        download_config=download_config)
  except Exception as e:  # tfds raises many types; the message is what matters.
    raise DataError(f"preparing {name} with tfds failed: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}") from e
  return builder


def class_names(name: str, tfds_dir: str | None = None) -> list[str]:
  """The dataset's label names: from the array cache, else tfds' metadata."""
  cached = _read_array_cache(name, tfds_dir, keys=("class_names",))
  if cached is not None:
    return [str(n) for n in cached["class_names"]]
  return list(_tfds().builder(name, data_dir=tfds_dir).info.features["label"].names)


# The prepared dataset as plain arrays, beside tfds' version folders:
# TFDS_DIR/NAME/mnist_jax_arrays.npz. Reading it takes ~0.1 s and needs no
# TensorFlow; reading through tfds takes ~8 s on this CPU, 5.7 of them importing
# TensorFlow. It records which prepared folder it came from (name and SHA-256 of its
# dataset_info.json) and is ignored if that folder changed or is gone, or if the file
# does not load or lacks an array. It is written to a temporary file, synced and
# renamed, so a killed run (or a crash) never leaves half a file under its name.
_ARRAY_CACHE = "mnist_jax_arrays.npz"
_ARRAY_CACHE_FORMAT = 1
_SPLIT_ARRAYS = {"train_images": np.uint8, "train_labels": np.int32,
                 "test_images": np.uint8, "test_labels": np.int32}


def _tfds_dataset_root(name: str, tfds_dir: str | None) -> str | None:
  """TFDS_DIR/NAME as tfds resolves it (None for object stores: no cache there)."""
  from tensorflow_datasets.core import constants  # Light: does not import TensorFlow.
  root = tfds_dir or constants.DATA_DIR  # tfds' default, $TFDS_DATA_DIR honoured.
  if "://" in root:
    return None
  return os.path.join(os.path.expanduser(root), name)


def _dataset_info_sha256(version_dir: str) -> str | None:
  """SHA-256 of a prepared folder's dataset_info.json (None if unreadable)."""
  try:
    with open(os.path.join(version_dir, "dataset_info.json"), "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  except OSError:
    return None


def _read_array_cache(name: str, tfds_dir: str | None,
                      keys: tuple[str, ...]) -> dict | None:
  """`keys` from the array cache, or None if it is missing, stale or damaged."""
  root = _tfds_dataset_root(name, tfds_dir)
  path = root and os.path.join(root, _ARRAY_CACHE)
  if not path or not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:  # Reads only the members asked for.
      if int(f["format"]) != _ARRAY_CACHE_FORMAT:
        return None
      version, digest = str(f["source_version"]), str(f["source_sha256"])
      arrays = {k: f[k] for k in keys}
  except Exception:  # pylint: disable=broad-except
    return None  # Unreadable or incomplete (e.g. disk trouble): tfds rebuilds it.
  for key, dtype in _SPLIT_ARRAYS.items():
    if key in arrays and arrays[key].dtype != dtype:
      return None
  if "train_images" in arrays and (
      arrays["train_images"].shape[1:] != (IMAGE_SIZE, IMAGE_SIZE)
      or len(arrays["train_images"]) != len(arrays["train_labels"])
      or len(arrays["test_images"]) != len(arrays["test_labels"])):
    return None
  if _dataset_info_sha256(os.path.join(root, version)) != digest:
    return None  # Prepared again or removed since: not this data any more.
  return arrays


def _write_array_cache(builder, arrays: dict) -> None:
  """Writes the array cache for `builder`'s prepared folder; skipped if it can't."""
  version_dir = builder.data_dir
  digest = _dataset_info_sha256(version_dir)
  if "://" in version_dir or digest is None:
    return
  folder = os.path.dirname(version_dir)
  try:
    fd, tmp = tempfile.mkstemp(prefix=f"{_ARRAY_CACHE}.", suffix=".tmp", dir=folder)
  except OSError:  # Read-only data dir: run without the cache.
    return
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, format=_ARRAY_CACHE_FORMAT,
               source_version=os.path.basename(version_dir), source_sha256=digest,
               class_names=np.array(builder.info.features["label"].names), **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, _ARRAY_CACHE))
  except OSError:  # Full disk and the like: run without the cache.
    pass
  finally:
    with contextlib.suppress(OSError):
      os.remove(tmp)  # Gone already after a successful rename.


def _read_dataset(data_config) -> dict[str, np.ndarray]:
  """train/test images and labels of the prepared dataset (preparing it if needed)."""
  cached = _read_array_cache(data_config.name, data_config.tfds_dir,
                             keys=tuple(_SPLIT_ARRAYS))
  if cached is not None:
    return cached
  builder = prepare(data_config)
  tfds = _tfds()
  arrays = {}
  for split in ("train", "test"):
    loaded = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    arrays[f"{split}_images"] = np.asarray(loaded["image"], np.uint8).reshape(
        -1, IMAGE_SIZE, IMAGE_SIZE)
    arrays[f"{split}_labels"] = np.asarray(loaded["label"], np.int32)
  _write_array_cache(builder, arrays)
  return arrays


def load_splits(config) -> dict[str, Split]:
  """Prepares the dataset and loads train / validation / test into memory.

  Args:
    config: the resolved run config (reads `data`, `batch_size`, `max_*_examples`).

  Returns:
    {"train": Split, "validation": Split, "test": Split}; validation may be empty.

  Raises:
    DataError, ConfigError: bad files, or split sizes that do not fit the dataset.
  """
  from mnist_jax.errors import ConfigError

  arrays = _read_dataset(config.data)
  full_train = Split(arrays["train_images"], arrays["train_labels"])
  val_size = config.data.validation_size
  if val_size >= len(full_train):
    raise ConfigError(f"config.data.validation_size={val_size} must be smaller than "
                      f"{config.data.name}'s {len(full_train)} training examples.")
  splits = {
      "validation": Split(full_train.images[:val_size], full_train.labels[:val_size]),
      "train": Split(full_train.images[val_size:], full_train.labels[val_size:]),
      "test": Split(arrays["test_images"], arrays["test_labels"]),
  }
  if config.max_train_examples:
    n = config.max_train_examples
    splits["train"] = Split(splits["train"].images[:n], splits["train"].labels[:n])
  if config.max_eval_examples:
    n = config.max_eval_examples
    for name in ("validation", "test"):
      splits[name] = Split(splits[name].images[:n], splits[name].labels[:n])
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
