"""Data parallelism: several processes (jax.distributed + gloo) and several local devices.

Each run is a fresh `python -m mnist_jax.main` on a tiny real-MNIST subset (4 steps of
a global batch of 50), killed if it outlives `_TIMEOUT`. Runs with 2 processes or 2
devices must train to the parameters of the 1-device run and evaluate every example
exactly once.
"""

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, run_main
from mnist_jax import checkpoints
from mnist_jax import cluster_env
from mnist_jax import distributed
from mnist_jax import steps
from mnist_jax.workdir import Workdir
from mnist_jax.errors import ConfigError

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

_TIMEOUT = 240  # Seconds per command; a run takes ~25 s alone, ~45 s as 2 processes.
_STEPS = 4  # 200 training examples / global batch 50, one epoch.


def _args(workdir, tfds_dir, data_root, *extra):
  return ["--config=experiments/seed_lstm.py", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}",
          f"--config.data.manual_dir={data_root / 'mnist'}",
          "--config.num_epochs=1", "--config.max_train_examples=200",
          "--config.max_eval_examples=200", "--config.batch_size=50",
          # 200 = 3 x 64 + 8: the last eval batch is padded, and 64 splits over 2.
          "--config.eval_batch_size=64", "--config.model.hidden_size=16",
          "--config.log_every_steps=2", *extra]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(args: list[str], num: int, logdir) -> list[str]:
  """Runs `num` processes of main with a local coordinator; returns their outputs."""
  port = _free_port()
  procs, logs = [], []
  for i in range(num):
    log = open(logdir / f"process_{i}.log", "w+")
    logs.append(log)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "mnist_jax.main", *args,
         f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num}",
         f"--process_id={i}"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True))
  deadline = time.monotonic() + _TIMEOUT
  try:
    for p in procs:
      p.wait(timeout=max(deadline - time.monotonic(), 1))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs:  # SIGKILL: jax.distributed traps SIGTERM for preemption.
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{outputs[i][-3000:]}"
  return outputs


def _check(proc: subprocess.CompletedProcess) -> None:
  assert proc.returncode == 0, proc.stderr[-3000:]


def _state(workdir, step: int = _STEPS):
  """The train state of checkpoint `step`, restored in this (1-device) process."""
  cfg = Workdir.open(str(workdir)).config
  target = steps.create_train_state(cfg, jax.random.PRNGKey(cfg.seed), _STEPS)
  store = checkpoints.CheckpointStore(str(workdir / "checkpoints"), read_only=True)
  state, _ = store.restore(step, target)
  store.close()
  return jax.device_get(state)


def _results(workdir) -> dict:
  """Test metrics, predictions and logged metrics a run left in its workdir."""
  [metrics_file] = (workdir / "eval").glob("test_step*_metrics.json")
  with open(str(metrics_file).replace("_metrics.json", "_predictions.csv")) as f:
    rows = list(csv.DictReader(f))
  return {
      "metrics": json.loads(metrics_file.read_text()),
      "indices": [int(r["index"]) for r in rows],
      "labels": [int(r["label"]) for r in rows],
      "predicted": [int(r["predicted"]) for r in rows],
      "logged": [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()],
  }


def _assert_same_training(workdir, reference) -> None:
  a, b = _state(workdir), _state(reference)
  assert int(a.step) == int(b.step) == _STEPS
  flat_a, flat_b = jax.tree.leaves(a.params), jax.tree.leaves(b.params)
  assert len(flat_a) == len(flat_b)
  for x, y in zip(flat_a, flat_b):
    # Only the order of the batch-mean reduction differs: float round-off, not data.
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _assert_same_results(results: dict, reference: dict) -> None:
  m, ref = results["metrics"], reference["metrics"]
  assert m["num_examples"] == ref["num_examples"] == 200
  assert results["indices"] == list(range(200))  # Every example once, in order.
  assert results["labels"] == reference["labels"]
  assert results["predicted"] == reference["predicted"]
  assert m["accuracy"] == ref["accuracy"]
  assert m["confusion_matrix"] == ref["confusion_matrix"]
  assert m["loss"] == pytest.approx(ref["loss"], rel=1e-5)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, tfds_dir, data_root):
  workdir = tmp_path_factory.mktemp("one_device") / "run"
  proc = run_main(*_args(workdir, tfds_dir, data_root, "--cpu_devices=1"),
                  timeout=_TIMEOUT)
  _check(proc)
  assert "Devices: one device" in proc.stderr, proc.stderr[-2000:]
  return workdir, _results(workdir)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tfds_dir, data_root):
  logdir = tmp_path_factory.mktemp("two_processes")
  workdir = logdir / "run"
  outputs = _run_processes(_args(workdir, tfds_dir, data_root), 2, logdir)
  return workdir, _results(workdir), outputs


def test_two_processes_train_and_evaluate_like_one(two_processes, one_device):
  workdir, results, outputs = two_processes
  _assert_same_training(workdir, one_device[0])
  _assert_same_results(results, one_device[1])
  assert "process 1 of 2" in outputs[1] and "1 local / 2 global devices" in outputs[1]
  assert len(results["logged"]) == len(one_device[1]["logged"])  # None missing.
  for logged, ref in zip(results["logged"], one_device[1]["logged"]):
    assert (logged["split"], logged["step"]) == (ref["split"], ref["step"])
    assert logged["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_only_process_zero_writes(two_processes):
  workdir, results, outputs = two_processes
  events = [(r["split"], r["step"]) for r in results["logged"]]
  assert events == [("train", 2), ("train", 4), ("validation", 4)]  # Not twice.
  assert sorted(os.listdir(workdir / "checkpoints")) == [str(_STEPS)]
  assert "confusion matrix" in outputs[0] and "Report:" in outputs[0]
  assert "confusion matrix" not in outputs[1] and "Report:" not in outputs[1]
  assert not [f for f in os.listdir(workdir) if ".tmp-" in f]


def test_two_process_checkpoint_restores_in_one_process(two_processes, tfds_dir):
  workdir, results, _ = two_processes
  copy = workdir.parent / "evaluated_again"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "eval")  # The evaluation must write it again, not find it.
  proc = run_main("--mode=eval", f"--workdir={copy}", "--checkpoint=latest",
                  timeout=_TIMEOUT)
  _check(proc)
  _assert_same_results(_results(copy), results)


def test_two_local_devices_train_and_evaluate_like_one(tmp_path, tfds_dir, data_root,
                                                       one_device):
  # --cpu_devices=2: parallel.CpuReplicas splits each batch of 50 into 25 + 25 and
  # averages the two gradients on device 0 (no XLA collectives).
  workdir = tmp_path / "run"
  proc = run_main(*_args(workdir, tfds_dir, data_root, "--cpu_devices=2"),
                  timeout=_TIMEOUT)
  _check(proc)
  assert "Devices: 2 CPU devices" in proc.stderr, proc.stderr[-2000:]
  _assert_same_training(workdir, one_device[0])
  _assert_same_results(_results(workdir), one_device[1])


def test_xla_flags_device_count_is_kept_and_uneven_shards_evaluate_like_one(
    one_device):
  # XLA_FLAGS' device count wins over the default; 64 rows on 3 devices: 21, 21, 22.
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
  workdir = one_device[0]
  proc = run_main("--mode=eval", f"--workdir={workdir}", "--checkpoint=latest",
                  env=env, timeout=_TIMEOUT)
  _check(proc)
  assert "Devices: 3 CPU devices" in proc.stderr, proc.stderr[-2000:]
  _assert_same_results(_results(workdir), one_device[1])


def test_cpu_devices_below_one_is_one_line_error(one_device):
  proc = run_main("--mode=eval", f"--workdir={one_device[0]}", "--cpu_devices=0",
                  timeout=_TIMEOUT)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last == "error: --cpu_devices=0 must be at least 1 (1: no replicas).", \
      proc.stderr[-2000:]


def _start_processes(args: list[str], num: int, logdir) -> list[subprocess.Popen]:
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, "-m", "mnist_jax.main", *args,
       f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num}",
       f"--process_id={i}"],
      cwd=REPO, stdout=open(logdir / f"process_{i}.log", "w"),
      stderr=subprocess.STDOUT, text=True) for i in range(num)]


def test_signal_to_one_process_stops_all_at_the_same_step(tmp_path, tfds_dir,
                                                          data_root):
  # A pod scheduler may preempt one host only. The process that got SIGTERM must not
  # leave alone (the others would block in their next all-reduce): all processes
  # agree, stop after the same step, save one checkpoint together and exit 0.
  workdir = tmp_path / "run"
  args = _args(workdir, tfds_dir, data_root, "--config.max_train_examples=2000",
               "--config.num_epochs=50")  # 2,000 steps: still running when signalled.
  procs = _start_processes(args, 2, tmp_path)
  log1 = tmp_path / "process_1.log"
  try:
    deadline = time.monotonic() + _TIMEOUT
    while "step 4/" not in log1.read_text():  # Training has started on process 1.
      assert procs[1].poll() is None, log1.read_text()[-3000:]
      assert time.monotonic() < deadline, "training did not start"
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # Process 0 (the coordinator) gets nothing.
    # Steps are logged every 2: the step being trained was at most 2 past this one.
    logged_at_signal = int(re.findall(r"step (\d+)/", log1.read_text())[-1])
    for p in procs:
      p.wait(timeout=_TIMEOUT)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{outputs[i][-3000:]}"
  stops = [re.search(r"Stopped by (.+) at step (\d+);", out) for out in outputs]
  assert all(stops), [out[-2000:] for out in outputs]
  assert stops[1].group(1) == "SIGTERM"
  assert stops[0].group(1) == "a signal to process 1"
  step = int(stops[0].group(2))
  assert int(stops[1].group(2)) == step
  # Processes share their stop flags every 10 steps: the stop comes within 10 steps.
  assert logged_at_signal <= step <= logged_at_signal + 2 + 10, (logged_at_signal, step)
  assert int(_state(workdir, step).step) == step  # The shared checkpoint restores.
  assert not [f for f in os.listdir(workdir / "checkpoints") if "tmp" in f]


def test_concurrent_prepare_of_one_data_dir(tmp_path, data_root):
  # Processes of one job starting together on a shared, unprepared data dir: one
  # prepares under a file lock, the others wait and reuse it.
  script = ("import sys; from mnist_jax import config as c, datasets; "
            "cfg = c.get_config(); cfg.data.tfds_dir = sys.argv[1]; "
            "cfg.data.manual_dir = sys.argv[2]; b = datasets.prepare(cfg.data); "
            "print(b.info.splits['train'].num_examples, "
            "b.info.splits['test'].num_examples)")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "tfds"),
                             str(data_root / "mnist")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outputs = []
  for p in procs:
    out, err = p.communicate(timeout=_TIMEOUT)
    assert p.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1].split() == ["60000", "10000"]
    outputs.append(out + err)
  # tfds announces the work it does: exactly one process prepared the dataset.
  assert sum("Downloading and preparing" in out for out in outputs) == 1, outputs
  assert [d for d in os.listdir(tmp_path / "tfds" / "mnist")] == ["3.0.1"]


# ----------------------------------------------------------------------------------
# initialize(): which environment it reads, and its one-line errors (no JAX started).
# ----------------------------------------------------------------------------------
_CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                 "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE")


@pytest.fixture
def plain_env(monkeypatch):
  for var in _CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(cluster_env, "_on_tpu_vm", lambda: False)
  return monkeypatch


def test_single_process_needs_no_setup(plain_env):
  assert cluster_env.detect_cluster() is None
  assert distributed.initialize() is False


def test_detects_slurm_and_open_mpi_only_with_several_tasks(plain_env):
  for var, value in {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]",
                     "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                     "SLURM_LOCALID": "0"}.items():
    plain_env.setenv(var, value)
  assert cluster_env.detect_cluster() is None  # One task: a plain run.
  plain_env.setenv("SLURM_NTASKS", "2")
  assert cluster_env.detect_cluster() == "slurm"
  plain_env.delenv("SLURM_JOB_ID")
  plain_env.setenv("OMPI_MCA_orte_hnp_uri", "123.0;tcp://10.0.0.1:5000")
  plain_env.setenv("OMPI_COMM_WORLD_SIZE", "4")
  assert cluster_env.detect_cluster() == "ompi"


@pytest.mark.parametrize("kwargs,phrase", [
    ({"num_processes": 2, "process_id": 0}, "--coordinator_address=HOST:PORT"),
    ({"coordinator_address": "127.0.0.1:1234"}, "must all be given"),
    ({"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 2},
     "--process_id=2 must be in [0, 2)"),
    ({"coordinator_address": "127.0.0.1:1234", "num_processes": 0, "process_id": 0},
     "--num_processes=0 must be at least 1"),
])
def test_inconsistent_arguments_are_config_errors(plain_env, kwargs, phrase):
  with pytest.raises(ConfigError, match=None) as e:
    distributed.initialize(**kwargs)
  assert phrase in str(e.value) and "\n" not in str(e.value)


def test_cpu_device_count_logic_and_its_warnings(monkeypatch, caplog):
  """The default is one device per CPU this process may use, capped; an environment
  that already sets the count wins, and an explicit --cpu_devices then says so."""
  set_to = []
  monkeypatch.setattr(jax.config, "update", lambda key, value: set_to.append(value))
  for var in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
  assert distributed.set_cpu_devices(None) == distributed.MAX_AUTO_CPU_DEVICES == 8
  assert distributed.set_cpu_devices(3) == 3
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # taskset -c 0,1
  assert distributed.set_cpu_devices(None) == 2
  assert set_to == [8, 3, 2]
  for var, value in (("JAX_NUM_CPU_DEVICES", "4"),
                     ("XLA_FLAGS", "--xla_force_host_platform_device_count=5")):
    with monkeypatch.context() as m:
      m.setenv(var, value)
      caplog.clear()
      assert distributed.set_cpu_devices(None) is None
      assert not caplog.records  # Nothing asked for, nothing to warn about.
      assert distributed.set_cpu_devices(2) is None
      assert f"--cpu_devices=2 ignored: {var} sets the CPU device count" in caplog.text
  assert set_to == [8, 3, 2]  # The environment's count was left alone.


def test_resume_on_another_device_count_continues(tmp_path, tfds_dir, data_root):
  """Checkpoints live on one device whatever the placement: an epoch trained on two
  CPU devices resumes on one (not bitwise: shards sum in another order)."""
  workdir = tmp_path / "run"
  _check(run_main(*_args(workdir, tfds_dir, data_root, "--cpu_devices=2"),
                  timeout=_TIMEOUT))
  proc = run_main(*_args(workdir, tfds_dir, data_root, "--cpu_devices=1",
                         "--config.num_epochs=2"), timeout=_TIMEOUT)
  _check(proc)
  assert f"Resumed from checkpoint at step {_STEPS}" in proc.stderr
  logged = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged if r["split"] == "validation"] == [_STEPS,
                                                                       2 * _STEPS]
  assert int(_state(workdir, 2 * _STEPS).step) == 2 * _STEPS
