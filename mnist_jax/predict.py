"""Classify pictures of single digits with a trained checkpoint.

    mnist-jax --mode=predict --workdir=runs/seed_lstm [--checkpoint=best] [--json] \\
        one.png two.jpg ...

From Python, `Predictor(workdir)` is the checkpoint as a function of uint8 images
[n, 28, 28]; it needs the workdir only, not the dataset.

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

import json
import re
import sys
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_jax.errors import UserError

FIELD = 28  # Output side, as MNIST.
BOX = 20  # The digit's longer side after scaling, as MNIST.
MIN_CONTRAST = 0.15  # Ink must stand this far (of full scale) above the background.
BOX_THRESHOLD = 0.25  # Ink level (of the peak) that counts for the bounding box.
NOISE_FLOOR = 0.1  # Ink below this (of the peak) is paper texture; dropped.
# Largest picture decoded: 4096 x 4096, 16.8 megapixels. A 12-megapixel phone photo
# (4032 x 3024) fits; decoded as float RGBA one takes ~0.5 GB here, and the digit ends
# up 20 pixels high anyway. Bigger files (or a few-kB PNG declaring 20000 x 20000, a
# "decompression bomb") are refused from their header, before any decoding.
MAX_PIXELS = 4096 * 4096


class ImageError(UserError):
  """A file is not a usable picture of a digit."""


# ----------------------------------------------------------------------------------
# Pictures -> MNIST images.
# ----------------------------------------------------------------------------------
def _open_header(path: str) -> Image.Image:
  """`Image.open`, which reads only the header; PIL's own warning for pictures over
  its limit is silenced since `_check_size` refuses them, more strictly, in one line."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    return Image.open(path)


def _too_large(path: str, size: str) -> ImageError:
  side = int(MAX_PIXELS ** 0.5)
  return ImageError(f"{path}: {size} is too large to read (at most {MAX_PIXELS:,} "
                    f"pixels, e.g. {side} x {side}); scale the picture down first.")


def _check_size(path: str, size: tuple[int, int]) -> None:
  """Raises ImageError for a picture over `MAX_PIXELS`, from its header's size."""
  width, height = size
  if width * height > MAX_PIXELS:
    raise _too_large(path, f"{width} x {height} pixels")


def load_grayscale(path: str) -> np.ndarray:
  """Reads an image file as float grayscale [height, width] in [0, 1].

  Transparent pixels are composited onto the colour that contrasts with the opaque
  strokes, so a digit drawn on a transparent canvas stays visible either way.

  Raises:
    ImageError: missing, unreadable, not an image, damaged, or over `MAX_PIXELS`.
  """
  try:
    with _open_header(path) as img:
      _check_size(path, img.size)  # Before decoding: the header alone gives the size.
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
  except Image.DecompressionBombError as e:  # Over twice PIL's own limit: no size.
    pixels = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{int(pixels[1]):,} pixels" if pixels else "its size"
    raise _too_large(path, size) from None
  except OSError as e:
    if e.errno is not None:  # The file system's refusal, not the picture's content.
      raise ImageError(f"{path}: cannot read it ({e.strerror}).") from None
    raise ImageError(f"{path}: damaged or truncated image ({e}).") from None
  except (ValueError, SyntaxError) as e:
    raise ImageError(f"{path}: damaged or truncated image ({e}).") from None
  try:
    return _grayscale(img)
  except ValueError as e:  # e.g. a CIELAB TIFF: PIL converts LAB to few modes.
    raise ImageError(f"{path}: cannot turn its {img.mode} colours into grayscale "
                     f"({e}).") from None


def _grayscale(img: Image.Image) -> np.ndarray:
  """`load_grayscale`'s pixels, transparent ones composited (see there)."""
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

      predictor = Predictor("runs/seed_lstm")        # the best checkpoint
      probabilities = predictor(images)              # [n, 10]

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
    from mnist_jax import data
    from mnist_jax import models
    from mnist_jax.workdir import Workdir

    wd = Workdir.open(workdir)
    self.config = wd.config
    self.step, params = wd.restore_params(checkpoint)
    constants = wd.saved_preprocessing()
    preprocess = data.make_preprocess(self.config.data, constants.mean, constants.std,
                                      constants.permutation)
    apply_fn = models.build_model(self.config.model).apply
    self._params = params
    # Parameters are an argument, not a closure: jit would bake closed-over arrays
    # into the executable as constants.
    self._probabilities = jax.jit(lambda params, images: jax.nn.softmax(
        apply_fn({"params": params}, preprocess(images), train=False)))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """Class probabilities [n, classes] for uint8 images [n, 28, 28]."""
    probabilities = self._probabilities(self._params, np.asarray(images, np.uint8))
    return np.asarray(probabilities, np.float64)


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


def print_results(results: list[dict], as_json: bool) -> int:
  """Prints results (errors on stderr); the exit status: 1 if any file failed."""
  if as_json:
    print(json.dumps(results, indent=2))
  else:
    for r in results:
      if "error" in r:
        print(f"error: {r['error']}", file=sys.stderr)
      else:
        print(f"{r['file']}: {r['digit']} (p={r['probability']:.3f})")
  return 1 if any("error" in r for r in results) else 0
