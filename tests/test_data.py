"""Splits, sequences, batch order and evaluation coverage on real MNIST."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import datasets


def _data_config(**overrides):
  cfg = config_lib.get_config().data
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def test_splits_are_real_mnist_and_disjoint(make_tiny_config):
  cfg = config_lib.resolve(make_tiny_config(max_train_examples=None, max_eval_examples=None))
  splits = data.load_splits(cfg)
  assert len(splits["train"]) == 55_000
  assert len(splits["validation"]) == 5_000
  assert len(splits["test"]) == 10_000
  for split in splits.values():
    assert split.images.dtype == np.uint8 and split.images.shape[1:] == (28, 28)
    assert set(np.unique(split.labels)) == set(range(10))
  # Validation is the head of tfds' train split, so no image is in both.
  val = {img.tobytes() for img in splits["validation"].images[:500]}
  assert not val & {img.tobytes() for img in splits["train"].images[:5000]}


@pytest.mark.parametrize("mode,shape", [("rows", (28, 28)), ("pixels", (784, 1)),
                                        ("permuted_pixels", (784, 1))])
def test_sequence_modes(mode, shape):
  cfg = _data_config(sequence=mode)
  if mode == "permuted_pixels":
    cfg.permutation, cfg.permutation_seed = "random", 3
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
  perm = data.permutation(cfg)
  out = np.asarray(data.make_preprocess(cfg, perm=perm)(jnp.asarray(images)))
  assert out.shape == (4, *shape) and data.input_shape(cfg) == shape
  flat = images.reshape(4, -1) / 255.0
  if mode == "rows":
    np.testing.assert_allclose(out, images / 255.0, rtol=1e-6)
  elif mode == "pixels":
    np.testing.assert_allclose(out[..., 0], flat, rtol=1e-6)
  else:
    np.testing.assert_allclose(out[..., 0], flat[:, perm], rtol=1e-6)
    assert sorted(perm) == list(range(784)) and not np.array_equal(perm, np.arange(784))


def test_permutations_are_fixed_by_config():
  a = data.permutation(_data_config(sequence="permuted_pixels", permutation="random",
                                    permutation_seed=7))
  b = data.permutation(_data_config(sequence="permuted_pixels", permutation="random",
                                    permutation_seed=7))
  c = data.permutation(_data_config(sequence="permuted_pixels", permutation="random",
                                    permutation_seed=8))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  rev = data.permutation(_data_config(sequence="permuted_pixels",
                                      permutation="bit_reversal"))
  assert sorted(rev) == list(range(784))
  assert data.permutation(_data_config(sequence="rows")) is None


def test_standardize_and_resize():
  cfg = _data_config(standardize=True, resize=14)
  images = np.full((2, 28, 28), 255, np.uint8)
  out = np.asarray(data.make_preprocess(cfg, mean=0.5, std=0.25)(jnp.asarray(images)))
  assert out.shape == (2, 14, 14)
  np.testing.assert_allclose(out, 2.0, rtol=1e-5)


def test_batch_order_is_a_pure_function_of_seed_and_step():
  order = data.TrainOrder(seed=3, num_examples=1000, batch_size=64)
  fresh = data.TrainOrder(seed=3, num_examples=1000, batch_size=64)
  steps = [0, 5, 14, 15, 16, 40, 3]  # Jumping around, as a resumed run would.
  for step in steps:
    np.testing.assert_array_equal(order.indices(step), fresh.indices(step))
  # Each epoch visits distinct examples and reshuffles.
  epoch0 = np.concatenate([order.indices(s) for s in range(order.steps_per_epoch)])
  epoch1 = np.concatenate([order.indices(order.steps_per_epoch + s)
                           for s in range(order.steps_per_epoch)])
  assert len(set(epoch0)) == len(epoch0) == 15 * 64
  assert not np.array_equal(epoch0, epoch1)
  other_seed = data.TrainOrder(seed=4, num_examples=1000, batch_size=64)
  assert not np.array_equal(order.indices(0), other_seed.indices(0))


def test_train_batches_follow_the_order_from_any_start():
  images = np.arange(100 * 28 * 28, dtype=np.uint32).reshape(100, 28, 28) % 251
  split = data.Split(images.astype(np.uint8), np.arange(100, dtype=np.int32))
  order = data.TrainOrder(seed=0, num_examples=100, batch_size=10)
  batches = list(data.train_batches(split, order, 7, 23, put=lambda b: b))
  assert len(batches) == 16
  for step, batch in zip(range(7, 23), batches):
    np.testing.assert_array_equal(batch["label"], order.indices(step))


def test_eval_batches_cover_every_example_once():
  split = data.Split(np.zeros((1003, 28, 28), np.uint8), np.arange(1003, dtype=np.int32))
  batches = list(data.eval_batches(split, 100))
  assert all(len(b["label"]) == 100 for b in batches)  # One shape: one compilation.
  seen = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(seen, np.arange(1003))


def test_random_shift_moves_content_and_keeps_mass():
  image = np.zeros((28, 28), np.uint8)
  image[10:18, 10:18] = 200
  images = jnp.asarray(np.stack([image] * 64))
  shifted = np.asarray(data.random_shift(jax.random.key(0), images, 2))
  assert shifted.shape == images.shape
  assert (shifted.reshape(64, -1).sum(1) == image.sum()).all()  # Nothing cropped off.
  assert len({s.tobytes() for s in shifted}) > 5
  np.testing.assert_array_equal(data.random_shift(jax.random.key(0), images, 0), images)


def test_check_manual_files_accepts_the_canonical_files(data_root):
  datasets.check_manual_files("mnist", str(data_root / "mnist"))


def test_check_manual_files_accepts_the_canonical_fashion_files(fashion_dir):
  datasets.check_manual_files("fashion_mnist", str(fashion_dir))


def test_shipped_mnist_files_are_the_canonical_ones():
  """The package's own copy passes tfds' checksums and is what a bare config reads."""
  datasets.check_manual_files("mnist", os.path.join(datasets.PACKAGED_ROOT, "mnist"))
  cfg = config_lib.get_config()
  assert datasets.manual_dir(cfg.data) == os.path.join(datasets.PACKAGED_ROOT, "mnist")
  cfg.data.name = "fashion_mnist"
  assert datasets.manual_dir(cfg.data) is None  # Not shipped: tfds downloads it.


def test_fashion_and_mnist_in_one_tfds_dir_stay_distinct(tfds_dir, data_root,
                                                          fashion_dir):
  """Both datasets use the same file names; tfds must not mix their downloads."""
  cfg = config_lib.get_config()
  cfg.data.tfds_dir = tfds_dir
  cfg.data.manual_dir = str(data_root / "mnist")
  cfg.max_eval_examples = 200
  mnist = data.load_splits(config_lib.resolve(cfg))["test"]
  cfg.data.name, cfg.data.manual_dir = "fashion_mnist", str(fashion_dir)
  fashion = data.load_splits(config_lib.resolve(cfg))["test"]
  assert not np.array_equal(mnist.images, fashion.images)
  assert fashion.images.mean() > 1.5 * mnist.images.mean()  # Clothes cover more pixels.


def _digest(splits) -> str:
  import hashlib
  h = hashlib.sha256()
  for name in ("train", "validation", "test"):
    h.update(splits[name].images.tobytes())
    h.update(splits[name].labels.tobytes())
  return h.hexdigest()


@pytest.mark.slow
def test_array_cache_equals_tfds_and_skips_tensorflow(tfds_dir, data_root, tmp_path):
  import os
  import shutil
  import subprocess
  import sys
  # A private copy of the prepared dataset (no cache yet), so this test owns the cache.
  source = os.path.join(tfds_dir, "mnist")
  version = next(v for v in sorted(os.listdir(source))
                 if os.path.isfile(os.path.join(source, v, "dataset_info.json")))
  shutil.copytree(os.path.join(source, version), tmp_path / "mnist" / version)
  cfg = config_lib.get_config()
  cfg.data.tfds_dir = str(tmp_path)
  cfg.data.manual_dir = str(data_root / "mnist")
  cfg = config_lib.resolve(cfg)
  cache = tmp_path / "mnist" / "mnist_jax_arrays.npz"

  from_tfds = _digest(data.load_splits(cfg))  # No cache: read through tfds, written.
  assert cache.exists() and not list((tmp_path / "mnist").glob("*.tmp"))
  # A fresh process: data from the cache, a TensorBoard event written, no TensorFlow.
  script = ("import sys; from mnist_jax import config as c, data, datasets, metric_writer; "
            "import test_data as t; cfg = c.get_config(); "
            f"cfg.data.tfds_dir = {str(tmp_path)!r}; "
            "splits = data.load_splits(c.resolve(cfg)); "
            f"w = metric_writer.MetricWriter({str(tmp_path)!r}); "
            "w.write(1, 'train', {'loss': 0.5}); w.close(); "
            "print(t._digest(splits), 'tensorflow' in sys.modules, "
            "datasets.class_names('mnist', cfg.data.tfds_dir))")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=os.path.dirname(__file__), check=True).stdout
  out = out.split(maxsplit=2)
  assert out[0] == from_tfds  # Same arrays, labels and split boundaries.
  assert out[1] == "False"  # TensorFlow never imported.
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert out[2].strip() == str([str(i) for i in range(10)])

  # A cache that does not load is ignored and rewritten.
  cache.write_bytes(b"not an npz")
  assert _digest(data.load_splits(cfg)) == from_tfds
  assert datasets._read_array_cache("mnist", str(tmp_path), ("train_labels",)) is not None
  # Prepared again since (dataset_info.json changed): the cache no longer applies.
  info = tmp_path / "mnist" / version / "dataset_info.json"
  info.write_text(info.read_text() + " ")
  assert datasets._read_array_cache("mnist", str(tmp_path), ("train_labels",)) is None
  assert _digest(data.load_splits(cfg)) == from_tfds
  assert datasets._read_array_cache("mnist", str(tmp_path), ("train_labels",)) is not None


@pytest.mark.slow
def test_first_preparation_shows_one_line_and_leaves_nothing_behind(data_root,
                                                                    tmp_path):
  """tfds and TensorFlow print ~80 lines and leave tmp*tfds folders; users see one."""
  import os
  import subprocess
  import sys
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  script = ("from mnist_jax import config as c, data; cfg = c.get_config(); "
            f"cfg.data.tfds_dir = {str(tmp_path / 'tfds')!r}; "
            f"cfg.data.manual_dir = {str(data_root / 'mnist')!r}; "
            "print(len(data.load_splits(c.resolve(cfg))['train']))")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env={**os.environ, "TMPDIR": str(scratch)}, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["55000"]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("Reading mnist with tensorflow-datasets")
  assert lines[0].rstrip().endswith("s).") and " done (" in lines[0]
  assert not list(scratch.iterdir())  # tfds' temporary folders went with it.
