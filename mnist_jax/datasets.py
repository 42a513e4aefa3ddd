"""tensorflow-datasets preparation of MNIST and Fashion-MNIST, and a plain-array cache.

* Preparation: tfds builds its dataset from the four canonical .gz files, with tfds'
  own checksums checked. They come from, in order: `config.data.manual_dir` (which
  `config.resolve` fills from $MNIST_JAX_MANUAL_DIR), the MNIST files shipped in
  `mnist_jax/dataset_files/` (so a fresh clone runs offline), else tfds' download.
  Files in a manual folder are checked first so a bad one is named.
* After the first read the splits are kept as plain arrays beside tfds' prepared
  folder (`TFDS_DIR/<name>/mnist_jax_arrays.npz`): later runs load them without
  importing TensorFlow.

`read_arrays(data_config)` is what `data.load_splits` calls.
"""

import contextlib
import functools
import glob
import gzip
import hashlib
import os
import shutil
import socket
import struct
import sys
import tempfile
import time

import numpy as np

from mnist_jax.errors import DataError

IMAGE_SIZE = 28
_IDX_MAGIC = {"images": 2051, "labels": 2049}
# The canonical MNIST files, installed with the package (licence in its README.md).
PACKAGED_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "dataset_files")
_DOWNLOAD_HOSTS = {"mnist": "storage.googleapis.com",
                   "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com"}

@functools.cache
def _tfds():
  """tensorflow_datasets, imported on first use: it imports TensorFlow (seconds)."""
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


def check_manual_files(name: str, folder: str) -> None:
  """Checks the four .gz files against tfds' registered sizes and checksums.

  Raises:
    DataError: naming the first bad file and what was expected of it.
  """
  builder = _tfds().builder(name)
  hint = (f"Put the canonical {name} files (train-images-idx3-ubyte.gz, "
          f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
          f"t10k-labels-idx1-ubyte.gz) there, unchanged.")
  for info in builder.url_infos.values():
    path = os.path.join(folder, info.filename)
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


def manual_dir(data_config) -> str | None:
  """Where the canonical files of `data_config.name` are read from; None: download.

  The config's folder if it names one, else the copy shipped with the package (MNIST
  only: Fashion-MNIST is downloaded or named by the config or the environment).
  """
  if data_config.manual_dir is not None:
    return data_config.manual_dir
  packaged = os.path.join(PACKAGED_ROOT, data_config.name)
  return packaged if os.path.isdir(packaged) else None


def _network_reachable(host: str, timeout: float = 3.0) -> bool:
  """Whether `host` answers on 443; never, with MNIST_JAX_OFFLINE=1 (no download)."""
  if os.environ.get("MNIST_JAX_OFFLINE") == "1":
    return False
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
  folder = manual_dir(data_config)
  if folder is not None:
    check_manual_files(name, folder)
    download_config = tfds.download.DownloadConfig(manual_dir=folder)
  else:
    if not _network_reachable(_DOWNLOAD_HOSTS[name]):
      raise DataError(
          f"{name} is not prepared in {builder.data_dir} and its download host "
          f"cannot be reached. To run offline, point at a folder with the four "
          f"canonical .gz files: --config.data.manual_dir=DIR, or set "
          f"MNIST_JAX_MANUAL_DIR to a folder holding {name}/ with them.")
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
# TFDS_DIR/NAME/mnist_jax_arrays.npz. Reading it needs no TensorFlow, whose import
# is most of the time of reading through tfds (docs/performance.md). It records
# which prepared folder it came from (name and SHA-256 of its dataset_info.json) and
# is ignored if that folder changed or is gone, or if the file does not load or lacks
# an array. It is written to a temporary file, synced and renamed, so a killed run
# (or a crash) never leaves half a file under its name.
_ARRAY_CACHE = "mnist_jax_arrays.npz"
_ARRAY_CACHE_FORMAT = 2  # 2: with each image's position in the official files.
_SPLIT_ARRAYS = {"train_images": np.uint8, "train_labels": np.int32,
                 "train_source_index": np.int32,
                 "test_images": np.uint8, "test_labels": np.int32,
                 "test_source_index": np.int32}


def _tfds_dataset_root(name: str, tfds_dir: str | None) -> str | None:
  """TFDS_DIR/NAME as tfds resolves it (None for object stores: no cache there)."""
  root = tfds_dir
  if root is None:  # tfds' default, $TFDS_DATA_DIR honoured.
    from tensorflow_datasets.core import constants  # Does not import TensorFlow.
    root = constants.DATA_DIR
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
      or len(arrays["test_images"]) != len(arrays["test_labels"])
      or len(arrays["train_source_index"]) != len(arrays["train_labels"])
      or len(arrays["test_source_index"]) != len(arrays["test_labels"])):
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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide it from other users.
    os.replace(tmp, os.path.join(folder, _ARRAY_CACHE))
  except OSError:  # Full disk and the like: run without the cache.
    pass
  finally:
    with contextlib.suppress(OSError):
      os.remove(tmp)  # Gone already after a successful rename.


@contextlib.contextmanager
def _quietly(what: str):
  """Runs tfds and TensorFlow with one progress line instead of their output.

  Their log lines and progress bars (~80 lines on a first preparation) go to a
  temporary file, this process's file descriptors 1 and 2 included (TensorFlow's C++
  logging); its last lines are shown only if something other than a DataError (whose
  one line says what to do) goes wrong. tfds' own temporary
  folders (it leaves some behind) go into a private folder removed afterwards.
  """
  start = time.monotonic()
  print(f"{what} ...", end="", file=sys.stderr, flush=True)
  scratch = tempfile.mkdtemp(prefix="mnist_jax_tfds_")
  previous_tempdir, tempfile.tempdir = tempfile.tempdir, scratch
  log_path = os.path.join(scratch, "tfds.log")
  saved = [os.dup(1), os.dup(2)]
  outcome, show_log = "failed", False
  try:
    with open(log_path, "w") as log:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(log.fileno(), 1)
      os.dup2(log.fileno(), 2)
      try:
        yield
        outcome = "done"
      except DataError:
        raise
      except BaseException:
        show_log = True
        raise
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
  finally:
    for fd in saved:
      os.close(fd)
    tempfile.tempdir = previous_tempdir
    print(f" {outcome} ({time.monotonic() - start:.0f} s).", file=sys.stderr,
          flush=True)
    if show_log:
      with open(log_path, errors="replace") as f:
        sys.stderr.write("".join(f.readlines()[-20:]))
    shutil.rmtree(scratch, ignore_errors=True)


def read_arrays(data_config) -> dict[str, np.ndarray]:
  """train/test images and labels of the prepared dataset (preparing it if needed)."""
  cached = _read_array_cache(data_config.name, data_config.tfds_dir,
                             keys=tuple(_SPLIT_ARRAYS))
  if cached is not None:
    return cached
  with _quietly(f"Reading {data_config.name} with tensorflow-datasets (prepared "
                f"once; later runs load a cached copy)"):
    builder = prepare(data_config)
    tfds = _tfds()
    arrays = {}
    for split in ("train", "test"):
      loaded = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
      arrays[f"{split}_images"] = np.asarray(loaded["image"], np.uint8).reshape(
          -1, IMAGE_SIZE, IMAGE_SIZE)
      arrays[f"{split}_labels"] = np.asarray(loaded["label"], np.int32)
      arrays[f"{split}_source_index"] = source_index(
          arrays[f"{split}_images"], arrays[f"{split}_labels"],
          _official_files(builder, data_config, split))
    _write_array_cache(builder, arrays)
  return arrays


_OFFICIAL_PREFIX = {"train": "train", "test": "t10k"}


def _official_files(builder, data_config, split: str) -> tuple[str, str] | None:
  """(images, labels) .gz files of `split` in the manual folder or tfds' downloads."""
  prefix = _OFFICIAL_PREFIX[split]
  folders = [manual_dir(data_config),
             os.path.join(builder.data_dir_root, "downloads", data_config.name)]
  for folder in filter(None, folders):
    images = glob.glob(os.path.join(folder, f"*{prefix}-images*idx3*.gz"))
    labels = glob.glob(os.path.join(folder, f"*{prefix}-labels*idx1*.gz"))
    if len(images) == 1 and len(labels) == 1:
      return images[0], labels[0]
  return None


def source_index(images: np.ndarray, labels: np.ndarray,
                 files: tuple[str, str] | None) -> np.ndarray:
  """Each image's position in the official IDX files (-1 where unknown).

  tfds stores examples in its own order, so its position i is not the i-th image of
  `t10k-images-idx3-ubyte.gz`. Identical (image, label) pairs are matched in order.

  Args:
    images: uint8 [n, 28, 28] in tfds' order; labels: [n].
    files: the official (images, labels) .gz files, or None.
  """
  out = np.full(len(labels), -1, np.int32)
  if files is None:
    return out
  with gzip.open(files[0], "rb") as f:
    official = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, IMAGE_SIZE,
                                                                    IMAGE_SIZE)
  with gzip.open(files[1], "rb") as f:
    official_labels = np.frombuffer(f.read(), np.uint8, offset=8)
  positions: dict[tuple[int, bytes], list[int]] = {}
  for i in range(len(official_labels) - 1, -1, -1):  # Popped from the end: in order.
    positions.setdefault((int(official_labels[i]), official[i].tobytes()), []).append(i)
  for j in range(len(labels)):
    found = positions.get((int(labels[j]), images[j].tobytes()))
    if found:
      out[j] = found.pop()
  return out
