"""Classify pictures of single digits with a trained checkpoint.

    python -m mnist_jax.predict --workdir=runs/seed_lstm [--checkpoint=best] [--json] \\
        one.png two.jpg ...

Each picture is turned into an MNIST-like image the way MNIST itself was made
(`to_mnist`): grayscale, light digit on a dark background (inverted automatically when
the background is light), cropped to the digit, scaled to fit a 20 x 20 box keeping the
aspect ratio, and placed in a 28 x 28 field with its centre of mass at the centre. The
model then sees it exactly as it saw training images (same sequencing, permutation and
standardisation, read from the workdir).

Prints one line per picture, `PATH: DIGIT (p=PROBABILITY)`, or with --json a JSON list
of {"file", "digit", "probability", "probabilities"}. A file that cannot be used gets a
one-line error (on stderr, or an {"file", "error"} entry) and the exit status is 1.
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_jax.errors import UserError

FIELD = 28  # Output side, as MNIST.
BOX = 20  # The digit's longer side after scaling, as MNIST.
MIN_CONTRAST = 0.15  # Ink must stand this far (of full scale) above the background.
BOX_THRESHOLD = 0.25  # Ink level (of the peak) that counts for the bounding box.
NOISE_FLOOR = 0.1  # Ink below this (of the peak) is paper texture; dropped.


class ImageError(UserError):
  """A file is not a usable picture of a digit."""


# ----------------------------------------------------------------------------------
# Pictures -> MNIST images.
# ----------------------------------------------------------------------------------
def load_grayscale(path: str) -> np.ndarray:
  """Reads an image file as float grayscale [height, width] in [0, 1].

  Transparent pixels are composited onto the colour that contrasts with the opaque
  strokes, so a digit drawn on a transparent canvas stays visible either way.

  Raises:
    ImageError: missing, unreadable, not an image, or damaged.
  """
  try:
    with Image.open(path) as img:
      img.load()
      img = ImageOps.exif_transpose(img)  # Phone photos: apply the rotation tag.
  except FileNotFoundError:
    raise ImageError(f"{path}: no such file.") from None
  except IsADirectoryError:
    raise ImageError(f"{path}: is a folder, not an image file.") from None
  except PermissionError:
    raise ImageError(f"{path}: cannot read it (permission denied).") from None
  except UnidentifiedImageError:
    raise ImageError(f"{path}: not an image (PIL cannot identify its format).") from None
  except (OSError, ValueError, SyntaxError) as e:
    raise ImageError(f"{path}: damaged or truncated image ({e}).") from None
  has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
  if not has_alpha:
    return np.asarray(img.convert("L"), np.float64) / 255.0
  rgba = np.asarray(img.convert("RGBA"), np.float64) / 255.0
  gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's "L".
  alpha = rgba[..., 3]
  if alpha.sum() == 0:
    return np.zeros_like(gray)  # Fully transparent: to_mnist reports it as empty.
  stroke = (gray * alpha).sum() / alpha.sum()
  background = 1.0 if stroke < 0.5 else 0.0
  return alpha * gray + (1 - alpha) * background


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
  total = image.sum()
  rows, cols = np.indices(image.shape)
  return float((rows * image).sum() / total), float((cols * image).sum() / total)


def to_mnist(image: np.ndarray) -> np.ndarray:
  """Turns a picture of one digit into an MNIST-style image. Pure: no I/O, no state.

  Args:
    image: grayscale [height, width]; uint8 (0-255) or float in [0, 1]. Either
      polarity: a light background (border median above one half) is inverted.

  Returns:
    uint8 [28, 28]: a light digit on black, scaled so its longer side is 20 pixels
    (aspect kept), its centre of mass at pixel (14, 14) as in MNIST, peak 255.

  Raises:
    ImageError: not a 2-D image, or no digit (blank or too little contrast).
  """
  x = np.asarray(image)
  if x.ndim != 2 or min(x.shape, default=0) == 0:
    raise ImageError(f"expected a non-empty 2-D grayscale image, got shape {x.shape}.")
  if np.issubdtype(x.dtype, np.integer):
    x = x.astype(np.float64) / 255.0
  x = np.clip(x.astype(np.float64), 0.0, 1.0)
  border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
  background = float(np.median(border))
  if background > 0.5:  # Dark digit on light paper: MNIST digits are light on black.
    x, background = 1.0 - x, 1.0 - background
  ink = np.clip(x - background, 0.0, None)
  peak = float(ink.max())
  if peak < MIN_CONTRAST:
    raise ImageError("no digit found: the image is blank or has too little contrast.")
  ink /= peak
  ink[ink < NOISE_FLOOR] = 0.0
  rows = np.flatnonzero((ink >= BOX_THRESHOLD).any(axis=1))
  cols = np.flatnonzero((ink >= BOX_THRESHOLD).any(axis=0))
  crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]

  height, width = crop.shape
  scale = BOX / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (w, h).
  resized = np.asarray(
      Image.fromarray(crop.astype(np.float32)).resize(size, Image.LANCZOS),
      np.float64)
  resized = np.clip(resized, 0.0, None)
  resized /= max(resized.max(), 1e-12)

  # Whole-pixel shift putting the centre of mass at row/column index 14, where MNIST
  # has it (mean over the test set: 14.0 +- 0.3), kept inside the field.
  cy, cx = _centre_of_mass(resized)
  top = int(np.clip(round(FIELD / 2 - cy), 0, FIELD - size[1]))
  left = int(np.clip(round(FIELD / 2 - cx), 0, FIELD - size[0]))
  field = np.zeros((FIELD, FIELD))
  field[top:top + size[1], left:left + size[0]] = resized
  return np.round(field * 255).astype(np.uint8)


def load_digit(path: str) -> np.ndarray:
  """`to_mnist(load_grayscale(path))`, with the file name in any error."""
  gray = load_grayscale(path)
  try:
    return to_mnist(gray)
  except ImageError as e:
    raise ImageError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------------
class Predictor:
  """A workdir's checkpoint as a function: uint8 images [n, 28, 28] -> probabilities.

  Attributes:
    config: the run's resolved config.
    step: the restored checkpoint's step.
  """

  def __init__(self, workdir: str, checkpoint: str | int = "best"):
    """Restores `checkpoint` ("best", "latest" or a step) from `workdir`.

    Raises:
      WorkdirError: no workdir, config or checkpoint.
    """
    import jax
    from mnist_jax import checkpoints
    from mnist_jax import config as config_lib
    from mnist_jax import data
    from mnist_jax import train as train_lib
    from mnist_jax.errors import WorkdirError

    if not os.path.isdir(workdir):
      raise WorkdirError(f"workdir {workdir} does not exist.")
    self.config = config_lib.resolve(train_lib.load_workdir_config(workdir))
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
      raise WorkdirError(f"no checkpoint in {ckpt_dir}; train first.")
    store = checkpoints.CheckpointStore(ckpt_dir, read_only=True)
    self.step = store.resolve_step(checkpoint)
    # The optimizer state's structure does not depend on steps_per_epoch.
    target = train_lib.create_train_state(self.config, jax.random.PRNGKey(0), 1)
    state, _ = store.restore(self.step, target)
    store.close()
    if self.config.data.standardize:  # Needs the training split's mean and std.
      _, preprocess = train_lib.data_pipeline(self.config, workdir)
    else:
      perm_path = os.path.join(workdir, "permutation.npy")
      perm = (np.load(perm_path) if os.path.exists(perm_path)
              else data.permutation(self.config.data))
      preprocess = data.make_preprocess(self.config.data, perm=perm)
    params, apply_fn = state.params, state.apply_fn
    self._probabilities = jax.jit(lambda images: jax.nn.softmax(
        apply_fn({"params": params}, preprocess(images), train=False)))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """Class probabilities [n, classes] for uint8 images [n, 28, 28]."""
    return np.asarray(self._probabilities(np.asarray(images, np.uint8)), np.float64)


def predict_files(predictor: Predictor, paths: list[str]) -> list[dict]:
  """One result per path: {"file", "digit", "probability", "probabilities"} or
  {"file", "error"}."""
  results, images, good = [], [], []
  for path in paths:
    try:
      images.append(load_digit(path))
      good.append(len(results))
      results.append({"file": path})
    except ImageError as e:
      results.append({"file": path, "error": str(e)})
  if images:
    probs = predictor(np.stack(images))
    for i, p in zip(good, probs):
      digit = int(p.argmax())
      results[i].update({"digit": digit, "probability": float(p[digit]),
                         "probabilities": [round(float(v), 6) for v in p]})
  return results


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mnist_jax.predict",
      description="Classify pictures of single digits with a trained checkpoint.")
  parser.add_argument("--workdir", required=True, help="A training workdir.")
  parser.add_argument("--checkpoint", default="best",
                      help="'best' (default), 'latest' or a step number.")
  parser.add_argument("--json", action="store_true", help="Print a JSON list.")
  parser.add_argument("images", nargs="+", help="Image files (PNG, JPEG, ...).")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from absl import logging
  logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only restores.
  try:
    results = predict_files(Predictor(args.workdir, args.checkpoint), args.images)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps(results, indent=2))
  else:
    for r in results:
      if "error" in r:
        print(f"error: {r['error']}", file=sys.stderr)
      else:
        print(f"{r['file']}: {r['digit']} (p={r['probability']:.3f})")
  return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
