"""benchmarks/benchmark.py measures a tiny config end to end (JAX side, no torch).

Only that the numbers exist and make sense is checked; speed is never asserted.
"""

import importlib.util
import math
import pathlib
import sys

import pytest

from mnist_jax import config as config_lib

BENCHMARK = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark.py"


@pytest.fixture(scope="module")
def bench():
  """benchmark.py as a module; its siblings import as they do when it runs as a script."""
  sys.path.insert(0, str(BENCHMARK.parent))
  try:
    spec = importlib.util.spec_from_file_location("benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(BENCHMARK.parent))
  return module


def _tiny_config(**model):
  config = config_lib.get_config()
  config.batch_size = 8
  config.eval_batch_size = 16
  config.model.hidden_size = 8
  return config_lib.override(config, {f"model.{k}": v for k, v in model.items()})


def _positive_finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", [{"name": "lstm"},
                                   {"name": "gru", "bidirectional": True},
                                   {"name": "simple_rnn", "num_layers": 2,
                                    "options.simple_rnn.activation": "relu"}])
def test_measure_reports_positive_finite_numbers(bench, model):
  peak = bench.costs.matmul_gflops(64, 32, 32, iterations=10)
  assert _positive_finite(peak)
  result = bench.measure(_tiny_config(**model), compare=None, repeats=2,
                             min_repeat_s=0.0, warmup_steps=1, peak_gflops=peak)
  assert "torch" not in result
  jax_side = result["jax"]
  for key in ("train_examples_per_s", "eval_examples_per_s", "train_compile_s",
              "eval_compile_s", "train_gflops", "eval_gflops", "train_fraction_of_peak",
              "train_fraction_of_recurrent_shape", "peak_rss_mib"):
    assert _positive_finite(jax_side[key]), (key, jax_side[key])
  assert len(jax_side["train_examples_per_s_repeats"]) == 2
  assert all(_positive_finite(v) for v in jax_side["train_examples_per_s_repeats"])
  assert _positive_finite(jax_side["xla_train_step_mib"]["arguments"])
  assert _positive_finite(result["matmul"]["recurrent_shape_gflops"])
  flops = result["flops_per_example"]
  assert flops["train"] == 3 * flops["forward"] > 0
  # The table renders without a torch column; the run's label names the cell.
  assert "train ex/s" in bench.tables.format_table([("tiny", result)])
  assert bench.tables.describe(config_lib.override(_tiny_config(), {
      "model.name": "simple_rnn", "model.options.simple_rnn.activation": "relu"})
  ) == "SimpleRNN(8), 1 layer, relu; rows T=28"


def test_flops_count_the_matmuls(bench):
  # LSTM(100), rows: 28 steps x 2 * 400 * (28 + 100), plus the 100 -> 10 head.
  config = config_lib.get_config()
  forward = bench.costs.flops_per_example(config)["forward"]
  assert forward == 28 * 2 * 400 * (28 + 100) + 2 * 100 * 10
  # Bidirectional, two layers: the second layer reads both directions.
  config.model.bidirectional = True
  config.model.num_layers = 2
  forward = bench.costs.flops_per_example(config)["forward"]
  assert forward == (2 * 28 * 2 * 400 * (28 + 100) + 2 * 28 * 2 * 400 * (200 + 100)
                     + 2 * 200 * 10)


def test_every_preset_is_described(bench):
  """The labels of the benchmark's presets (what `--preset=all` prints first)."""
  for name, (path, overrides) in bench.PRESETS.items():
    config = config_lib.override(config_lib.from_experiment(
        str(BENCHMARK.parents[1] / "experiments" / path)), overrides)
    assert bench.tables.describe(config).split("(")[0] in ("LSTM", "GRU", "SimpleRNN"), name


@pytest.mark.slow
@pytest.mark.parametrize("model", [{"name": "lstm"},
                                   {"name": "gru", "bidirectional": True},
                                   {"name": "irnn", "num_layers": 2,
                                    "readout": "mean", "dropout": 0.1}])
def test_torch_side_reports_positive_finite_numbers(bench, model):
  pytest.importorskip("torch", reason="PyTorch is the optional [bench] extra")
  result = bench.measure(_tiny_config(**model), compare="torch", repeats=2,
                         min_repeat_s=0.0, warmup_steps=1, peak_gflops=1.0)
  torch_side = result["torch"]
  for key in ("train_examples_per_s", "eval_examples_per_s", "train_gflops",
              "peak_rss_mib"):
    assert _positive_finite(torch_side[key]), (key, torch_side[key])
  assert " | " in bench.tables.format_table([("tiny", result)])
