"""Train state and steps: every parameter learns, bad steps are refused, RNG per step."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import quick_subset
from mnist_jax import config as config_lib
from mnist_jax import data
from mnist_jax import models
from mnist_jax import parallel
from mnist_jax import preemption
from mnist_jax import steps
from mnist_jax import train
from mnist_jax.errors import ConfigError


def _state_and_batch(model_name="lstm", **model_overrides):
  cfg = config_lib.get_config()
  cfg.model.name = model_name
  cfg.model.hidden_size = 8
  cfg.model.num_layers = 2
  cfg.model.bidirectional = True
  config_lib.override(cfg, {f"model.{k}": v for k, v in model_overrides.items()})
  cfg = config_lib.resolve(cfg)
  state = steps.create_train_state(cfg, jax.random.PRNGKey(0), steps_per_epoch=10)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)),
           "label": jnp.asarray(rng.integers(0, 10, 16, dtype=np.int32))}
  return cfg, state, batch


def _step(cfg, **kwargs):
  return jax.jit(functools.partial(steps.train_step,
                                   preprocess=data.make_preprocess(cfg.data), **kwargs))


@pytest.mark.parametrize("name", quick_subset(sorted(models.CELLS), keep=("lstm",)))
def test_one_train_step_changes_every_parameter(name):
  cfg, state, batch = _state_and_batch(name, dropout=0.1)
  before = jax.tree.map(np.array, state.params)
  new_state, metrics = _step(cfg, augment_max_shift=2)(state, batch)
  assert int(new_state.step) == 1 and bool(metrics["finite"])
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, new_state.params)
  unchanged = [jax.tree_util.keystr(p) for p, c in
               jax.tree_util.tree_leaves_with_path(changed) if not c]
  assert not unchanged, f"parameters that did not move: {unchanged}"


def test_non_finite_step_leaves_state_untouched():
  cfg, state, batch = _state_and_batch()
  bad = jax.tree.map(lambda p: p.at[..., 0].set(jnp.nan) if p.ndim else p, state.params)
  state = state.replace(params=bad)
  before = jax.tree.map(np.array, state)
  new_state, metrics = _step(cfg)(state, batch)
  assert not bool(metrics["finite"])
  assert int(new_state.step) == 0
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), before.params,
               new_state.params)


def test_steps_are_deterministic_and_fold_rng_by_step():
  cfg, state, batch = _state_and_batch(dropout=0.5)
  step = _step(cfg)
  a, ma = step(state, batch)
  b, mb = step(state, batch)
  assert float(ma["loss"]) == float(mb["loss"])
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  # Same params at a different step number: a different dropout mask.
  c, mc = step(state.replace(step=state.step + 1), batch)
  assert float(mc["loss"]) != float(ma["loss"])


@pytest.mark.parametrize("opt,schedule", [("adam", "constant"), ("adamw", "cosine"),
                                          ("sgd", "warmup_cosine"), ("adam", "onecycle")])
def test_optimizers_and_schedules(opt, schedule):
  cfg = config_lib.get_config().optimizer
  cfg.name, cfg.schedule, cfg.warmup_epochs = opt, schedule, 1.0
  cfg.grad_clip_norm = 1.0
  lr = steps.create_learning_rate_schedule(cfg, steps_per_epoch=10, num_epochs=5)
  values = np.array([lr(s) for s in range(51)])
  assert values.max() == pytest.approx(1e-3, rel=1e-2)
  if schedule == "constant":
    assert np.all(values == 1e-3)
  else:
    assert values[-1] < 1e-4  # Decays.
  if schedule == "warmup_cosine":
    assert values[0] == 0 and np.argmax(values) == 10
  tx = steps.create_optimizer(cfg, 10, 5)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.full(3, 100.0)}, tx.init(params), params)
  assert np.all(np.isfinite(updates["w"]))


def test_eval_step_padding_is_dropped(make_tiny_config):
  cfg = config_lib.resolve(make_tiny_config())
  splits = data.load_splits(cfg)
  placement = parallel.make_placement()
  state = steps.create_train_state(cfg, jax.random.PRNGKey(0), 6)
  step = placement.eval_step(state.apply_fn, data.make_preprocess(cfg.data))
  logits, losses = parallel.predict(placement, step, state.params, splits["test"], 64)
  assert logits.shape == (300, 10) and losses.shape == (300,)
  full, _ = parallel.predict(placement, step, state.params, splits["test"], 300)
  np.testing.assert_allclose(logits, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_devices,batch_size",
                         quick_subset([(2, 32), (3, 50)], keep=[(2, 32)]))
def test_cpu_replicas_step_equals_one_full_batch_step(num_devices, batch_size):
  # CpuReplicas' arithmetic (shards, size-weighted average, update on device 0) does
  # not depend on which devices run the shards: one device listed several times
  # tests it in this one-device process. 50 rows on 3 devices: shards 16, 17, 17.
  cfg, state, _ = _state_and_batch()
  rng = np.random.default_rng(1)
  batch = {"image": rng.integers(0, 256, (batch_size, 28, 28), dtype=np.uint8),
           "label": rng.integers(0, 10, batch_size, dtype=np.int32)}
  replicas = parallel.CpuReplicas(jax.devices()[:1] * num_devices)
  shards = replicas.put_batch(batch)
  assert [len(s["label"]) for s in shards] == (
      [16, 16] if batch_size == 32 else [16, 17, 17])
  expected, expected_metrics = _step(cfg)(state, jax.tree.map(jnp.asarray, batch))
  step = replicas.train_step(state.apply_fn, preprocess=data.make_preprocess(cfg.data))
  got, got_metrics = step(jax.tree.map(jnp.copy, state), shards)
  assert int(got.step) == 1
  for key in ("loss", "accuracy", "grad_norm"):
    np.testing.assert_allclose(got_metrics[key], expected_metrics[key], rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               got.params, expected.params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
               jax.tree.leaves(got.opt_state), jax.tree.leaves(expected.opt_state))


@pytest.mark.slow
def test_cpu_replicas_single_shard_draws_like_one_device():
  # With dropout and shift augmentation on: a batch too small to split (< 2 x 16
  # rows) trains exactly as on one device, random draws included.
  cfg, state, batch = _state_and_batch(dropout=0.5)  # 16 rows: one shard.
  options = dict(augment_max_shift=2)
  expected, _ = _step(cfg, **options)(state, batch)
  replicas = parallel.CpuReplicas(jax.devices()[:1] * 2)
  shards = replicas.put_batch(jax.tree.map(np.asarray, batch))
  assert len(shards) == 1
  step = replicas.train_step(state.apply_fn, preprocess=data.make_preprocess(cfg.data),
                             **options)
  got, _ = step(jax.tree.map(jnp.copy, state), shards)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7),
               got.params, expected.params)


def test_mesh_batch_not_divisible_by_devices_is_one_line_error(monkeypatch):
  placement = parallel.MeshPlacement()
  monkeypatch.setattr(jax, "device_count", lambda: 4)
  with pytest.raises(ConfigError, match=r"^config.batch_size=50 must be divisible by "
                     r"the 4 devices of the data mesh .*use a multiple of 4\.$"):
    placement.check_batch_size(50, "batch_size")
  placement.check_batch_size(48, "batch_size")


def test_cpu_replicas_small_batch_stays_on_one_device():
  replicas = parallel.CpuReplicas(jax.devices()[:1] * 4)
  batch = {"label": np.arange(40)}
  assert [len(s["label"]) for s in replicas.put_batch(batch)] == [20, 20]
  assert [len(s["label"]) for s in replicas.put_batch({"label": np.arange(15)})] == [15]


def test_cpu_replicas_predict_equals_one_device(make_tiny_config):
  cfg = config_lib.resolve(make_tiny_config())
  splits = data.load_splits(cfg)
  state = steps.create_train_state(cfg, jax.random.PRNGKey(0), 6)
  preprocess = data.make_preprocess(cfg.data)
  outputs = []
  for placement in (parallel.MeshPlacement(),
                    parallel.CpuReplicas(jax.devices()[:1] * 3)):
    step = placement.eval_step(state.apply_fn, preprocess)
    outputs.append(parallel.predict(placement, step, state.params, splits["test"], 64))
  (logits, losses), (replica_logits, replica_losses) = outputs
  assert replica_logits.shape == (300, 10)
  np.testing.assert_allclose(replica_logits, logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(replica_losses, losses, rtol=1e-5, atol=1e-5)


def test_early_stopping_stops_and_a_rerun_does_not_train_on(make_tiny_config, tmp_path):
  # learning_rate 1e-12: validation accuracy never improves after epoch 1, so
  # patience 1 stops after epoch 2 of 5 (6 steps per epoch).
  cfg = make_tiny_config(num_epochs=5, early_stopping_patience=1,
                         **{"optimizer.learning_rate": 1e-12})
  workdir = str(tmp_path / "run")
  first = train.train(cfg, workdir)
  assert first["completed"] and first["step"] == 12
  again = train.train(cfg, workdir)  # The same command once more.
  assert again["completed"] and again["step"] == 12
  logged = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
  assert max(r["step"] for r in logged) == 12
  more_patience = make_tiny_config(num_epochs=5, early_stopping_patience=3,
                                   **{"optimizer.learning_rate": 1e-12})
  assert train.train(more_patience, workdir)["step"] == 24  # Raised: trains on.


def test_the_best_checkpoint_is_kept_and_evaluated(make_tiny_config, tmp_path,
                                                   monkeypatch):
  """Validation accuracy peaks at epoch 2 of 4; only the latest checkpoint is kept
  besides the best, so the best survives only if it is kept as the best, and the
  final test evaluation must use it, not the latest."""
  scripted = iter([0.5, 0.9, 0.7, 0.6])
  monkeypatch.setattr(train._Run, "validation_metrics",
                      lambda self: {"accuracy": next(scripted), "loss": 1.0})
  cfg = make_tiny_config(num_epochs=4, keep_checkpoints=1)  # 6 steps an epoch.
  workdir = tmp_path / "run"
  metrics = train.train_and_evaluate(cfg, str(workdir))
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [12, 24]
  assert metrics["checkpoint_step"] == 12
  assert [p.name for p in (workdir / "eval").glob("test_step*_metrics.json")] == [
      "test_step12_metrics.json"]
  from mnist_jax.workdir import Workdir
  assert Workdir.open(str(workdir)).restore_params("best")[0] == 12


def test_label_smoothing_is_the_smoothed_cross_entropy():
  cfg, state, batch = _state_and_batch()
  preprocess = data.make_preprocess(cfg.data)
  _, metrics = jax.jit(functools.partial(
      steps.loss_and_gradients, apply_fn=state.apply_fn, preprocess=preprocess,
      label_smoothing=0.2))(state.params, jax.random.PRNGKey(0), batch)
  logits = np.asarray(jax.jit(state.apply_fn)({"params": state.params},
                                              preprocess(batch["image"])), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = 0.8 * np.eye(10)[np.asarray(batch["label"])] + 0.2 / 10
  expected = -(targets * log_probs).sum(-1).mean()
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)


def test_gradient_clipping_scales_the_update_to_the_norm():
  opt = config_lib.get_config().optimizer
  opt.name, opt.momentum, opt.learning_rate, opt.grad_clip_norm = "sgd", 0.0, 1.0, 1.0
  tx = steps.create_optimizer(opt, steps_per_epoch=10, num_epochs=1)
  params = {"w": jnp.zeros(2)}
  big = {"w": jnp.array([3.0, 4.0])}  # Norm 5: scaled down to norm 1.
  updates, _ = tx.update(big, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.6, -0.8], rtol=1e-6)
  small = {"w": jnp.array([0.3, 0.4])}  # Norm 0.5: left alone.
  updates, _ = tx.update(small, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.3, -0.4], rtol=1e-6)


def test_a_second_signal_stops_at_once():
  import os
  import signal
  import time
  before = signal.getsignal(signal.SIGTERM)
  with preemption.StopSignal() as stop:
    assert stop.decision(1, epoch_end=False) is None
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # The handler runs in the main thread between bytecodes.
    assert stop.decision(2, epoch_end=False) == "SIGTERM"  # First: stop after a step.
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)  # Second: now.
      time.sleep(1)
  assert signal.getsignal(signal.SIGTERM) is before  # Handlers restored.


def test_recurrence_parameters_get_their_own_learning_rate_and_decay():
  """S5/LRU recipe: the cell's recurrence parameters train slower and without weight
  decay; everything else as configured."""
  from mnist_jax.models.lru import LRUBlock
  opt = config_lib.get_config().optimizer
  opt.name, opt.learning_rate, opt.weight_decay = "adamw", 0.1, 0.5
  opt.recurrent_lr_factor, opt.recurrent_weight_decay = 0.25, 0.0
  tx = steps.create_optimizer(opt, 10, 1, LRUBlock.RECURRENCE_PARAMS)
  params = {"layer0_fwd": {"lru": {"nu_log": jnp.ones(2), "D": jnp.ones(2)},
                           "norm": {"scale": jnp.ones(2)}},
            "head": {"kernel": jnp.ones(2)}}
  assert steps.recurrence_labels(params, LRUBlock.RECURRENCE_PARAMS) == {
      "layer0_fwd": {"lru": {"nu_log": "recurrence", "D": "rest"},
                     "norm": {"scale": "rest"}}, "head": {"kernel": "rest"}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves every parameter by lr (times its factor); adamw adds
  # lr * decay * param.
  np.testing.assert_allclose(updates["layer0_fwd"]["lru"]["nu_log"], -0.025, rtol=1e-5)
  np.testing.assert_allclose(updates["layer0_fwd"]["lru"]["D"], -0.1 - 0.05, rtol=1e-5)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.15, rtol=1e-5)
  # Left at their defaults: one optimizer for all (checkpoints keep their layout).
  plain = config_lib.get_config().optimizer
  state = steps.create_optimizer(plain, 10, 1, LRUBlock.RECURRENCE_PARAMS).init(params)
  is_multi = lambda x: isinstance(x, optax.MultiTransformState)
  assert not any(map(is_multi, jax.tree.leaves(state, is_leaf=is_multi)))
  state = tx.init(params)
  assert any(map(is_multi, jax.tree.leaves(state, is_leaf=is_multi)))
