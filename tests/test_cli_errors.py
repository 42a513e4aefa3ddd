"""Bad input at the edges of the commands: flags, $JAX_PLATFORMS, --cpu_devices, huge or
damaged pictures. Each answers in one line (a warning where the run can go on), never
a traceback."""

import glob
import os
import subprocess
import sys

import jax
import pytest
from PIL import Image, ImageDraw, ImageFile

from conftest import REPO, one_line_error, run_main, tiny_config
from mnist_jax import cli
from mnist_jax import cluster_env
from mnist_jax import distributed
from mnist_jax import predict
from mnist_jax import train
from mnist_jax.errors import ConfigError

pytestmark = pytest.mark.faults


def run_sweep(*args: str) -> subprocess.CompletedProcess:
  """Runs `python -m mnist_jax.sweep ARGS` in a fresh process."""
  return subprocess.run([sys.executable, "-m", "mnist_jax.sweep", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------------
# Flag errors: absl's message, on one line, for both commands.
# ----------------------------------------------------------------------------------
_BOTH = {"main": run_main, "sweep": run_sweep}


@pytest.mark.parametrize("command", sorted(_BOTH))
@pytest.mark.parametrize("args,phrase", [
    (["--parallel=0"], {"main": "Unknown command line flag 'parallel'",
                        "sweep": "flag --parallel=0: 0 is not a positive integer"}),
    (["--split=nonsense"], {"main": "value should be one of <test|validation>",
                            "sweep": "Unknown command line flag 'split'"}),
    (["--mode=bogus"], {"main": "value should be one of <train|eval|report|predict>",
                        "sweep": "Unknown command line flag 'mode'"}),
    (["--checkpoint"], {"main": "Missing value for flag --checkpoint",
                        "sweep": "Unknown command line flag 'checkpoint'"}),
    (["--nonsense=1"], "Unknown command line flag 'nonsense'"),
    ([None], "Flag --workdir must have a value other than None"),
    (["--workdir"], "Missing value for flag --workdir"),
    (["--workdir="], "--workdir must name a folder, not be empty"),
    (["--config=README.md"], "README.md is not valid Python (line "),
    (["--config=mnist_jax/errors.py"], "mnist_jax/errors.py: defines no get_config()"),
    (["--config=experiments/seed_lstm.py:extra"],
     "Error whilst parsing config file: TypeError: get_config() takes 0 positional"),
])
def test_flag_errors_are_one_line(tmp_path, command, args, phrase):
  workdir = tmp_path / "w"
  given = [a for a in args if a is not None]
  if args[0] is not None and not args[0].startswith("--workdir"):
    given.insert(0, f"--workdir={workdir}")  # First: a flag missing its value is last.
  proc = _BOTH[command](*given)
  line = one_line_error(proc)
  assert proc.stderr.strip() == line, proc.stderr  # Nothing else: no FATAL, no usage.
  wanted = phrase[command] if isinstance(phrase, dict) else phrase
  assert wanted in line
  if line.startswith("error: flag") or "command line flag" in line:
    assert line.endswith("; see --help.")
  assert not workdir.exists()


def test_traceback_quoted_by_absl_shrinks_to_its_place(tmp_path):
  config = tmp_path / "broken.py"
  config.write_text("def get_config():\n  return int('x')\n")
  line = one_line_error(run_main(f"--config={config}", f"--workdir={tmp_path / 'w'}"))
  assert "ValueError: invalid literal for int()" in line
  assert f"({config}, line 2)" in line


# ----------------------------------------------------------------------------------
# JAX_PLATFORMS naming a platform this machine lacks.
# ----------------------------------------------------------------------------------
_PRESENT = {"cuda": bool(glob.glob("/dev/nvidia[0-9]*")),
            "tpu": cluster_env._on_tpu_vm(), "gpux": False}


@pytest.mark.parametrize("platform", sorted(_PRESENT))
def test_missing_jax_platform_is_one_line(tmp_path, platform):
  if _PRESENT[platform]:
    pytest.skip(f"this machine has {platform}")
  workdir = tmp_path / "w"
  proc = run_main("--config=experiments/seed_lstm.py", f"--workdir={workdir}",
                  "--config.num_epochs=1", env={"JAX_PLATFORMS": platform})
  line = one_line_error(proc)
  assert f"JAX_PLATFORMS={platform}: JAX cannot start it here" in line
  assert "platforms JAX finds here: cpu" in line
  assert "Unset JAX_PLATFORMS" in line and "JAX_PLATFORMS=cpu" in line
  assert not workdir.exists()


# ----------------------------------------------------------------------------------
# --cpu_devices above the usable cores; other setup flags.
# ----------------------------------------------------------------------------------
def test_cpu_devices_above_the_cores_are_capped(monkeypatch, caplog):
  set_to = []
  monkeypatch.setattr(jax.config, "update", lambda key, value: set_to.append(value))
  for var in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
  assert distributed.set_cpu_devices(2) == 2
  assert not caplog.records  # Up to the cores: as asked, silently.
  assert distributed.set_cpu_devices(999) == 2
  assert set_to == [2, 2]
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 1 and "--cpu_devices=999 capped at 2" in warnings[0]


def test_cpu_devices_cap_on_the_command_line(tmp_path, monkeypatch):
  for var in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES"):  # Either would win over the flag.
    monkeypatch.delenv(var, raising=False)
  cores = distributed.usable_cores()
  proc = run_main("--mode=eval", f"--workdir={tmp_path / 'none'}",
                  f"--cpu_devices={cores + 5}")
  one_line_error(proc)  # The missing workdir; the warning came before it.
  capped = [l for l in proc.stderr.splitlines() if "capped at" in l]
  assert len(capped) == 1 and f"--cpu_devices={cores + 5} capped at {cores}," in \
      capped[0], proc.stderr


@pytest.mark.parametrize("address,phrase", [
    ("127.0.0.1", "must be HOST:PORT"), ("127.0.0.1:99999", "must be HOST:PORT"),
    ("nohost.invalid:1234", "cannot resolve host nohost.invalid"),
])
def test_bad_coordinator_address_is_one_line(tmp_path, address, phrase):
  line = one_line_error(run_main(
      "--mode=eval", f"--workdir={tmp_path}", f"--coordinator_address={address}",
      "--num_processes=1", "--process_id=0"))
  assert f"--coordinator_address={address}" in line and phrase in line


def test_unusable_compilation_cache_is_one_warning(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(jax.config, "update", lambda *a: pytest.fail("cache turned on"))
  taken = tmp_path / "a_file"
  taken.write_text("mine")
  cli.use_compilation_cache(str(taken))
  assert "a file, not a folder; compiling without a cache" in caplog.text
  assert taken.read_text() == "mine"


# ----------------------------------------------------------------------------------
# Pictures: huge ones refused from their header; damaged ones in one line.
# ----------------------------------------------------------------------------------
@pytest.fixture
def no_decoding(monkeypatch):
  """Fails a test that decodes pixels (the header alone must be read)."""
  def decode(self):
    raise AssertionError(f"decoded {self.size}")
  monkeypatch.setattr(ImageFile.ImageFile, "load", decode)


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 10000), (5000, 4000)])
def test_huge_picture_is_refused_before_decoding(tmp_path, no_decoding, recwarn, size):
  """Over twice PIL's own limit (its error), over it (its warning), and over ours."""
  path = tmp_path / "huge.png"
  Image.new("1", size).save(path)  # A few kB: PNG compresses the blank bitmap.
  with pytest.raises(predict.ImageError) as info:
    predict.load_digit(str(path))
  message = str(info.value)
  width, height = size
  assert message.startswith(f"{path}: ") and "\n" not in message
  assert (f"{width} x {height} pixels" in message
          or f"{width * height:,} pixels" in message)
  assert f"at most {predict.MAX_PIXELS:,} pixels" in message
  assert not recwarn.list  # PIL's DecompressionBombWarning stays quiet.


def test_picture_at_the_limit_is_read(tmp_path):
  side = int(predict.MAX_PIXELS ** 0.5)
  path = tmp_path / "big.png"
  img = Image.new("L", (side, side), 255)
  ImageDraw.Draw(img).line([(side // 2, 100), (side // 2, side - 100)], fill=0,
                           width=side // 20)
  img.save(path)
  digit = predict.load_digit(str(path))
  assert digit.shape == (predict.FIELD, predict.FIELD) and digit.max() == 255


def test_damaged_pictures_are_one_line(tmp_path):
  good = tmp_path / "good.png"
  img = Image.new("L", (200, 200))
  ImageDraw.Draw(img).line([(100, 20), (100, 180)], fill=255, width=20)
  img.save(good)
  cut = tmp_path / "cut.png"
  cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
  text = tmp_path / "notes.png"
  text.write_text("not a picture\n")
  lab = tmp_path / "lab.tif"
  Image.new("LAB", (40, 40)).save(lab)  # PIL reads it but cannot make it grayscale.
  long_name = str(tmp_path / ("x" * 300 + ".png"))
  cases = {str(cut): "damaged or truncated", str(text): "not an image",
           str(tmp_path): "is a folder", str(lab): "cannot turn its LAB colours",
           long_name: "cannot read it (File name too long)"}
  for path, phrase in cases.items():
    with pytest.raises(predict.ImageError) as info:
      predict.load_digit(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and phrase in message
    assert "\n" not in message


@pytest.mark.slow
def test_huge_picture_on_the_command_line(tmp_path, tfds_dir, data_root):
  workdir = tmp_path / "run"
  assert train.train(tiny_config(tfds_dir, data_root, num_epochs=1),
                     str(workdir))["completed"]
  huge = tmp_path / "huge.png"
  Image.new("1", (20000, 20000)).save(huge)
  line = one_line_error(run_main("--mode=predict", f"--workdir={workdir}", str(huge)))
  assert line.startswith(f"error: {huge}: ") and "too large" in line
