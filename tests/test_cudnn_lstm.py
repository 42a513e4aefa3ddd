"""cuDNN LSTM (`model.options.lstm.implementation="cudnn"`) against the scan, on CPU.

cuDNN itself needs a CUDA GPU. On a CPU, `jax.experimental.rnn.lstm_ref` (JAX's own
reference of cuDNN's LSTM, read through `unpack_lstm_weights`, i.e. cuDNN's packed
layout) stands in for it: if our packing of the cell's parameters puts one number in
the wrong place (a gate, a transpose, a bias), the outputs or gradients differ from
the scan's. On a GPU, `test_real_cudnn_matches_scan` runs the real thing.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from conftest import one_line_error, run_main
from conftest import quick_subset
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError
from mnist_jax.models import cudnn_lstm

BATCH, TIME, FEATURES, HIDDEN = 3, 7, 5, 6
# One layer; a stack of bidirectional ones (in the full suite only).
LAYOUTS = quick_subset([(1, False), (2, True)], keep=[(1, False)])
# benchmarks/gpu_check.sh runs this file on a GPU too: there the refusals do not apply.
ON_CUDA = not cudnn_lstm.machine_error() and jax.default_backend() == "gpu"
cpu_only = pytest.mark.skipif(ON_CUDA, reason="tests the refusal off a CUDA GPU")


@pytest.fixture(autouse=True)
def full_float32():
  """Float32 matmuls everywhere (a GPU would use TF32, ~3 digits, on both sides)."""
  with jax.default_matmul_precision("highest"):
    yield


def _reference_lstm(x, h_0, c_0, weights, seq_lengths, *, input_size, hidden_size,
                    num_layers, dropout, bidirectional, precision=None):
  """`rnn.lstm`'s signature, computed by `rnn.lstm_ref` from the packed weights."""
  del precision
  unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers,
                                     bidirectional)
  return rnn.lstm_ref(x, h_0, c_0, *unpacked, seq_lengths, input_size, hidden_size,
                      num_layers, dropout, bidirectional)


@pytest.fixture
def cudnn_on_cpu(monkeypatch):
  """This machine passes for a CUDA GPU, and `rnn.lstm` is cuDNN's reference."""
  monkeypatch.setattr(cudnn_lstm, "_cuda_missing", lambda: None)
  monkeypatch.setattr(rnn, "lstm", _reference_lstm)


def _model_config(implementation, num_layers=1, bidirectional=False, **more):
  cfg = config_lib.get_config()
  cfg.model.hidden_size = HIDDEN
  cfg.model.num_layers = num_layers
  cfg.model.bidirectional = bidirectional
  cfg.model.options.lstm.implementation = implementation
  return config_lib.override(cfg, {f"model.{k}": v for k, v in more.items()})


def _inputs():
  return jax.random.normal(jax.random.key(0), (BATCH, TIME, FEATURES))


def _loss_and_grads(model, params, x, train=False):
  """Loss of a fixed random readout of the logits, and its gradients [params tree]."""
  weights = jax.random.normal(jax.random.key(9), (BATCH, 10))

  def loss(p):
    logits = model.apply({"params": p}, x, train=train,
                         rngs={"dropout": jax.random.key(4)})
    return jnp.sum(logits * weights)

  return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("num_layers,bidirectional", LAYOUTS)
def test_packed_layers_through_cudnn_reference_equal_the_scan(num_layers, bidirectional):
  """All layers packed into one cuDNN weight vector (cuDNN's multi-layer layout), run
  by lstm_ref: the same hidden states and parameter gradients as our scanned layers."""
  cell = models.CELLS["lstm"](hidden_size=HIDDEN)
  x = _inputs()
  directions = ("fwd", "bwd") if bidirectional else ("fwd",)
  params, inputs = {}, FEATURES
  for layer in range(num_layers):
    for d in directions:
      dummy = jnp.zeros((1, 1, inputs))
      key = jax.random.key(10 * layer + len(params))
      params[f"layer{layer}_{d}"] = cell.init(key, dummy)["params"]
    inputs = HIDDEN * len(directions)

  def scanned(p):
    h = x
    for layer in range(num_layers):
      outs = [cell.apply({"params": p[f"layer{layer}_{d}"]}, h, reverse=d == "bwd")
              for d in directions]
      h = jnp.concatenate(outs, axis=-1)
    return h

  def through_cudnn_layout(p):
    names = [f"layer{layer}_{d}" for layer in range(num_layers) for d in directions]
    pseudo_layers = [(p[name]["input"]["kernel"], p[name]["input"]["bias"],
                      p[name]["recurrent_kernel"]) for name in names]  # cuDNN's order.
    weights = cudnn_lstm.pack_weights(pseudo_layers)
    assert weights.shape == (rnn.get_num_params_in_lstm(
        FEATURES, HIDDEN, num_layers, bidirectional),)
    state = jnp.zeros((num_layers * len(directions), BATCH, HIDDEN))
    y, _, _ = _reference_lstm(x, state, state, weights,
                              jnp.full((BATCH,), TIME, jnp.int32),
                              input_size=FEATURES, hidden_size=HIDDEN,
                              num_layers=num_layers, dropout=0.0,
                              bidirectional=bidirectional)
    return y

  np.testing.assert_allclose(through_cudnn_layout(params), scanned(params),
                             rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(5), (BATCH, TIME, HIDDEN * len(directions)))
  grads = [jax.grad(lambda p, f=f: jnp.sum(f(p) * cotangent))(params)
           for f in (through_cudnn_layout, scanned)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               *grads)


@pytest.mark.parametrize("num_layers,bidirectional", LAYOUTS)
def test_cudnn_model_equals_scan_model(cudnn_on_cpu, num_layers, bidirectional):
  """The classifier with implementation='cudnn' (one cuDNN call per layer and
  direction): the scan's parameter tree, logits and gradients, dropout included."""
  cfgs = [config_lib.resolve(_model_config(impl, num_layers, bidirectional,
                                           dropout=0.25))
          for impl in ("scan", "cudnn")]
  scan_model, cudnn_model = (models.build_model(c.model) for c in cfgs)
  x = _inputs()
  params = scan_model.init(jax.random.key(1), x)["params"]
  cudnn_params = cudnn_model.init(jax.random.key(1), x)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(cudnn_params)
  jax.tree.map(np.testing.assert_array_equal, params, cudnn_params)  # Same init.
  for train in (False, True):
    scan_loss, scan_grads = _loss_and_grads(scan_model, params, x, train)
    loss, grads = _loss_and_grads(cudnn_model, params, x, train)
    np.testing.assert_allclose(loss, scan_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 grads, scan_grads)


@cpu_only
def test_cudnn_is_refused_on_cpu_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  proc = run_main("--config=experiments/seed_lstm.py", f"--workdir={workdir}",
                  "--config.model.options.lstm.implementation=cudnn", timeout=300)
  line = one_line_error(proc)
  assert "implementation='cudnn' needs a CUDA GPU" in line, line
  assert "use implementation='scan'" in line, line
  assert not workdir.exists()  # Refused before any work.


@cpu_only
def test_refusals_name_the_platform_and_what_to_use(monkeypatch):
  jax.devices()  # Backend started (as `mnist_jax.main` does first): its platform.
  with pytest.raises(ConfigError, match=r"^config.model.options.lstm: "
                     r"implementation='cudnn' needs a CUDA GPU, but JAX here runs on "
                     r"cpu; use implementation='scan'"):
    config_lib.resolve(_model_config("cudnn"))
  # Not started yet: $JAX_PLATFORMS, or whether a CUDA plugin is installed at all.
  monkeypatch.setattr(cudnn_lstm, "_backends_started", lambda: False)
  platforms = jax.config.jax_platforms
  try:
    jax.config.update("jax_platforms", "cpu")
    assert "but JAX_PLATFORMS=cpu;" in cudnn_lstm.machine_error()
    jax.config.update("jax_platforms", "cuda,cpu")
    assert cudnn_lstm.machine_error() is None
  finally:
    jax.config.update("jax_platforms", platforms)
  monkeypatch.setattr(cudnn_lstm, "_cuda_plugin_installed", lambda: False)
  if not platforms:
    assert "no CUDA plugin" in cudnn_lstm.machine_error()


@pytest.mark.parametrize("field,value,match", [
    ("dtype", "bfloat16", "float32 only"),
    ("remat", True, "reserve space"),
])
def test_what_cudnn_cannot_do_is_refused_on_a_gpu(cudnn_on_cpu, field, value, match):
  with pytest.raises(ConfigError, match=f"implementation='cudnn' .*{match}.*"
                                        f"implementation='scan'"):
    config_lib.resolve(_model_config("cudnn", **{field: value}))
  config_lib.resolve(_model_config("cudnn", num_layers=2, bidirectional=True,
                                   dropout=0.1, unroll=4))  # These it does.


@cpu_only
def test_cudnn_layer_refuses_to_trace_off_gpu():
  """A config that escaped validation (a CUDA plugin without a GPU) fails at init."""
  model = models.build_model(_model_config("cudnn").model)
  with pytest.raises(ConfigError, match="needs a CUDA GPU"):
    model.init(jax.random.key(0), _inputs())


def test_only_the_plain_lstm_has_the_option():
  assert "implementation" in models.CELLS["lstm"].OPTIONS
  assert "implementation" not in models.CELLS["layernorm_lstm"].OPTIONS
  with pytest.raises(ValueError, match="changes the LSTM recurrence"):
    models.CELLS["layernorm_lstm"](hidden_size=HIDDEN, implementation="cudnn").init(
        jax.random.key(0), _inputs())


def test_implementation_is_not_part_of_a_runs_identity(tmp_path):
  """A workdir trained with cuDNN resumes with the scan, and opens on a CPU with it."""
  cudnn = _model_config("cudnn").to_dict()
  scan = _model_config("scan").to_dict()
  assert workdir_lib.differences(cudnn, scan) == []
  other = _model_config("scan", num_layers=2).to_dict()
  assert workdir_lib.differences(cudnn, other) == ["model.num_layers=1 -> 2"]
  (tmp_path / "config.json").write_text(json.dumps(cudnn))
  opened = workdir_lib.Workdir.open(str(tmp_path))
  assert opened.config.model.options.lstm.implementation == (
      "cudnn" if ON_CUDA else "scan")


@pytest.mark.slow
def test_scan_workdir_evaluates_with_cudnn(cudnn_on_cpu, make_tiny_config, tmp_path):
  """Trained with the scan; its checkpoint evaluated with cuDNN gives the same test
  metrics (the same parameters, read by the other implementation)."""
  from mnist_jax import evaluate, train
  workdir = str(tmp_path / "run")
  cfg = make_tiny_config(num_epochs=1, max_train_examples=100, max_eval_examples=100)
  train.train(cfg, workdir)
  scan = evaluate.evaluate_workdir(workdir, "latest", "test")
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  saved["model"]["options"]["lstm"]["implementation"] = "cudnn"
  with open(path, "w") as f:
    json.dump(saved, f)
  assert workdir_lib.Workdir.open(workdir).config.model.options.lstm.implementation \
      == "cudnn"
  cudnn = evaluate.evaluate_workdir(workdir, "latest", "test")
  assert cudnn["accuracy"] == scan["accuracy"]
  np.testing.assert_allclose(cudnn["loss"], scan["loss"], rtol=1e-5)


@pytest.mark.skipif(not ON_CUDA, reason="the real cuDNN needs a CUDA GPU")
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_real_cudnn_matches_scan(num_layers, bidirectional):
  """On the GPU: cuDNN against the scan, both in full float32 (no TF32)."""
  cfgs = [config_lib.resolve(_model_config(impl, num_layers, bidirectional))
          for impl in ("scan", "cudnn")]
  scan_model, cudnn_model = (models.build_model(c.model) for c in cfgs)
  x = _inputs()
  params = scan_model.init(jax.random.key(1), x)["params"]
  scan_loss, scan_grads = _loss_and_grads(scan_model, params, x)
  loss, grads = _loss_and_grads(cudnn_model, params, x)
  np.testing.assert_allclose(loss, scan_loss, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               grads, scan_grads)
