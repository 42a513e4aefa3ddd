"""Recurrent cells and the classifier: scanned layers equal a Python loop over the cell."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import quick_subset
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax import steps
from mnist_jax.errors import ConfigError
from mnist_jax.models import min_rnn

BATCH, TIME, FEATURES, HIDDEN = 3, 7, 5, 6


def _loop_reference(cell: models.RecurrentCell, variables, inputs, reverse=False):
  """Runs `cell.step` one time step at a time in Python."""
  carry = cell.apply(variables, inputs.shape[0], method=lambda m, b: m.initial_carry(b))
  steps = range(inputs.shape[1])
  outputs = [None] * inputs.shape[1]
  for t in (reversed(steps) if reverse else steps):
    carry, h = cell.apply(variables, carry, inputs[:, t], method=lambda m, c, x: m.step(c, x))
    outputs[t] = h
  return jnp.stack(outputs, axis=1)


@pytest.mark.parametrize("name", sorted(models.CELLS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("unroll", [1, 3])
def test_scan_equals_python_loop(name, reverse, unroll):
  cell = models.CELLS[name](hidden_size=HIDDEN, unroll=unroll)
  inputs = jax.random.normal(jax.random.key(0), (BATCH, TIME, FEATURES))
  variables = cell.init(jax.random.key(1), inputs)
  scanned = cell.apply(variables, inputs, reverse=reverse)
  assert scanned.shape == (BATCH, TIME, HIDDEN)
  np.testing.assert_allclose(scanned, _loop_reference(cell, variables, inputs, reverse),
                             rtol=1e-5, atol=1e-6)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def test_lstm_matches_textbook_equations():
  """The fused one-tanh gate trick computes the standard LSTM exactly."""
  cell = models.CELLS["lstm"](hidden_size=HIDDEN)
  x = np.asarray(jax.random.normal(jax.random.key(2), (BATCH, TIME, FEATURES)))
  variables = cell.init(jax.random.key(3), x)
  p = jax.tree.map(np.asarray, variables["params"])
  h = c = np.zeros((BATCH, HIDDEN))
  for t in range(TIME):
    z = x[:, t] @ p["input"]["kernel"] + p["input"]["bias"] + h @ p["recurrent_kernel"]
    i, f, g, o = np.split(z, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
  np.testing.assert_allclose(cell.apply(variables, x)[:, -1], h, rtol=1e-5, atol=1e-6)


def _layer_norm(x):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def test_layernorm_lstm_matches_its_equations():
  """Ba et al. (2016) layer norm on the recurrent term and the cell, written out."""
  cell = models.CELLS["layernorm_lstm"](hidden_size=HIDDEN, chrono_max_timescale=50)
  x = np.asarray(jax.random.normal(jax.random.key(2), (BATCH, TIME, FEATURES)))
  variables = cell.init(jax.random.key(3), x)
  # Move the norm parameters off their initial values so each one matters.
  params = jax.tree.map(np.asarray, variables["params"])
  rng = np.random.default_rng(0)
  for name in ("recurrent_norm_scale", "cell_norm_scale", "cell_norm_bias"):
    params[name] = params[name] + rng.normal(size=params[name].shape).astype(np.float32)
  p = params
  h = c = np.zeros((BATCH, HIDDEN))
  for t in range(TIME):
    recurrent = p["recurrent_norm_scale"] * _layer_norm(h @ p["recurrent_kernel"])
    z = x[:, t] @ p["input"]["kernel"] + p["input"]["bias"] + recurrent
    i, f, g, o = np.split(z, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(p["cell_norm_scale"] * _layer_norm(c) + p["cell_norm_bias"])
  out = cell.apply({"params": params}, x)[:, -1]
  np.testing.assert_allclose(out, h, rtol=1e-4, atol=1e-5)


def _reference_layer(name, params, x):
  """The LSTM, LayerNorm LSTM and GRU recurrences in plain jnp, for autodiff."""
  p = params
  h = c = jnp.zeros((x.shape[0], HIDDEN), x.dtype)
  for t in range(x.shape[1]):
    if name == "gru":
      a = x[:, t] @ p["input"]["kernel"] + p["input"]["bias"]
      u = h @ p["recurrent_kernel"] + p["recurrent_bias"]
      a_r, a_z, a_n = jnp.split(a, 3, axis=-1)
      u_r, u_z, u_n = jnp.split(u, 3, axis=-1)
      r, z = jax.nn.sigmoid(a_r + u_r), jax.nn.sigmoid(a_z + u_z)
      n = jnp.tanh(a_n + r * u_n)
      h = (1 - z) * n + z * h
      continue
    recurrent = h @ p["recurrent_kernel"]
    if name == "layernorm_lstm":
      recurrent = p["recurrent_norm_scale"] * jax.nn.standardize(recurrent, axis=-1)
    z = x[:, t] @ p["input"]["kernel"] + p["input"]["bias"] + recurrent
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    cell = c
    if name == "layernorm_lstm":
      cell = (p["cell_norm_scale"] * jax.nn.standardize(c, axis=-1)
              + p["cell_norm_bias"])
    h = jax.nn.sigmoid(o) * jnp.tanh(cell)
  return h


@pytest.mark.parametrize("name", ["lstm", "layernorm_lstm", "gru"])
def test_hand_written_backward_equals_autodiff(name):
  """The cells' custom_vjp gradients equal autodiff of the textbook recurrence (f64)."""
  with jax.enable_x64(True):
    cell = models.CELLS[name](hidden_size=HIDDEN)
    x = jax.random.normal(jax.random.key(2), (BATCH, TIME, FEATURES), jnp.float64)
    params = cell.init(jax.random.key(3), x)["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(  # Off their initial values, so that every term matters.
        lambda a: jnp.asarray(a + 0.3 * rng.normal(size=a.shape), jnp.float64), params)
    weights = jax.random.normal(jax.random.key(4), (BATCH, HIDDEN), jnp.float64)

    def loss(params, x, layer):
      return jnp.sum(weights * layer(params, x))

    ours = jax.grad(loss, argnums=(0, 1))(
        params, x, lambda p, x: cell.apply({"params": p}, x)[:, -1])
    reference = jax.grad(loss, argnums=(0, 1))(
        params, x, lambda p, x: _reference_layer(name, p, x))
    assert jax.tree.structure(ours) == jax.tree.structure(reference)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
      assert got.dtype == jnp.float64
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,reverse", quick_subset(
    [("min_gru", False), ("min_gru", True), ("min_lstm", False), ("min_lstm", True)],
    keep=[("min_gru", True)]))
def test_min_rnn_parallel_equals_sequential_over_784_steps(name, reverse):
  """Outputs and gradients (parameters and inputs), float32, memories of ~1000 steps
  beside units that forget at once: the parallel scan must stay as exact as lax.scan."""
  hidden = 4
  x = jax.random.normal(jax.random.key(17), (2, 784, 1))
  make = lambda mode: models.CELLS[name](hidden_size=hidden, mode=mode)
  params = make("parallel").init(jax.random.key(18), x)["params"]
  params = jax.tree.map(np.array, params)  # Writable, for the biases below.
  memory = np.linspace(7.0, -3.0, hidden)  # 7: a_t = sigmoid(7), ~1100 steps.
  bias = params["input"]["bias"]
  if name == "min_gru":  # a_t = 1 - z_t.
    bias[:hidden] = -memory
  else:  # a_t = f_t / (f_t + i_t).
    bias[:hidden], bias[hidden:2 * hidden] = memory, -memory

  @jax.jit  # One compilation instead of eager dispatch of every scan level.
  def run(params, x):
    results = {}
    for mode in min_rnn.MODES:
      apply = lambda p, x, mode=mode: make(mode).apply({"params": p}, x,
                                                       reverse=reverse)
      loss = lambda p, x, apply=apply: jnp.sum(jnp.sin(3 * apply(p, x)))
      results[mode] = (apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x))
    return results

  results = run(params, x)
  (out_seq, grads_seq), (out_par, grads_par) = (results["sequential"],
                                                 results["parallel"])
  assert np.all(np.isfinite(out_par))
  np.testing.assert_allclose(out_par, out_seq, rtol=1e-5, atol=1e-6)
  for got, want in zip(jax.tree.leaves(grads_par), jax.tree.leaves(grads_seq)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_gru_matches_pytorch_style_equations():
  """Reset gate applied after the recurrent matmul (cuDNN / PyTorch / Keras reset_after)."""
  cell = models.CELLS["gru"](hidden_size=HIDDEN)
  x = np.asarray(jax.random.normal(jax.random.key(4), (BATCH, TIME, FEATURES)))
  variables = cell.init(jax.random.key(5), x)
  p = jax.tree.map(np.asarray, variables["params"])
  # Give the recurrent bias non-zero values so its placement is tested.
  p["recurrent_bias"] = np.linspace(-1, 1, 3 * HIDDEN)
  h = np.zeros((BATCH, HIDDEN))
  for t in range(TIME):
    a = x[:, t] @ p["input"]["kernel"] + p["input"]["bias"]
    u = h @ p["recurrent_kernel"] + p["recurrent_bias"]
    r = _sigmoid(a[:, :HIDDEN] + u[:, :HIDDEN])
    z = _sigmoid(a[:, HIDDEN:2 * HIDDEN] + u[:, HIDDEN:2 * HIDDEN])
    n = np.tanh(a[:, 2 * HIDDEN:] + r * u[:, 2 * HIDDEN:])
    h = (1 - z) * n + z * h
  out = cell.apply({"params": p}, x)
  np.testing.assert_allclose(out[:, -1], h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_simple_rnn_activation(activation):
  cell = models.CELLS["simple_rnn"](hidden_size=HIDDEN, activation=activation)
  x = np.asarray(jax.random.normal(jax.random.key(6), (BATCH, TIME, FEATURES)))
  variables = cell.init(jax.random.key(7), x)
  p = jax.tree.map(np.asarray, variables["params"])
  act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0))
  h = np.zeros((BATCH, HIDDEN))
  for t in range(TIME):
    h = act(x[:, t] @ p["input"]["kernel"] + p["input"]["bias"] + h @ p["recurrent_kernel"])
  np.testing.assert_allclose(cell.apply(variables, x)[:, -1], h, rtol=1e-5, atol=1e-6)


def test_lstm_forget_bias_and_orthogonal_recurrent_init():
  cell = models.CELLS["lstm"](hidden_size=HIDDEN)
  variables = cell.init(jax.random.key(0), jnp.zeros((1, 2, FEATURES)))
  bias = np.asarray(variables["params"]["input"]["bias"])
  np.testing.assert_array_equal(bias[HIDDEN:2 * HIDDEN], 1.0)
  np.testing.assert_array_equal(np.delete(bias, np.s_[HIDDEN:2 * HIDDEN]), 0.0)
  kernel = np.asarray(variables["params"]["recurrent_kernel"])  # [H, 4H], as Keras.
  np.testing.assert_allclose(kernel @ kernel.T, np.eye(HIDDEN), atol=1e-5)


def test_lstm_chrono_init_spreads_forget_timescales():
  timescale = 784
  cell = models.CELLS["lstm"](hidden_size=64, chrono_max_timescale=timescale)
  variables = cell.init(jax.random.key(0), jnp.zeros((1, 2, FEATURES)))
  bias = np.asarray(variables["params"]["input"]["bias"])
  input_gate, forget_gate, rest = bias[:64], bias[64:128], bias[128:]
  # b_f = log(u), u ~ U[1, T - 1]; b_i = -b_f; candidate and output biases stay 0.
  assert np.all(forget_gate >= 0.0) and np.all(forget_gate <= np.log(timescale - 1))
  assert forget_gate.std() > 0.1  # Spread over units, not one shared value.
  np.testing.assert_allclose(np.median(np.exp(forget_gate)), timescale / 2, rtol=0.25)
  np.testing.assert_array_equal(input_gate, -forget_gate)
  np.testing.assert_array_equal(rest, 0.0)


def test_chrono_timescale_reaches_the_lstm_from_the_config():
  cfg = config_lib.get_config()
  cfg.model.options.lstm.chrono_max_timescale = 100
  model = models.build_model(config_lib.resolve(cfg).model)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 3, FEATURES)))
  forget = np.asarray(variables["params"]["layer0_fwd"]["input"]["bias"])[
      cfg.model.hidden_size:2 * cfg.model.hidden_size]
  assert len(np.unique(forget)) > 1 and forget.max() <= np.log(99)


def test_a_key_the_config_does_not_declare_is_refused():
  """The old layout's key (before cells owned their options) is named, with a hint."""
  cfg = config_lib.get_config()
  cfg.model.lstm_chrono_max_timescale = 100  # Unlocked: this adds a key silently.
  with pytest.raises(ConfigError, match="model.lstm_chrono_max_timescale is not a "
                     "config field .*model.options"):
    config_lib.resolve(cfg)


@pytest.mark.parametrize("readout", ["last", "mean", "max"])
def test_bidirectional_classifier_matches_manual_composition(readout):
  cfg = config_lib.get_config().model
  cfg.name, cfg.hidden_size, cfg.num_layers = "gru", HIDDEN, 2
  cfg.bidirectional, cfg.readout = True, readout
  model = models.build_model(cfg)
  x = jax.random.normal(jax.random.key(8), (BATCH, TIME, FEATURES))
  variables = model.init(jax.random.key(9), x)
  params = variables["params"]
  assert set(params) == {"layer0_fwd", "layer0_bwd", "layer1_fwd", "layer1_bwd", "head"}
  cell = models.CELLS["gru"](hidden_size=HIDDEN)
  run = lambda name, inputs, rev: cell.apply({"params": params[name]}, inputs, reverse=rev)
  h0 = jnp.concatenate([run("layer0_fwd", x, False), run("layer0_bwd", x, True)], -1)
  h1 = jnp.concatenate([run("layer1_fwd", h0, False), run("layer1_bwd", h0, True)], -1)
  if readout == "last":
    features = jnp.concatenate([h1[:, -1, :HIDDEN], h1[:, 0, HIDDEN:]], -1)
  else:
    features = h1.mean(1) if readout == "mean" else h1.max(1)
  expected = features @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(model.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
  cfg = config_lib.get_config().model
  cfg.hidden_size, cfg.num_layers, cfg.dropout = HIDDEN, 2, 0.5
  model = models.build_model(cfg)
  x = jax.random.normal(jax.random.key(10), (BATCH, TIME, FEATURES))
  variables = model.init(jax.random.key(11), x)
  eval_a = model.apply(variables, x)
  eval_b = model.apply(variables, x)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(12)})
  assert not np.allclose(train, eval_a)


def test_registry_names_match_config_choices():
  cfg = config_lib.get_config()
  for name in models.CELLS:
    cfg.model.name = name
    config_lib.validate(cfg)
    assert issubclass(models.CELLS[name], (models.RecurrentCell, nn.Module))


def test_a_cell_without_a_recurrent_matrix_gets_none_and_an_empty_recurrence_group():
  """The base class creates only the recurrent weights a cell declares, and
  RECURRENCE_PARAMS follows the declaration."""
  assert models.CELLS["gru"].RECURRENCE_PARAMS == ("recurrent_kernel", "recurrent_bias")
  assert models.CELLS["lstm"].RECURRENCE_PARAMS == ("recurrent_kernel",)

  class BiasOnly(models.RecurrentCell):  # Declared by its flags alone; not registered.
    uses_recurrent_kernel, uses_recurrent_bias = False, True

    @nn.nowrap
    def recurrence(self, params, carry, projected):
      h = jnp.tanh(projected + params["bias"] + carry)
      return h, h

  x = jnp.zeros((1, 2, FEATURES))
  for cell in (models.CELLS["min_gru"], models.CELLS["min_lstm"], BiasOnly):
    params = cell(hidden_size=HIDDEN).init(jax.random.key(0), x)["params"]
    assert "recurrent_kernel" not in params and cell.RECURRENCE_PARAMS == tuple(
        name for name in ("recurrent_kernel", "recurrent_bias") if name in params)
    recurrent = cell(hidden_size=HIDDEN).apply({"params": params},
                                               method=lambda m: m.recurrent_params())
    assert "kernel" not in recurrent
  # An empty recurrence group: its own learning rate and decay change nothing.
  cfg = config_lib.get_config()
  cfg.model.name, cfg.model.hidden_size = "min_lstm", HIDDEN
  params = steps.init_params(config_lib.resolve(cfg), jax.random.PRNGKey(0))
  names = models.CELLS["min_lstm"].RECURRENCE_PARAMS
  assert set(jax.tree.leaves(steps.recurrence_labels(params, names))) == {"rest"}
  grads = jax.tree.map(jnp.ones_like, params)
  updates = []
  for factor, decay in ((1.0, None), (0.25, 0.0)):
    cfg.optimizer.recurrent_lr_factor = factor
    cfg.optimizer.recurrent_weight_decay = decay
    tx = steps.create_optimizer(cfg.optimizer, 10, 1, names)
    updates.append(tx.update(grads, tx.init(params), params)[0])
  jax.tree.map(np.testing.assert_array_equal, *updates)


# Each registered cell's forward pass, checked against its paper's equations written
# out in NumPy (the scan-versus-loop test above cannot catch a wrong equation: both
# sides run the cell's own `recurrence`). A new cell adds its test here.
# Format: cell name (its key in `models.CELLS`) -> "FILE::TEST", FILE a module in
# tests/ and TEST a test function in it (parametrised or not); the test below checks
# that every registered cell has an entry and that each named test exists.
EQUATION_TESTS = {
    "simple_rnn": "test_models.py::test_simple_rnn_activation",
    "lstm": "test_models.py::test_lstm_matches_textbook_equations",
    "layernorm_lstm": "test_models.py::test_layernorm_lstm_matches_its_equations",
    "gru": "test_models.py::test_gru_matches_pytorch_style_equations",
    "irnn": "test_models_research.py::test_irnn_matches_loop_and_starts_at_scaled_identity",
    "indrnn": "test_models_research.py::"
              "test_indrnn_matches_loop_with_clipped_diagonal_recurrence",
    "lru": "test_models_research.py::test_lru_block_matches_reference",
    "min_gru": "test_models_research.py::test_min_rnn_matches_the_papers_equations",
    "min_lstm": "test_models_research.py::test_min_rnn_matches_the_papers_equations",
}


def test_every_registered_cell_has_an_equation_test():
  import importlib
  assert set(models.CELLS) == set(EQUATION_TESTS)
  for target in EQUATION_TESTS.values():
    module, name = target.split("::")
    assert hasattr(importlib.import_module(module[:-3]), name), target
