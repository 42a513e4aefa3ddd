"""IRNN, IndRNN, LRU, minGRU and minLSTM: each equals a plain loop over time written
here from the paper."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import quick_subset
from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import models
from mnist_jax import steps
from mnist_jax.errors import ConfigError
from mnist_jax.models.lru import LRU, LRUBlock
from mnist_jax.models.min_rnn import MODES

BATCH, TIME, FEATURES, HIDDEN = 3, 9, 5, 6
NEW_MODELS = ("irnn", "indrnn", "lru", "layernorm_lstm")
# The LRU's classifier takes seconds to compile: its layer tests stay quick, these not.
QUICK_MODELS = quick_subset(NEW_MODELS, keep=("irnn", "indrnn", "layernorm_lstm"))


def _inputs(seed, shape=(BATCH, TIME, FEATURES)):
  return np.asarray(jax.random.normal(jax.random.key(seed), shape))


def _numpy(tree):
  return jax.tree.map(lambda v: np.asarray(v, np.float64), tree)


def _time_order(reverse):
  return reversed(range(TIME)) if reverse else range(TIME)


# ----------------------------------------------------------------------------------
# IRNN and IndRNN.
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True])
def test_irnn_matches_loop_and_starts_at_scaled_identity(reverse):
  cell = models.CELLS["irnn"](hidden_size=HIDDEN, identity_scale=0.5)
  x = _inputs(0)
  variables = cell.init(jax.random.key(1), x)
  p = _numpy(variables["params"])
  np.testing.assert_array_equal(p["recurrent_kernel"], 0.5 * np.eye(HIDDEN))
  np.testing.assert_array_equal(p["input"]["bias"], 0.0)
  # Train-like weights: perturb the identity so the test is not trivial.
  p["recurrent_kernel"] = p["recurrent_kernel"] + 0.3 * _inputs(2, (HIDDEN, HIDDEN))
  h = np.zeros((BATCH, HIDDEN))
  expected = np.zeros((BATCH, TIME, HIDDEN))
  for t in _time_order(reverse):
    h = np.maximum(x[:, t] @ p["input"]["kernel"] + p["input"]["bias"]
                   + h @ p["recurrent_kernel"], 0.0)
    expected[:, t] = h
  out = cell.apply({"params": p}, x, reverse=reverse)
  assert out.shape == (BATCH, TIME, HIDDEN)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_indrnn_matches_loop_with_clipped_diagonal_recurrence(reverse):
  cell = models.CELLS["indrnn"](hidden_size=HIDDEN)
  x = _inputs(3)
  variables = cell.init(jax.random.key(4), x)
  p = _numpy(variables["params"])
  u = p["recurrent_kernel"]
  assert u.shape == (HIDDEN,) and np.all((u >= 0) & (u <= 1))
  # Values beyond the bound check that the forward pass clips |u| to 1.
  p["recurrent_kernel"] = np.array([1.7, -2.0, 0.5, -0.3, 0.99, 1.0])
  u = np.clip(p["recurrent_kernel"], -1.0, 1.0)
  h = np.zeros((BATCH, HIDDEN))
  expected = np.zeros((BATCH, TIME, HIDDEN))
  for t in _time_order(reverse):
    h = np.maximum(x[:, t] @ p["input"]["kernel"] + p["input"]["bias"] + u * h, 0.0)
    expected[:, t] = h
  out = cell.apply({"params": p}, x, reverse=reverse)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------
# LRU.
# ----------------------------------------------------------------------------------
def _lru_loop(p, x, reverse=False):
  """The paper's equations with numpy complex128, one step at a time."""
  lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
  b = (p["B_re"] + 1j * p["B_im"]) * np.exp(p["gamma_log"])[:, None]
  c = p["C_re"] + 1j * p["C_im"]
  h = np.zeros((x.shape[0], lam.shape[0]), np.complex128)
  y = np.zeros(x.shape)
  for t in (reversed(range(x.shape[1])) if reverse else range(x.shape[1])):
    h = lam * h + x[:, t] @ b.T
    y[:, t] = (h @ c.T).real + p["D"] * x[:, t]
  return y


@pytest.mark.parametrize("scan", ["parallel", "sequential"])
@pytest.mark.parametrize("reverse", [False, True])
def test_lru_layer_matches_loop(scan, reverse):
  layer = LRU(hidden_size=HIDDEN, state_size=4, r_min=0.5, r_max=0.99, scan=scan)
  x = _inputs(5, (BATCH, TIME, HIDDEN))
  variables = layer.init(jax.random.key(6), x)
  out = layer.apply(variables, x, reverse=reverse)
  assert out.shape == (BATCH, TIME, HIDDEN)
  np.testing.assert_allclose(out, _lru_loop(_numpy(variables["params"]), x, reverse),
                             rtol=1e-4, atol=1e-5)


def test_lru_ring_init_and_gamma_normalisation():
  r_min, r_max, max_phase = 0.4, 0.8, math.pi / 4
  layer = LRU(hidden_size=HIDDEN, state_size=512, r_min=r_min, r_max=r_max,
              max_phase=max_phase)
  variables = layer.init(jax.random.key(7), jnp.zeros((1, 2, HIDDEN)))
  p = _numpy(variables["params"])
  lam = np.asarray(layer.apply(variables, method=LRU.eigenvalues), np.complex128)
  modulus, phase = np.abs(lam), np.exp(p["theta_log"])
  assert r_min - 1e-5 <= modulus.min() and modulus.max() <= r_max + 1e-5
  assert 0 < phase.min() and phase.max() <= max_phase + 1e-5
  # Uniform on the ring: |lambda|^2 is uniform, so its mean is the interval midpoint.
  assert np.mean(modulus ** 2) == pytest.approx((r_min ** 2 + r_max ** 2) / 2, abs=0.02)
  assert np.mean(phase) == pytest.approx(max_phase / 2, abs=0.05)
  np.testing.assert_allclose(np.exp(p["gamma_log"]), np.sqrt(1 - modulus ** 2),
                             rtol=1e-4)
  assert p["B_re"].shape == (512, HIDDEN) and p["C_im"].shape == (HIDDEN, 512)
  assert p["D"].shape == (HIDDEN,)


@pytest.mark.slow
@pytest.mark.parametrize("reverse", [False, True])
def test_lru_parallel_and_sequential_scans_agree_on_long_sequences(reverse):
  """Values and gradients, 256 steps with eigenvalues close to the unit circle."""
  x = _inputs(8, (2, 256, HIDDEN))
  make = lambda scan: LRU(hidden_size=HIDDEN, state_size=8, r_min=0.99, r_max=0.999,
                          scan=scan)
  variables = make("parallel").init(jax.random.key(9), x)

  # Jitted: one compilation instead of eager dispatch of every scan level.
  @jax.jit
  def run(params):
    outs, grads = {}, {}
    for scan in ("parallel", "sequential"):
      apply = lambda p: make(scan).apply({"params": p}, x, reverse=reverse)
      outs[scan] = apply(params)
      grads[scan] = jax.grad(lambda p: jnp.sum(jnp.sin(apply(p))))(params)
    return outs, grads

  outs, grads = run(variables["params"])
  np.testing.assert_allclose(outs["parallel"], outs["sequential"], rtol=1e-4, atol=1e-4)
  for name in grads["parallel"]:
    np.testing.assert_allclose(grads["parallel"][name], grads["sequential"][name],
                               rtol=2e-3, atol=2e-3, err_msg=name)


def _gelu(v):
  return 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))


def _layer_norm(v, scale, bias, eps=1e-6):
  mean = v.mean(-1, keepdims=True)
  var = ((v - mean) ** 2).mean(-1, keepdims=True)
  return (v - mean) / np.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize("mix", ["glu", "mlp"])
def test_lru_block_matches_reference(mix):
  """encoder -> LayerNorm -> LRU -> GELU -> GLU / Dense -> residual."""
  block = LRUBlock(hidden_size=HIDDEN, state_size=4, mix=mix)
  x = _inputs(10)
  variables = block.init(jax.random.key(11), x)
  p = _numpy(variables["params"])
  assert set(p) == {"encoder", "norm", "lru", "mix"}
  encoded = x @ p["encoder"]["kernel"] + p["encoder"]["bias"]
  y = _lru_loop(p["lru"], _layer_norm(encoded, p["norm"]["scale"], p["norm"]["bias"]))
  y = _gelu(y) @ p["mix"]["kernel"] + p["mix"]["bias"]
  if mix == "glu":
    y = y[..., :HIDDEN] / (1 + np.exp(-y[..., HIDDEN:]))
  np.testing.assert_allclose(block.apply(variables, x), encoded + y, rtol=1e-4,
                             atol=1e-5)
  # Input already HIDDEN wide: no encoder, plain residual.
  assert "encoder" not in block.init(jax.random.key(0), encoded)["params"]


# ----------------------------------------------------------------------------------
# minGRU and minLSTM.
# ----------------------------------------------------------------------------------
MIN_RNNS = ("min_gru", "min_lstm")


def _min_rnn_loop(name, p, x, reverse=False, xp=np):
  """Feng et al. (2024) step by step from h_0 = 0; xp: numpy or jax.numpy (autodiff)."""
  sigmoid = lambda v: 1 / (1 + xp.exp(-v))
  g = lambda v: xp.where(v >= 0, v + 0.5, sigmoid(v))
  k = x @ p["input"]["kernel"] + p["input"]["bias"]
  h = xp.zeros((x.shape[0], HIDDEN), x.dtype)
  outputs = [None] * x.shape[1]
  for t in (reversed(range(x.shape[1])) if reverse else range(x.shape[1])):
    if name == "min_gru":
      k_z, k_h = xp.split(k[:, t], 2, axis=-1)
      z = sigmoid(k_z)
      h = (1 - z) * h + z * g(k_h)
    else:
      k_f, k_i, k_h = xp.split(k[:, t], 3, axis=-1)
      f, i = sigmoid(k_f), sigmoid(k_i)
      h = f / (f + i) * h + i / (f + i) * g(k_h)
    outputs[t] = h
  return xp.stack(outputs, axis=1)


def _spread_biases(params):
  """Biases from -3 to 3: saturated and open gates, and both pieces of g."""
  bias = params["input"]["bias"]
  return {"input": {**params["input"], "bias": np.linspace(-3, 3, bias.size)}}


@pytest.mark.parametrize("name", MIN_RNNS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse", [False, True])
def test_min_rnn_matches_the_papers_equations(name, mode, reverse):
  cell = models.CELLS[name](hidden_size=HIDDEN, mode=mode)
  x = _inputs(12)
  p = _spread_biases(_numpy(cell.init(jax.random.key(13), x)["params"]))
  assert p["input"]["kernel"].shape == (FEATURES, cell.num_gates * HIDDEN)
  out = cell.apply({"params": p}, x, reverse=reverse)
  assert out.shape == (BATCH, TIME, HIDDEN)
  np.testing.assert_allclose(out, _min_rnn_loop(name, p, x, reverse), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("name", MIN_RNNS)
@pytest.mark.parametrize("mode", MODES)
def test_min_rnn_gradients_equal_autodiff_of_the_equations(name, mode):
  """Parameters and inputs, float64, both directions."""
  with jax.enable_x64(True):
    cell = models.CELLS[name](hidden_size=HIDDEN, mode=mode)
    x = jnp.asarray(_inputs(14), jnp.float64)
    params = jax.tree.map(jnp.asarray, _spread_biases(
        _numpy(cell.init(jax.random.key(15), x)["params"])))
    weights = jnp.asarray(_inputs(16, (BATCH, TIME, HIDDEN)), jnp.float64)
    for reverse in (False, True):
      layers = (lambda p, x: cell.apply({"params": p}, x, reverse=reverse),
                lambda p, x: _min_rnn_loop(name, p, x, reverse, xp=jnp))
      ours, reference = (jax.grad(lambda p, x: jnp.sum(weights * layer(p, x)),
                                  argnums=(0, 1))(params, x) for layer in layers)
      for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", MIN_RNNS)
def test_min_rnn_mode_reaches_the_bidirectional_classifier(name):
  """Same parameters in both modes, and the same logits."""
  x = _inputs(19, (BATCH, 28, 28))
  results = {}
  for mode in MODES:
    cfg = _model_config(name, num_layers=2, bidirectional=True,
                        **{f"options.{name}.mode": mode})
    model = models.build_model(cfg.model)
    assert model.cell_options == (("mode", mode),)
    variables = model.init(jax.random.key(20), x)
    results[mode] = variables, model.apply(variables, x)
  (params_seq, logits_seq), (params_par, logits_par) = (results["sequential"],
                                                         results["parallel"])
  jax.tree.map(np.testing.assert_array_equal, params_seq, params_par)
  assert "recurrent_kernel" not in params_seq["params"]["layer1_bwd"]
  np.testing.assert_allclose(logits_par, logits_seq, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------
# Through the config and the classifier.
# ----------------------------------------------------------------------------------
def _model_config(name, **overrides):
  cfg = config_lib.get_config()
  cfg.model.name, cfg.model.hidden_size = name, 8
  cfg.model.options.lru.state_size = 5
  config_lib.override(cfg, {f"model.{k}": v for k, v in overrides.items()})
  return config_lib.resolve(cfg)


@pytest.mark.parametrize("name", QUICK_MODELS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_shapes_and_config_options(name, bidirectional):
  cfg = _model_config(name, num_layers=2, bidirectional=bidirectional,
                      **{"options.irnn.identity_scale": 0.25})
  model = models.build_model(cfg.model)
  x = jnp.zeros((4, 28, 28))
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (4, 10)
  params = variables["params"]
  expected_layers = {f"layer{i}_{d}" for i in range(2)
                     for d in (("fwd", "bwd") if bidirectional else ("fwd",))}
  assert set(params) == expected_layers | {"head"}
  first = params["layer0_fwd"]
  if name == "irnn":
    np.testing.assert_allclose(first["recurrent_kernel"], 0.25 * np.eye(8))
  elif name == "indrnn":
    assert first["recurrent_kernel"].shape == (8,)
  elif name == "layernorm_lstm":
    np.testing.assert_allclose(first["recurrent_norm_scale"], 0.1)
    assert first["recurrent_kernel"].shape == (8, 32)
  else:
    assert first["lru"]["B_re"].shape == (5, 8)
    # Layer 1 reads 8 (or 16 after a bidirectional layer) features: encoder only if 16.
    assert ("encoder" in params["layer1_fwd"]) == bidirectional


def test_cells_get_only_their_own_options():
  assert models.build_model(_model_config("gru").model).cell_options == ()
  assert models.build_model(_model_config("simple_rnn").model).cell_options == (
      ("activation", "tanh"),)
  # The LSTM's options: chrono init, off by default (forget bias 1), and the scan.
  assert models.build_model(_model_config("lstm").model).cell_options == (
      ("chrono_max_timescale", None), ("implementation", "scan"))


@pytest.mark.parametrize("name", QUICK_MODELS)
def test_train_step_changes_every_parameter(name):
  cfg = _model_config(name, num_layers=2, readout="mean")
  state = steps.create_train_state(cfg, jax.random.PRNGKey(0), steps_per_epoch=10)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 28, 28), np.uint8)),
           "label": jnp.asarray(rng.integers(0, 10, 8, np.int32))}
  step = jax.jit(lambda s, b: steps.train_step(
      s, b, preprocess=data.make_preprocess(cfg.data)))
  new_state, metrics = step(state, batch)
  assert bool(metrics["finite"])
  flat_old = jax.tree_util.tree_flatten_with_path(state.params)[0]
  flat_new = jax.tree.leaves(new_state.params)
  for (path, old), new in zip(flat_old, flat_new):
    assert not np.array_equal(old, new), f"{jax.tree_util.keystr(path)} did not change"


@pytest.mark.parametrize("cell,option,value,phrase", [
    ("lru", "r_min", 0.999, "r_min=0.999 must be smaller than r_max=0.999"),
    ("lru", "r_max", 1.0, "options.lru.r_max=1.0 must be in [0, 1)"),
    ("lru", "r_min", -0.1, "options.lru.r_min=-0.1 must be in [0, 1)"),
    ("lru", "state_size", 0, "options.lru.state_size=0 must be a positive integer"),
    ("lru", "scan", "fft", "options.lru.scan='fft' must be parallel or sequential"),
    ("lru", "mix", "moe", "options.lru.mix='moe' must be glu or mlp"),
    ("lru", "max_phase", 0.0, "options.lru.max_phase=0.0 must be a positive number"),
    ("irnn", "identity_scale", -1.0, "options.irnn.identity_scale=-1.0 must be a "
     "positive"),
    ("lstm", "chrono_max_timescale", 2, "options.lstm.chrono_max_timescale=2 must be "
     "an integer of at least 3"),
    ("simple_rnn", "activation", "gelu", "options.simple_rnn.activation='gelu' must "
     "be tanh or relu"),
    ("min_gru", "mode", "fft", "options.min_gru.mode='fft' must be sequential or "
     "parallel"),
])
def test_bad_cell_option_is_one_line_naming_it(cell, option, value, phrase):
  cfg = config_lib.get_config()
  cfg.model.name = cell
  with cfg.ignore_type():
    cfg.model.options[cell][option] = value
  with pytest.raises(ConfigError) as err:
    config_lib.resolve(cfg)
  assert phrase in str(err.value) and "\n" not in str(err.value)


def test_options_of_cells_not_chosen_are_not_checked():
  cfg = config_lib.get_config()
  cfg.model.options.lru.state_size = 0  # The model is an LSTM: nothing uses this.
  config_lib.resolve(cfg)
