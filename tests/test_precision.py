"""config.model.dtype and config.model.remat: bfloat16 compute with float32 parameters,
state and loss, and rematerialised time steps, for every built-in cell (and flax cells)."""

import functools

import flax.linen as nn
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
from mnist_jax.models import external

BATCH, TIME, FEATURES, HIDDEN = 4, 9, 5, 6

# Every built-in cell with its default options, the other scan of the cells that have
# two, and three flax cells through FlaxCellLayer (SimpleCell returns its carry in the
# compute dtype, which the layer casts back).
VARIANTS = [(name, ()) for name in sorted(models.CELLS)] + [
    ("lru", (("scan", "sequential"),)),
    ("min_gru", (("mode", "parallel"),)),
    ("min_lstm", (("mode", "parallel"),)),
    ("flax:LSTMCell", ()), ("flax:GRUCell", ()), ("flax:SimpleCell", ())]
QUICK = [("lstm", ()), ("lru", (("scan", "sequential"),))]  # The quick subset's cases.
IDS = [name + "".join(f"-{v}" for _, v in options) for name, options in VARIANTS]


def _layer(name: str, options: tuple, **kwargs) -> nn.Module:
  if name.startswith("flax:"):
    return external.FlaxCellLayer(hidden_size=HIDDEN, cell_type=getattr(nn, name[5:]),
                                  **kwargs)
  return models.CELLS[name](hidden_size=HIDDEN, **dict(options), **kwargs)


def _inputs_and_loss():
  """Inputs [batch, time, features] and a loss weighting every output [b, t, hidden]."""
  x = jax.random.normal(jax.random.key(0), (BATCH, TIME, FEATURES))
  weights = jax.random.normal(jax.random.key(2), (BATCH, TIME, HIDDEN))

  def loss(layer, params):
    return jnp.sum(weights * layer.apply({"params": params}, x).astype(jnp.float32))
  return x, loss


def _init(layer: nn.Module, x: jax.Array):
  """The layer's parameters, initialised in one compiled program: run op by op, the
  LRU's associative scan costs seconds of dispatch per shape."""
  return jax.jit(layer.init)(jax.random.key(1), x)["params"]


def _grad(loss, layer: nn.Module, params):
  return jax.jit(jax.grad(functools.partial(loss, layer)))(params)


def _flat(tree) -> jax.Array:
  return jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])


def _relative_error(got, want) -> float:
  return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (list, tuple)) else [value]:
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(getattr(item, "jaxpr", None), "eqns"):
        yield item.jaxpr


def _scan_carry_dtypes(jaxpr) -> set:
  """Dtypes of the floating-point carries of every lax.scan in `jaxpr`, nested ones and
  the backward pass's (which carries the weight gradients it sums over time)."""
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      start = eqn.params["num_consts"]
      for var in eqn.invars[start:start + eqn.params["num_carry"]]:
        if jnp.issubdtype(var.aval.dtype, jnp.inexact):
          found.add(jnp.dtype(var.aval.dtype).name)
    for sub in _sub_jaxprs(eqn):
      found |= _scan_carry_dtypes(sub)
  return found


def _primitive_names(jaxpr) -> set:
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for sub in _sub_jaxprs(eqn):
      names |= _primitive_names(sub)
  return names


@pytest.mark.parametrize("name,options", quick_subset(VARIANTS, keep=QUICK), ids=IDS)
def test_bfloat16_runs_forward_and_backward_close_to_float32(name, options):
  """float32 parameters, bfloat16 outputs, finite float32 gradients, both within a few
  bfloat16 roundings (2^-8 = 0.4%) of float32's. Norm-wise over all entries: a ReLU or
  minGRU's g() near its kink can flip one unit's slope under any rounding."""
  x, loss = _inputs_and_loss()
  full, half = _layer(name, options), _layer(name, options, dtype=jnp.bfloat16)
  params = _init(half, x)
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  outputs = jax.jit(half.apply)({"params": params}, x)
  assert outputs.dtype == jnp.bfloat16 and outputs.shape == (BATCH, TIME, HIDDEN)
  reference = jax.jit(full.apply)({"params": params}, x)
  assert _relative_error(outputs.astype(jnp.float32), reference) < 2e-2
  grads = _grad(loss, half, params)
  assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype("float32")}
  assert bool(jnp.all(jnp.isfinite(_flat(grads))))
  want = _flat(_grad(loss, full, params))
  assert _relative_error(_flat(grads), want) < 4e-2


# The variants that run lax.scan (the LRU's default and the "parallel" modes run an
# associative scan, which has no carry).
SCANNED = [(v, i) for v, i in zip(VARIANTS, IDS) if "parallel" not in i and i != "lru"]


@pytest.mark.parametrize("name,options", [v for v, _ in SCANNED],
                         ids=[i for _, i in SCANNED])
def test_bfloat16_keeps_the_carry_and_the_summed_weight_gradients_float32(name,
                                                                           options):
  """Every scan carry is float32 (complex64 for the LRU) in bfloat16: the forward
  state, and in the backward pass the per-step sums of the weight gradients (the
  weights are cast inside the loop body)."""
  x, loss = _inputs_and_loss()
  layer = _layer(name, options, dtype=jnp.bfloat16)
  params = _init(layer, x)
  forward = jax.make_jaxpr(lambda p: layer.apply({"params": p}, x))(params).jaxpr
  backward = jax.make_jaxpr(jax.grad(functools.partial(loss, layer)))(params).jaxpr
  allowed = {"float32", "complex64"}
  assert _scan_carry_dtypes(forward) and _scan_carry_dtypes(forward) <= allowed
  assert _scan_carry_dtypes(backward) <= allowed, _scan_carry_dtypes(backward)


@pytest.mark.parametrize("name,options", quick_subset(VARIANTS, keep=QUICK), ids=IDS)
def test_remat_gives_the_same_gradients_and_is_in_the_program(name, options):
  x, loss = _inputs_and_loss()
  plain, remat = _layer(name, options), _layer(name, options, remat=True)
  params = _init(plain, x)
  grads = [_grad(loss, layer, params) for layer in (plain, remat)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               *grads)
  programs = [_primitive_names(jax.make_jaxpr(jax.grad(functools.partial(
      loss, layer)))(params).jaxpr) for layer in (plain, remat)]
  is_remat = lambda n: "remat" in n or n == "checkpoint"
  assert not any(map(is_remat, programs[0])) and any(map(is_remat, programs[1]))


@pytest.mark.slow
def test_a_bfloat16_train_step_keeps_float32_parameters_state_and_loss():
  """Through the config: logits and loss float32, parameters and optimizer state
  float32, the step finite, and its loss within bfloat16 rounding of float32's."""
  losses = []
  for dtype in ("float32", "bfloat16"):
    cfg = config_lib.get_config()
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.dtype = 8, 2, dtype
    cfg.model.bidirectional, cfg.model.remat = True, dtype == "bfloat16"
    cfg = config_lib.resolve(cfg)
    state = steps.create_train_state(cfg, jax.random.PRNGKey(0), steps_per_epoch=10)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (16, 28, 28), np.uint8)),
             "label": jnp.asarray(rng.integers(0, 10, 16, np.int32))}
    preprocess = data.make_preprocess(cfg.data)
    logits = state.apply_fn({"params": state.params}, preprocess(batch["image"]))
    assert logits.dtype == jnp.float32
    step = jax.jit(functools.partial(steps.train_step, preprocess=preprocess))
    new_state, metrics = step(state, batch)
    assert bool(metrics["finite"]) and metrics["loss"].dtype == jnp.float32
    dtypes = {leaf.dtype.name for leaf in jax.tree.leaves(
        (new_state.params, new_state.opt_state)) if leaf.dtype.kind == "f"}
    assert dtypes == {"float32"}
    losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(losses[1], losses[0], rtol=2e-2)


def test_dtype_is_validated_and_float16_refused_with_the_reason():
  cfg = config_lib.get_config()
  assert models.build_model(config_lib.resolve(cfg).model).dtype is None
  cfg.model.dtype = "bfloat16"
  assert models.build_model(config_lib.resolve(cfg).model).dtype == jnp.bfloat16
  for value, expected in (("float16", "loss scaling.*bfloat16"),
                          ("float64", "model.dtype='float64' is not valid")):
    cfg.model.dtype = value
    with pytest.raises(ConfigError, match=expected) as info:
      config_lib.resolve(cfg)
    assert "\n" not in str(info.value)
