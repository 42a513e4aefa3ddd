"""Bring your own cell: `config.model.name` as a "module:Class" import path.

A flax `nn.RNNCellBase` runs through the `nn.RNN` adapter; a `RecurrentCell` subclass in
a file beside the experiment file trains, survives a SIGKILL, and is found again by a
fresh process in another working directory; a wrong name or setting is one line.
"""

import functools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, SLOW_MAIN, one_line_error, run_main
from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import evaluate
from mnist_jax import models
from mnist_jax import steps
from mnist_jax import sweeps
from mnist_jax import train
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError
from mnist_jax.models import external

HIDDEN = 16


def _config(name, **overrides):
  cfg = config_lib.get_config()
  cfg.model.name, cfg.model.hidden_size = name, HIDDEN
  return config_lib.override(cfg, overrides)


def _batch():
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)),
          "label": jnp.asarray(rng.integers(0, 10, 16, dtype=np.int32))}


# ----------------------------------------------------------------------------------
# flax cells through the nn.RNN adapter.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flax.linen:GRUCell", "flax.linen:OptimizedLSTMCell"])
def test_flax_cell_builds_trains_a_step_and_changes_every_parameter(name):
  cfg = config_lib.resolve(_config(name, **{"model.num_layers": 2}))
  assert cfg.model.cell_file is None  # A package's module: found by name, always.
  state = steps.create_train_state(cfg, jax.random.PRNGKey(0), steps_per_epoch=10)
  assert set(state.params) == {"layer0_fwd", "layer1_fwd", "head"}
  cell_params = state.params["layer1_fwd"]["rnn"]["cell"]
  # `features` is model.hidden_size.
  assert {leaf.shape[-1] for leaf in jax.tree.leaves(cell_params)} == {HIDDEN}
  before = jax.tree.map(np.array, state.params)
  step = jax.jit(functools.partial(steps.train_step,
                                   preprocess=data.make_preprocess(cfg.data)))
  new_state, metrics = step(state, _batch())
  assert int(new_state.step) == 1 and bool(metrics["finite"])
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, new_state.params)
  unchanged = [jax.tree_util.keystr(path) for path, moved in
               jax.tree_util.tree_leaves_with_path(changed) if not moved]
  assert not unchanged, f"parameters that did not move: {unchanged}"


def test_flax_cell_bidirectional_two_layers_runs_the_backward_layer_reversed():
  cfg = config_lib.resolve(_config("flax.linen:GRUCell", **{
      "model.num_layers": 2, "model.bidirectional": True})).model
  model = models.build_model(cfg)
  x = jax.random.normal(jax.random.key(1), (3, 7, 5))
  variables = model.init(jax.random.key(2), x)
  params = variables["params"]
  assert set(params) == {"layer0_fwd", "layer0_bwd", "layer1_fwd", "layer1_bwd", "head"}
  layer, options = models.cell_layer(cfg)
  assert layer is external.FlaxCellLayer
  cell = layer(hidden_size=HIDDEN, **dict(options))

  def run(name, inputs, reverse):
    return cell.apply({"params": params[name]}, inputs, reverse=reverse)

  # Backward = forward over time-reversed inputs, outputs put back in input order.
  np.testing.assert_allclose(run("layer0_bwd", x, True),
                             run("layer0_bwd", x[:, ::-1], False)[:, ::-1], atol=1e-6)
  h0 = jnp.concatenate([run("layer0_fwd", x, False), run("layer0_bwd", x, True)], -1)
  h1 = jnp.concatenate([run("layer1_fwd", h0, False), run("layer1_bwd", h0, True)], -1)
  features = jnp.concatenate([h1[:, -1, :HIDDEN], h1[:, 0, HIDDEN:]], -1)
  expected = features @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(model.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_flax_cell_settings_fill_in_reach_the_cell_and_round_trip():
  cfg = _config("flax.linen:MGUCell")
  resolved = config_lib.resolve(cfg)
  assert resolved.model.options.external.to_dict() == {"reset_gate": True}
  cfg.model.options.external.reset_gate = False  # As an experiment file would.
  resolved = config_lib.resolve(cfg)
  assert models.build_model(resolved.model).cell_options[1] == (
      "cell_kwargs", (("reset_gate", False),))
  x = jnp.ones((2, 4, 3))
  params = models.build_model(resolved.model).init(jax.random.key(0), x)["params"]
  assert "hr" not in params["layer0_fwd"]["rnn"]["cell"]  # No reset gate: no weights.
  back = workdir_lib.config_from_json(workdir_lib.config_to_json(resolved))
  assert back.to_dict() == resolved.to_dict()
  # A resumed run must name the same cell with the same settings; where its code
  # lives (cell_file) does not count.
  other = config_lib.resolve(_config("flax.linen:MGUCell")).to_dict()
  assert workdir_lib.differences(resolved.to_dict(), other) == [
      "model.options.external.reset_gate=False -> True"]
  moved = json.loads(json.dumps(resolved.to_dict()))
  moved["model"]["cell_file"] = "/elsewhere/my_cells.py"
  assert workdir_lib.differences(resolved.to_dict(), moved) == []


# ----------------------------------------------------------------------------------
# One-line errors, before any work.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options,phrase", [
    ("no_such_module_xyz:Cell", {}, "module 'no_such_module_xyz' is not importable"),
    ("flax.linen:NoSuchCell", {}, "has no attribute 'NoSuchCell'"),
    ("flax.linen:Dense", {}, "neither a RecurrentCell subclass nor a flax.linen."
                             "RNNCellBase subclass"),
    ("os:getcwd", {}, "not a class"),
    ("flax.linen:GRU Cell", {}, "is not a valid import path"),
    ("flax.linen:MGUCell", {"reset_gat": True}, "takes no argument 'reset_gat'; it "
                                                "accepts reset_gate (bool, default True)"),
    ("flax.linen:MGUCell", {"reset_gate": "yes"}, "reset_gate='yes' must be a bool"),
    ("flax.linen:GRUCell", {"activation_fn": "relu"}, "'activation_fn' cannot be set "
                                                      "from a config"),
    ("flax.linen:ConvLSTMCell", {}, "kernel_size is missing: flax.linen:ConvLSTMCell "
                                    "requires it"),
    ("mnist_jax.models.lstm:LSTM", {"chrono_max_timescale": 0.5},
     "chrono_max_timescale=0.5 must be"),
])
def test_bad_import_path_or_setting_is_one_line_config_error(name, options, phrase):
  cfg = _config(name)
  for key, value in options.items():
    cfg.model.options.external[key] = value
  with pytest.raises(ConfigError) as info:
    config_lib.resolve(cfg)
  message = str(info.value)
  assert phrase in message and "\n" not in message, message
  assert "config.model." in message


def test_unregistered_name_lists_cells_and_import_paths(tmp_path):
  line = one_line_error(run_main("--config=experiments/seed_lstm.py",
                                 f"--workdir={tmp_path / 'w'}",
                                 "--config.model.name=my_missing_cells:Cell"))
  assert "config.model.name='my_missing_cells:Cell'" in line
  assert "RNNCellBase" in line and not (tmp_path / "w").exists()
  with pytest.raises(ConfigError, match=r"choose one of: .*gru.*, or give a "
                     r"'module:Class' import path"):
    config_lib.resolve(_config("transformer"))


# ----------------------------------------------------------------------------------
# A RecurrentCell subclass in my_cells.py beside my_experiment.py.
# ----------------------------------------------------------------------------------
MY_CELLS = '''
import flax.linen as nn
import jax.numpy as jnp

from mnist_jax.models import Option, RecurrentCell


class MyCell(RecurrentCell):
  """h_t = tanh(W_x x_t + b + scale * W_h h_{t-1})."""
  scale: float = 1.0
  OPTIONS = {"scale": Option(1.0, "Multiplies the recurrent term.",
                             lambda v: v > 0, "positive")}

  @nn.nowrap
  def recurrence(self, params, carry, projected):
    h = jnp.tanh(projected + self.scale * carry @ params["kernel"])
    return h, h
'''

MY_EXPERIMENT = '''
from mnist_jax.config import get_config as base_config


def get_config():
  config = base_config()
  config.model.name = "my_cells:MyCell"
  config.model.options.external.scale = 0.5
  config.model.hidden_size = 16
  config.num_epochs = 2
  config.batch_size = 50
  config.eval_batch_size = 64
  config.max_train_examples = 300
  config.max_eval_examples = 300
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.seed = 3
  return config
'''


@pytest.fixture
def experiment(tmp_path):
  """tmp_path/cells/{my_cells.py, my_experiment.py}; returns the experiment's path."""
  folder = tmp_path / "cells"
  folder.mkdir()
  (folder / "my_cells.py").write_text(textwrap.dedent(MY_CELLS))
  (folder / "my_experiment.py").write_text(textwrap.dedent(MY_EXPERIMENT))
  return folder / "my_experiment.py"


def test_cell_beside_experiment_loads_and_sweeps(experiment):
  cfg = config_lib.load_experiment(str(experiment)).get_config()
  resolved = config_lib.resolve(cfg)
  assert resolved.model.cell_file == str(experiment.parent / "my_cells.py")
  assert resolved.model.options.external.to_dict() == {"scale": 0.5}
  assert models.build_model(resolved.model).cell_options == (("scale", 0.5),)
  runs = sweeps.grid(sweeps.axes_for(str(experiment),
                                     ["model.options.external.scale=0.25,2"]))
  sweeps.check_runs(cfg, runs)  # What the sweep checks before starting any process.
  cfg.model.options.external.scale = -1.0  # The cell's own rule (OPTIONS) applies.
  with pytest.raises(ConfigError, match=r"external\.scale=-1\.0 must be positive"):
    config_lib.resolve(cfg)
  cfg.model.options.external.scale = 0.5
  cfg.model.options.external.shift = 1.0
  with pytest.raises(ConfigError, match="MyCell takes no argument 'shift'; it accepts "
                     "scale"):
    config_lib.resolve(cfg)




def _kill_at_step(args, log_path, step, timeout=300):
  """Runs the slowed command, SIGKILLs it once it logs train step `step`."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MAIN.format(delay=0.3, extra=""), *args],
                            cwd=REPO, stdout=log, stderr=log)
  deadline = time.monotonic() + timeout
  while proc.poll() is None and time.monotonic() < deadline:
    logged = [int(s) for s in re.findall(r"\] step (\d+)/\d+ ", log_path.read_text())]
    if logged and logged[-1] >= step:
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  return proc.wait(timeout=60)


def _predictions(workdir):
  found = list((workdir / "eval").glob("test_step*_predictions.csv"))
  assert len(found) == 1, found
  return found[0].name, found[0].read_bytes()


@pytest.mark.slow
def test_own_cell_file_trains_resumes_after_sigkill_and_evaluates_elsewhere(
    experiment, tmp_path, tfds_dir, data_root):
  data_flags = [f"--config.data.tfds_dir={tfds_dir}",
                f"--config.data.manual_dir={data_root / 'mnist'}"]
  # The uninterrupted run, in this process (one CPU device, as --cpu_devices=1).
  reference = tmp_path / "reference"
  cfg = config_lib.override(config_lib.load_experiment(str(experiment)).get_config(), {
      "data.tfds_dir": tfds_dir, "data.manual_dir": str(data_root / "mnist")})
  assert train.train(cfg, str(reference))["completed"]
  evaluate.evaluate_workdir(str(reference), "best", "test")

  workdir = tmp_path / "run"
  args = [f"--config={experiment}", f"--workdir={workdir}", "--cpu_devices=1",
          *data_flags]
  assert _kill_at_step(args, tmp_path / "killed.log", 5) == -signal.SIGKILL
  saved = json.loads((workdir / "config.json").read_text())["model"]
  assert saved["cell_file"] == str(experiment.parent / "my_cells.py")
  assert saved["options"]["external"] == {"scale": 0.5}
  proc = run_main(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  resumed = [int(s) for s in re.findall(r"\] step (\d+)/\d+ ", proc.stderr)]
  assert resumed[0] == 4, resumed  # From the step-3 checkpoint, not from scratch.
  assert _predictions(workdir) == _predictions(reference)

  # A fresh process elsewhere, with nothing on its path, finds my_cells.py again.
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  (workdir / "eval" / _predictions(workdir)[0]).unlink()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, "-m", "mnist_jax.main", "--mode=eval",
                         f"--workdir={workdir}", "--cpu_devices=1"], cwd=elsewhere,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "my_cells:MyCell" in proc.stdout
  assert _predictions(workdir) == _predictions(reference)
