"""Populations (`mnist-jax-sweep --population`): members equal their lone runs, their
workdirs are ordinary ones, a killed population resumes, and what may differ.

The population compiles its matmuls batched over the members (vmap), the lone runs
unbatched, so the two agree to float round-off rather than bitwise: measured here
(2-core x86 CPU, Adam 1e-3), parameters after 24-30 steps differ by at most 4.5e-8,
test probabilities by 1e-6 (the CSV's 6 digits), test accuracy and loss not at all;
the tolerances below leave a margin of 100x or more. (Larger learning rates amplify
the round-off: with Adam at 0.05 the parameters differ by up to ~5e-3 after 24 steps,
through near-zero gradients whose sign flips.) A population resumed from its
checkpoints runs the same program as the uninterrupted one: there the comparison is
bitwise.
"""

import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, metric_rows, one_line_error, run_main, tiny_config
from mnist_jax import checkpoints
from mnist_jax import data
from mnist_jax import population
from mnist_jax import population_step
from mnist_jax import steps
from mnist_jax import sweeps
from mnist_jax import train
from mnist_jax.errors import ConfigError, UserError, WorkdirError
from mnist_jax.workdir import Workdir

SEEDS = (0, 1, 2)
# tiny_config's 300 training images in batches of 50 (Adam 1e-3, the recipe's): 6 steps
# an epoch, 5 epochs. With patience 1, seeds 1 and 2 stop early after epoch 4 (their
# validation accuracy drops by 3 images), seed 0 trains to step 30. Checkpoints
# every 4 steps and at epoch ends.
RUN = {"num_epochs": 5, "early_stopping_patience": 1, "checkpoint_every_steps": 4}
FINAL_STEPS = {0: 30, 1: 24, 2: 24}
PARAMS_TOL, PROBS_TOL = 1e-5, 1e-4
# One step, population against lone: float32 matmuls on a GPU may round through TF32.
STEP_TOL = 1e-6 if jax.default_backend() == "cpu" else 1e-4


def _sweep_cmd(sweep_dir, tfds_dir, data_root, *extra) -> list[str]:
  cfg = {"data.tfds_dir": tfds_dir, "data.manual_dir": data_root / "mnist",
         "batch_size": 50, "eval_batch_size": 64, "max_train_examples": 300,
         "max_eval_examples": 300, "model.hidden_size": 16, "log_every_steps": 2,
         **RUN}
  return ["--config=experiments/seed_lstm.py", f"--workdir={sweep_dir}",
          *[f"--config.{k}={v}" for k, v in cfg.items()],
          f"--sweep=seed={','.join(map(str, SEEDS))}", "--population", *extra]


def _run_sweep(args, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "mnist_jax.sweep", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def _state(workdir, step=None) -> dict:
  """A checkpoint's step, params and optimizer state as NumPy (latest by default)."""
  config = Workdir.open(str(workdir)).config
  store = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                      read_only=True)
  step = store.latest_step() if step is None else step
  target = steps.create_train_state(config, jax.random.PRNGKey(config.seed), 6)
  state, _ = store.restore(step, target)
  steps_held = sorted(store.steps())
  store.close()
  return {"step": int(state.step), "steps": steps_held,
          "leaves": [np.asarray(x) for x in jax.tree.leaves(
              (state.params, state.opt_state, state.rng))]}


def _max_diff(a: dict, b: dict) -> float:
  return max(float(np.abs(x.astype(np.float64) - y).max())
             for x, y in zip(a["leaves"], b["leaves"]))


def _test_eval(workdir) -> tuple[dict, np.ndarray]:
  """The test metrics training wrote, and the predictions' probabilities."""
  (metrics_file,) = pathlib.Path(workdir, "eval").glob("test_step*_metrics.json")
  csv_file = str(metrics_file).replace("metrics.json", "predictions.csv")
  probs = np.loadtxt(csv_file, delimiter=",", skiprows=1)[:, 4:]
  return json.loads(metrics_file.read_text()), probs


@pytest.fixture(scope="module")
def pop(tmp_path_factory, tfds_dir, data_root) -> pathlib.Path:
  """The population of SEEDS, trained by the sweep command; its sweep folder."""
  sweep_dir = tmp_path_factory.mktemp("population") / "pop"
  proc = _run_sweep(_sweep_cmd(sweep_dir, tfds_dir, data_root))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "3 done" in proc.stdout
  return sweep_dir


@pytest.fixture(scope="module")
def lone(tmp_path_factory, tfds_dir, data_root) -> dict[int, pathlib.Path]:
  """Each seed trained alone (train_and_evaluate, in this one-device process)."""
  root = tmp_path_factory.mktemp("lone")
  for seed in SEEDS:
    train.train_and_evaluate(tiny_config(tfds_dir, data_root, seed=seed, **RUN),
                             str(root / f"seed={seed}"))
  return {seed: root / f"seed={seed}" for seed in SEEDS}


# ----------------------------------------------------------------------------------
# Each member is its lone run.
# ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_members_equal_their_lone_runs(pop, lone):
  for seed in SEEDS:
    member, alone = pop / f"seed={seed}", lone[seed]
    a, b = _state(member), _state(alone)
    # The same early stopping and checkpoints (seeds 1 and 2 stop after epoch 4).
    assert (a["step"], a["steps"]) == (b["step"], b["steps"])
    assert a["step"] == FINAL_STEPS[seed]
    assert _max_diff(a, b) < PARAMS_TOL, (seed, _max_diff(a, b))
    rows, lone_rows = metric_rows(member), metric_rows(alone)
    assert rows.keys() == lone_rows.keys()
    for key, row in rows.items():
      for name, value in row.items():
        want = lone_rows[key][name]
        assert (value == pytest.approx(want, abs=1e-4) if isinstance(value, float)
                else value == want), (seed, key, name, value, want)
    (metrics, probs), (lone_metrics, lone_probs) = _test_eval(member), _test_eval(alone)
    assert metrics["checkpoint_step"] == lone_metrics["checkpoint_step"]
    assert abs(metrics["accuracy"] - lone_metrics["accuracy"]) <= 0.002
    assert np.abs(probs - lone_probs).max() < PROBS_TOL
    info = json.loads((member / "run_info.json").read_text())
    assert info["status"] == "completed" and info["placement"].startswith(
        "population of 3")
    assert (member / "report" / "report.md").exists()
  assert len({_state(pop / f"seed={s}")["step"] for s in SEEDS}) == 2


@pytest.mark.slow
def test_the_step_equals_the_lone_step_and_leaves_inactive_members_alone(
    make_tiny_config):
  """With dropout and shift augmentation: each member draws its own lone run's keys."""
  configs = [make_tiny_config(seed=s, **{"model.dropout": 0.3}) for s in SEEDS]
  states = [steps.create_train_state(c, jax.random.PRNGKey(c.seed), 6) for c in configs]
  options = {"preprocess": data.make_preprocess(configs[0].data),
             "augment_max_shift": 2}
  lone_step = jax.jit(lambda s, b: steps.train_step(s, b, **options))
  step = population_step.make_step(options)
  rng = np.random.default_rng(0)
  batches = {"image": rng.integers(0, 256, (3, 3, 8, 28, 28), dtype=np.uint8),
             "label": rng.integers(0, 10, (3, 3, 8)).astype(np.int32)}
  stacked = population_step.stack(states)
  rates, active = np.full(3, 1e-3, np.float32), np.array([True, False, True])
  for t in range(3):
    stacked, metrics = step(stacked, rates, active,
                            {k: v[t] for k, v in batches.items()})
    for i in (0, 2):
      states[i], lone_metrics = lone_step(states[i],
                                          {k: v[t, i] for k, v in batches.items()})
      assert float(metrics["loss"][i]) == pytest.approx(float(lone_metrics["loss"]),
                                                        abs=STEP_TOL)
  for i in range(3):
    got = jax.tree.leaves(population_step.member(stacked, i, states[i]))
    want = jax.tree.leaves(states[i])
    if i == 1:  # Inactive: exactly its initial state.
      for x, y in zip(got, want):
        np.testing.assert_array_equal(x, y)
    else:
      assert max(float(np.abs(np.asarray(x, np.float64) - np.asarray(y)).max())
                 for x, y in zip(got, want)) < STEP_TOL


@pytest.mark.slow
def test_learning_rates_may_differ_and_match_lone_runs(make_tiny_config, tmp_path):
  """Members with different rates step with their rate traced in one program."""
  rates = (0.001, 0.003)
  configs = [make_tiny_config(seed=1, num_epochs=1, **{"optimizer.learning_rate": r})
             for r in rates]
  out = population.train_and_evaluate(
      configs, [str(tmp_path / f"pop/lr={r}") for r in rates])
  assert [o["status"] for o in out] == ["completed"] * 2
  for rate, config in zip(rates, configs):
    train.train(config, str(tmp_path / f"lone/lr={rate}"))
    a, b = _state(tmp_path / f"pop/lr={rate}"), _state(tmp_path / f"lone/lr={rate}")
    assert _max_diff(a, b) < PARAMS_TOL
  assert _max_diff(_state(tmp_path / "pop/lr=0.001"),
                   _state(tmp_path / "pop/lr=0.003")) > 1e-3


@pytest.mark.slow
def test_a_non_finite_member_fails_alone(make_tiny_config, tmp_path, capsys):
  """Learning rate 1e38: within a few steps that member's parameters overflow (Adam
  steps by about the rate); the other trains on."""
  configs = [make_tiny_config(seed=0, num_epochs=1, **{"optimizer.learning_rate": r})
             for r in (1e-3, 1e38)]
  workdirs = [str(tmp_path / "good"), str(tmp_path / "bad")]
  out = population.train_and_evaluate(configs, workdirs)
  assert [o["status"] for o in out] == ["completed", "failed"]
  assert out[0]["test"]["accuracy"] > 0 and out[1]["test"] is None
  assert "[population] bad failed: non-finite" in capsys.readouterr().out
  assert json.loads((tmp_path / "bad" / "run_info.json").read_text())["status"] == (
      "failed")
  assert _state(tmp_path / "good")["step"] == 6


# ----------------------------------------------------------------------------------
# Ordinary workdirs: the sweep summary, reports and predictions read them.
# ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_summary_report_and_predict_read_the_members(pop, lone, tmp_path, tfds_dir,
                                                     data_root):
  import csv
  with open(pop / "summary.csv") as f:
    (row,) = list(csv.DictReader(f))
  assert (row["runs"], row["finished"]) == ("3", "3")
  accuracies = [_test_eval(pop / f"seed={s}")[0]["accuracy"] for s in SEEDS]
  assert float(row["test_accuracy_mean"]) == pytest.approx(np.mean(accuracies))
  members = [str(pop / f"seed={s}") for s in SEEDS]
  proc = run_main("--mode=report", f"--workdir={tmp_path / 'compare'}",
                  f"--workdirs={','.join(members)}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  table = (tmp_path / "compare" / "comparison.md").read_text()
  assert all(f"seed={s}" in table for s in SEEDS)
  from PIL import Image
  from mnist_jax import predict
  image = data.load_splits(tiny_config(tfds_dir, data_root))["test"].images[0]
  Image.fromarray(image).save(tmp_path / "digit.png")
  proc = run_main("--mode=predict", f"--workdir={members[1]}", "--json",
                  str(tmp_path / "digit.png"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  (got,) = json.loads(proc.stdout[proc.stdout.index("["):])
  (want,) = predict.predict_files(predict.Predictor(str(lone[1])),
                                  [str(tmp_path / "digit.png")])
  assert got["digit"] == want["digit"]
  assert np.abs(np.subtract(got["probabilities"], want["probabilities"])).max() < 1e-4


# ----------------------------------------------------------------------------------
# Resuming.
# ----------------------------------------------------------------------------------
_SLOW_SWEEP = """
import time
from mnist_jax import data
_batches = data.train_batches
def _slow(*args, **kwargs):
  for batch in _batches(*args, **kwargs):
    time.sleep(0.3)
    yield batch
data.train_batches = _slow
from mnist_jax.sweep import run
run()
"""


def _kill_after(args, log_path: pathlib.Path, step: int, timeout=300) -> int:
  """Starts the slowed sweep, SIGKILLs it once a member logged step `step`."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SWEEP, *args], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + timeout
  while proc.poll() is None and time.monotonic() < deadline:
    logged = [int(s) for s in re.findall(r"\] step (\d+)/\d+ ", log_path.read_text())]
    if logged and max(logged) >= step:
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  return proc.wait(timeout=60)


@pytest.mark.slow
def test_sigkill_then_resume_from_the_oldest_common_step(pop, tmp_path, tfds_dir,
                                                         data_root):
  """Killed at step 22; seed=2's latest checkpoint (20) is then removed, as if the
  kill had come between two members' saves: seeds 0 and 1 go back to seed 2's step
  (18) and all train on, seeds 1 and 2 stopping early again. The result is the
  uninterrupted population's, bitwise."""
  sweep_dir = tmp_path / "pop"
  args = _sweep_cmd(sweep_dir, tfds_dir, data_root)
  rc = _kill_after(args, tmp_path / "killed.log", 22)
  assert rc == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
  held = {s: _state(sweep_dir / f"seed={s}")["steps"] for s in SEEDS}
  assert {max(h) for h in held.values()} == {20}, held
  shutil.rmtree(sweep_dir / "seed=2" / "checkpoints" / "20")
  proc = _run_sweep(args)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "seed=0: back from step 20 to step 18" in proc.stderr
  assert "seed=1: back from step 20 to step 18" in proc.stderr
  for seed in SEEDS:
    member, reference = sweep_dir / f"seed={seed}", pop / f"seed={seed}"
    a, b = _state(member), _state(reference)
    assert a["steps"] == b["steps"]
    for x, y in zip(a["leaves"], b["leaves"]):
      np.testing.assert_array_equal(x, y)
    assert metric_rows(member) == metric_rows(reference)
    assert _test_eval(member)[0] == _test_eval(reference)[0]


def test_members_that_cannot_restart_together_are_refused():
  """A member ahead that no longer holds the others' step: one line, nothing removed."""

  class Store:
    def __init__(self, held):
      self.held, self.directory = held, "w/checkpoints"

    def latest_step(self):
      return max(self.held, default=None)

    def steps(self):
      return list(self.held)

    def delete(self, step):
      raise AssertionError("nothing may be removed")

  class Run:
    def __init__(self, held):
      self.store, self.step = Store(held), 0

    def resume(self, step):
      self.step = step or 0

    def early_stopped(self):
      return False

  runs = [Run([12]), Run([4, 8])]  # keep_checkpoints=1, say: 8 is gone from the first.
  with pytest.raises(WorkdirError, match=r"member a is at step 12 but holds no "
                                         r"checkpoint at step 8, where b restarts"):
    population._resume(runs, ["a", "b"], total_steps=24)  # pylint: disable=W0212
  resume = population._resume  # pylint: disable=protected-access
  assert resume([Run([8]), Run([8])], ["a", "b"], 24) == [True, True]


# ----------------------------------------------------------------------------------
# What may differ, and where a population runs.
# ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_only_seed_and_learning_rate_may_differ(tmp_path, tfds_dir, data_root):
  proc = _run_sweep(_sweep_cmd(tmp_path / "sweep", tfds_dir, data_root,
                               "--sweep=model.hidden_size=8,16"), timeout=300)
  line = one_line_error(proc)
  assert "may differ only in seed and optimizer.learning_rate" in line
  assert "model.hidden_size (8, 16)" in line
  assert not (tmp_path / "sweep").exists()
  base = tiny_config(tfds_dir, data_root)
  members = [tiny_config(tfds_dir, data_root, seed=s, **{"optimizer.learning_rate": r})
             for s, r in ((0, 1e-3), (1, 3e-3))]
  population.check_members(members)  # Seed and learning rate: allowed.
  with pytest.raises(ConfigError, match=r"these differ: num_epochs \(2, 3\)"):
    population.check_members([base, tiny_config(tfds_dir, data_root, num_epochs=3)])
  cudnn = tiny_config(tfds_dir, data_root)
  cudnn.model.options.lstm.implementation = "cudnn"  # No batching rule: refused.
  with pytest.raises(ConfigError, match="which cuDNN's LSTM cannot be"):
    population.check_members([cudnn, cudnn])
  for flag in (dict(parallel=2), dict(launcher="slurm"), dict(cpu_devices=2)):
    with pytest.raises(UserError, match="--population trains every run in this one "
                                        "process, on one device: drop --"):
      sweeps.run_sweep("experiments/seed_lstm.py", base, str(tmp_path / "s"),
                       ["seed=0,1"], flag.get("parallel"), [], population=True,
                       launcher=flag.get("launcher", "local"),
                       cpu_devices=flag.get("cpu_devices"))


# ----------------------------------------------------------------------------------
# benchmarks/population.py.
# ----------------------------------------------------------------------------------
BENCHMARK = REPO / "benchmarks" / "population.py"


@pytest.mark.slow
def test_benchmark_runs_without_ml_collections_or_tensorflow(tmp_path):
  block = tmp_path / "block"
  for name in ("ml_collections", "tensorflow", "tensorflow_datasets"):
    (block / name).mkdir(parents=True)
    (block / name / "__init__.py").write_text(f"raise ImportError('no {name}')\n")
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, str(BENCHMARK), "--members=1,2", "--steps=2",
                         "--repeats=1", "--hidden=8", f"--json_out={out}"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(block)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())["results"]
  assert [r["members"] for r in results] == [1, 2]
  assert all(r["examples_per_s_per_member"] > 0 for r in results)


def test_benchmark_config_is_the_seed_lstm_experiment():
  spec = importlib.util.spec_from_file_location("population_benchmark", BENCHMARK)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  from mnist_jax import config as config_lib
  from mnist_jax import models
  real = config_lib.resolve(config_lib.from_experiment(
      str(REPO / "experiments" / "seed_lstm.py")))
  ours = bench.seed_lstm_config()
  assert models.build_model(ours.model) == models.build_model(real.model)
  assert ours.batch_size == real.batch_size
  for name, value in vars(ours.optimizer).items():
    assert real.optimizer[name] == value, name
  a = steps.create_train_state(ours, jax.random.PRNGKey(0), 550)
  b = steps.create_train_state(real, jax.random.PRNGKey(0), 550)
  assert jax.tree.structure(a.opt_state) == jax.tree.structure(b.opt_state)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
