"""Predict: pictures become MNIST-style images; a trained checkpoint reads drawn digits."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import REPO, tiny_config
from mnist_jax import data
from mnist_jax import predict
from mnist_jax import train as train_lib
from mnist_jax.workdir import Workdir

CENTRE = 14.0  # MNIST's centre of mass, in pixel-index coordinates.


def _draw(digit: str, size=(200, 260), ink="black", paper="white", mode="RGB"):
  """A digit drawn with thick PIL lines (nothing from MNIST)."""
  img = Image.new(mode, size, paper)
  d = ImageDraw.Draw(img)
  if digit == "1":
    d.line([(100, 30), (100, 230)], fill=ink, width=22)
  elif digit == "7":
    d.line([(40, 40), (160, 40), (80, 230)], fill=ink, width=20, joint="curve")
  elif digit == "0":
    d.ellipse([(40, 30), (160, 230)], outline=ink, width=20)
  return img


def _gray(img):
  return np.asarray(img.convert("L"))


def _bbox(image):
  rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
  return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


# ----------------------------------------------------------------------------------
# Preprocessing (pure).
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("digit", ["1", "7", "0"])
def test_to_mnist_shape_scale_and_centre_of_mass(digit):
  picture = _gray(_draw(digit))
  before = picture.copy()
  out = predict.to_mnist(picture)
  np.testing.assert_array_equal(picture, before)  # Pure: the input is untouched.
  assert out.shape == (28, 28) and out.dtype == np.uint8 and out.max() == 255
  assert max(_bbox(out)) in (19, 20, 21)  # Longer side scaled to the 20-pixel box.
  cy, cx = predict._centre_of_mass(out.astype(np.float64))
  assert abs(cy - CENTRE) <= 1.0 and abs(cx - CENTRE) <= 1.0


def test_to_mnist_inverts_light_backgrounds_only():
  dark_on_light = _gray(_draw("7"))
  light_on_dark = 255 - dark_on_light
  out = predict.to_mnist(dark_on_light)
  np.testing.assert_array_equal(out, predict.to_mnist(light_on_dark))
  assert out[0, 0] == 0 and out[-1, -1] == 0  # Black background, as MNIST.
  # Float input in [0, 1] is the same picture.
  np.testing.assert_array_equal(out, predict.to_mnist(dark_on_light / 255.0))


def test_to_mnist_keeps_aspect_and_centres_off_centre_digits():
  canvas = np.zeros((300, 400), np.uint8)
  canvas[10:30, 250:350] = 255  # A 100 x 20 bar in a corner.
  out = predict.to_mnist(canvas)
  assert _bbox(out) == (4, 20)
  cy, cx = predict._centre_of_mass(out.astype(np.float64))
  assert abs(cy - CENTRE) <= 0.5 and abs(cx - CENTRE) <= 0.5


def test_to_mnist_ignores_paper_noise_and_grey_paper():
  rng = np.random.default_rng(0)
  picture = _gray(_draw("1")).astype(np.float64) * 0.8 + 20  # Grey paper, grey ink.
  picture += rng.normal(0, 4, picture.shape)
  out = predict.to_mnist(np.clip(picture, 0, 255).astype(np.uint8))
  assert _bbox(out)[0] == 20 and _bbox(out)[1] <= 4  # Only the stroke survives.


@pytest.mark.parametrize("picture", [np.full((50, 40), 255, np.uint8),
                                     np.zeros((50, 40)), np.full((9, 9), 0.5)])
def test_to_mnist_rejects_empty_pictures(picture):
  with pytest.raises(predict.ImageError, match="no digit found"):
    predict.to_mnist(picture)


def test_to_mnist_rejects_non_2d():
  with pytest.raises(predict.ImageError, match="2-D"):
    predict.to_mnist(np.zeros((4, 4, 3)))


def test_transparent_png_is_composited(tmp_path):
  opaque = _draw("7")
  clear = _draw("7", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA")
  opaque.save(tmp_path / "opaque.png")
  clear.save(tmp_path / "clear.png")
  np.testing.assert_array_equal(predict.load_digit(str(tmp_path / "opaque.png")),
                                predict.load_digit(str(tmp_path / "clear.png")))


# ----------------------------------------------------------------------------------
# Bad files.
# ----------------------------------------------------------------------------------
def test_bad_files_give_one_line_errors(tmp_path):
  text = tmp_path / "notes.png"
  text.write_text("not a picture\n")
  truncated = tmp_path / "cut.png"
  _draw("1").save(tmp_path / "whole.png")
  truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:300])
  blank = tmp_path / "blank.jpg"
  Image.new("RGB", (64, 64), "white").save(blank)
  cases = {str(text): "not an image", str(tmp_path / "missing.png"): "no such file",
           str(truncated): "damaged or truncated", str(blank): "no digit found",
           str(tmp_path): "is a folder"}
  for path, phrase in cases.items():
    with pytest.raises(predict.ImageError, match=phrase) as info:
      predict.load_digit(path)
    message = str(info.value)
    assert message.startswith(path) and "\n" not in message


def test_unreadable_file(tmp_path, monkeypatch):
  path = tmp_path / "locked.png"
  _draw("1").save(path)

  def refuse(*args, **kwargs):  # chmod 0 does not stop root, so fake the refusal.
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(predict.Image, "open", refuse)
  with pytest.raises(predict.ImageError, match="permission denied"):
    predict.load_digit(str(path))


# ----------------------------------------------------------------------------------
# A trained checkpoint.
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, tfds_dir, data_root):
  """A row-wise LSTM (hidden 64) trained 2 epochs on 10k images: ~93% validation."""
  workdir = tmp_path_factory.mktemp("predict") / "lstm"
  cfg = tiny_config(tfds_dir, data_root, **{
      "model.hidden_size": 64, "num_epochs": 2, "max_train_examples": 10_000,
      "max_eval_examples": 1000, "batch_size": 100, "eval_batch_size": 500,
      "log_every_steps": 50, "optimizer.learning_rate": 3e-3})
  result = train_lib.train(cfg, str(workdir))
  assert result["completed"] and result["val_accuracy"] > 0.8
  return workdir


@pytest.mark.slow
def test_mnist_images_survive_preprocessing(trained_workdir):
  """MNIST was made this way, so its own images come back nearly unchanged."""
  config = Workdir.open(str(trained_workdir)).config
  images = data.load_splits(config)["test"].images[:100]
  corr = [np.corrcoef(img.ravel(), predict.to_mnist(img).ravel())[0, 1]
          for img in images]
  assert np.median(corr) > 0.98


@pytest.mark.slow
def test_drawn_digits_are_recognised(trained_workdir, tmp_path, monkeypatch):
  def no_dataset(*args, **kwargs):
    raise AssertionError("the predictor read the dataset")
  monkeypatch.setattr(data, "load_splits", no_dataset)  # Needs the workdir alone.
  paths = []
  for digit in ("1", "7"):
    paths.append(str(tmp_path / f"drawn_{digit}.png"))
    _draw(digit).save(paths[-1])
  paths.append(str(tmp_path / "light_on_dark_1.jpg"))
  _draw("1", ink="white", paper="black").save(paths[-1])
  predictor = predict.Predictor(str(trained_workdir))
  results = predict.predict_files(predictor, paths)
  assert [r["digit"] for r in results] == [1, 7, 1], results
  for r in results:
    assert 0.5 < r["probability"] <= 1 and len(r["probabilities"]) == 10
    assert sum(r["probabilities"]) == pytest.approx(1, abs=1e-4)


@pytest.mark.slow
def test_command_line_json_and_errors(trained_workdir, tmp_path):
  good = tmp_path / "seven.png"
  _draw("7").save(good)
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x00" * 10)
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", "mnist_jax.main", "--mode=predict",
       f"--workdir={trained_workdir}", *args],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  proc = run("--json", str(good), str(bad))
  assert proc.returncode == 1, proc.stderr[-2000:]
  results = json.loads(proc.stdout)
  assert results[0]["file"] == str(good) and results[0]["digit"] == 7
  assert "not an image" in results[1]["error"]
  proc = run("--checkpoint=latest", str(good))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().startswith(f"{good}: 7 (p=")
  proc = run("--checkpoint=12345", str(good))
  assert proc.returncode == 1 and "error: no checkpoint at step 12345" in proc.stderr
