"""Weights & Biases beside TensorBoard (wandb_writer.py), offline as CI has no account:
never imported when off, its config checked up front, and an offline run read back
with the config, every logged row and the test metrics; a resumed training goes on in
the same W&B run after its checkpoint's step."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, run_main
from mnist_jax import config as config_lib
from mnist_jax import wandb_writer
from mnist_jax.errors import ConfigError
from wandb_offline import offline_env, offline_runs


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
  """Offline, and W&B's own settings and caches kept out of the home folder."""
  env = offline_env(tmp_path)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  return env


def test_a_default_run_never_imports_wandb(tmp_path, tfds_dir, data_root):
  """A fresh interpreter: other tests of this session may have imported wandb."""
  code = f"""
import pathlib, sys
from conftest import tiny_config
from mnist_jax import config, train, wandb_writer
from mnist_jax.metric_writer import MetricWriter
cfg = config.resolve(tiny_config({tfds_dir!r}, pathlib.Path({str(data_root)!r}),
                                 num_epochs=1))
with wandb_writer.session(cfg, {str(tmp_path / 'w')!r}) as tracker:
  assert tracker is None
  MetricWriter({str(tmp_path / 'w')!r}, also=tracker).close()
assert "wandb" not in sys.modules, "MetricWriter imported wandb"
train.train(cfg, {str(tmp_path / 'run')!r})
assert "wandb" not in sys.modules, "training imported wandb"
"""
  (tmp_path / "w").mkdir()
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests",
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not (tmp_path / "run" / "wandb").exists()


@pytest.mark.parametrize("key, value, message", [
    ("mode", "cloud", "config.wandb.mode='cloud' is not valid; choose one of: online, "
                      "offline, disabled."),
    ("project", " ", "config.wandb.project=' ' must name a project."),
    ("group", "", "config.wandb.group='' must be a name or None."),
    ("tags", ("a", "b"), "must be comma-separated text"),
    ("enabled", "yes", "config.wandb.enabled='yes' must be True or False."),
])
def test_bad_wandb_settings_are_one_line(key, value, message):
  config = config_lib.get_config()
  with config.ignore_type():
    config.wandb[key] = value
  with pytest.raises(ConfigError) as error:
    config_lib.resolve(config)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_enabled_without_the_package_says_how_to_install_it(monkeypatch):
  monkeypatch.setattr(wandb_writer.importlib.util, "find_spec", lambda name: None)
  config = config_lib.get_config()
  config.wandb.enabled = True
  with pytest.raises(ConfigError, match=r"needs the wandb package: pip install -e "
                                        r"'.\[wandb\]'"):
    config_lib.resolve(config)


@pytest.mark.slow
def test_offline_run_holds_config_rows_and_test_metrics_and_resumes(
    tmp_path, tfds_dir, data_root, wandb_env):
  pytest.importorskip("wandb")
  workdir = tmp_path / "run"
  args = ["--config=experiments/seed_rnn.py", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}", "--config.max_train_examples=200",
          "--config.max_eval_examples=100", "--config.batch_size=50",
          "--config.model.hidden_size=8", "--config.log_every_steps=2",
          "--config.wandb.enabled=true", "--config.wandb.group=g1",
          "--config.wandb.tags=rows,tiny", "--cpu_devices=1"]
  first = run_main(*args, "--config.num_epochs=1", env=wandb_env)
  assert first.returncode == 0, first.stderr[-3000:]
  # More epochs on the same workdir: a resumed training, from step 4.
  second = run_main(*args, "--config.num_epochs=2", env=wandb_env)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from checkpoint at step 4" in second.stderr
  run_id = json.loads((workdir / "wandb_run.json").read_text())["id"]
  sessions = offline_runs(workdir)
  assert len(sessions) == 2 and {s["id"] for s in sessions} == {run_id}
  for session in sessions:
    assert (session["name"], session["group"]) == ("run", "g1")
    assert session["tags"] == ["rows", "tiny"]
    assert session["config"]["seed"] == 0
    assert session["config"]["model"]["name"] == "simple_rnn"
    assert session["config"]["max_train_examples"] == 200
  # Each session's rows, as metrics.jsonl has them; the resumed one's after step 4.
  logged = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  for session, steps in zip(sessions, ([2, 4], [6, 8])):
    rows = [r for r in session["history"] if "train/loss" in r]
    assert [r["_step"] for r in rows] == steps
    for row in rows:
      [expected] = [l for l in logged if l["step"] == row["_step"]
                    and l["split"] == "train"]
      assert row["train/loss"] == pytest.approx(expected["loss"], rel=1e-12)
  test = json.loads((workdir / "run_info.json").read_text())["test"]
  summary = sessions[-1]["summary"]
  assert summary["test/accuracy"] == test["accuracy"]
  assert summary["test/macro_f1"] == test["macro_f1"]
  assert summary["test/checkpoint_step"] == test["checkpoint_step"]
