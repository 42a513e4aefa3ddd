"""Every command in README.md, run as written, in order, in a fresh folder.

Training commands get tiny overrides appended (a few hundred images, one epoch, a small
model) so the whole README runs in about a minute; everything else runs verbatim on
the workdirs those commands create. Installing and the test suite itself are skipped.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

from conftest import REPO

pytestmark = pytest.mark.slow

_TINY = ["--config.num_epochs=1", "--config.max_train_examples=300",
         "--config.max_eval_examples=300", "--config.batch_size=50",
         "--config.eval_batch_size=100", "--config.model.hidden_size=16",
         "--config.log_every_steps=2"]


def _blocks(language: str) -> list[str]:
  text = (REPO / "README.md").read_text()
  return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def readme_commands() -> list[str]:
  """The shell commands of README.md's bash blocks, continuation lines joined."""
  commands = []
  for block in _blocks("bash"):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split("  #")[0].strip()
      if line and not line.startswith("#"):
        commands.append(line)
  return commands


def _file_name(block: str) -> str | None:
  """'my_cells.py' for a block whose first line is '# my_cells.py', else None."""
  match = re.match(r"# (\w+\.py)\n", block)
  return match.group(1) if match else None


def _example_files() -> dict[str, str]:
  return {_file_name(b): b for b in _blocks("python") if _file_name(b)}


def test_readme_opens_with_the_two_commands():
  commands = readme_commands()
  assert commands[0].startswith("pip install -e '.[test]' && python -m pytest")
  assert commands[1].startswith("mnist-jax --config=experiments/seed_lstm.py")
  ci = (REPO / ".ci" / "run").read_text()
  assert commands[0] in ci  # CI runs the README's test command verbatim.


def _digit_png(path: pathlib.Path) -> None:
  img = Image.new("L", (120, 160), 255)
  ImageDraw.Draw(img).line([(30, 30), (90, 30), (50, 140)], fill=0, width=14)
  img.save(path)


def test_every_readme_command_runs_as_written(tmp_path, tfds_dir, data_root):
  assert shutil.which("mnist-jax"), "pip install -e . installs the mnist-jax command"
  (tmp_path / "experiments").symlink_to(REPO / "experiments")
  _digit_png(tmp_path / "digit.png")
  files = _example_files()  # "# my_cells.py" blocks: files the commands use.
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  env = {**os.environ, "MNIST_JAX_MANUAL_DIR": str(data_root)}
  ran = []
  for command in readme_commands():
    args = shlex.split(command)
    if args[0] in ("pip", "tensorboard") or "pytest" in args:
      continue
    if args[0] == "python" and args[1] not in ("-m",):
      continue  # The benchmark (needs torch): tests/test_benchmark.py covers it.
    if any(a.startswith("--config=") for a in args):
      args += _TINY + [f"--config.data.tfds_dir={tfds_dir}"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
    ran.append(command)
  assert len(ran) >= 7, ran
  assert (tmp_path / "runs" / "seed_lstm" / "report" / "report.md").exists()
  assert (tmp_path / "runs" / "compare" / "comparison.md").exists()

  assert {"my_cells.py", "my_experiment.py"} <= set(files)
  assert (tmp_path / "runs" / "mine_quarter" / "eval").is_dir()
  for block in _blocks("python"):  # The Python examples, on the same workdirs.
    if _file_name(block):
      continue
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{block}\n{proc.stderr[-3000:]}"


def test_help_lists_the_flags_and_exits_zero():
  proc = subprocess.run(["mnist-jax", "--help"], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  for flag in ("--config", "--workdir", "--mode", "--checkpoint", "--cpu_devices"):
    assert flag in proc.stdout
  assert "mnist-jax --config=experiments/seed_lstm.py" in proc.stdout
  assert "Traceback" not in proc.stderr
