"""The pure pieces of training: optimizer, train state, `train_step` and `eval_step`.

Nothing here knows about devices, files or the loop: `parallel.py` jits these for a
placement, `train.py` runs them, `evaluate.py` reuses `eval_step` and `workdir.py`
`abstract_params`.

Batches are {"image": uint8 [batch, 28, 28], "label": int32 [batch]}; `preprocess`
turns images into model inputs [batch, time, features] on the device.
"""

import functools
from typing import TYPE_CHECKING, Any, Callable

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from mnist_jax import data
from mnist_jax import ema
from mnist_jax import models

Batch = dict[str, jax.Array]
Preprocess = Callable[[jax.Array], jax.Array]

if TYPE_CHECKING:  # Annotations only: benchmarks/population.py runs without it.
  import ml_collections


class TrainState(train_state.TrainState):
  """Flax TrainState plus the run's base RNG key (per-step keys are folded in)."""
  rng: jax.Array


def create_learning_rate_schedule(opt: "ml_collections.ConfigDict",
                                  steps_per_epoch: int,
                                  num_epochs: int) -> optax.Schedule:
  total = steps_per_epoch * num_epochs
  peak = opt.learning_rate
  end = peak * opt.end_learning_rate_factor
  warmup = int(opt.warmup_epochs * steps_per_epoch)
  if opt.schedule == "constant":
    return optax.constant_schedule(peak)
  if opt.schedule == "cosine":
    return optax.cosine_decay_schedule(peak, total, alpha=opt.end_learning_rate_factor)
  if opt.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1),
                                              end_value=end)
  # onecycle: warmup_epochs sets where the peak sits (default 30% of training).
  pct = warmup / total if warmup else 0.3
  return optax.cosine_onecycle_schedule(total, peak, pct_start=pct)


def _base_optimizer(opt: "ml_collections.ConfigDict", lr: optax.Schedule,
                    weight_decay: float) -> optax.GradientTransformation:
  if opt.name == "adam":
    return optax.adam(lr)
  if opt.name == "adamw":
    return optax.adamw(lr, weight_decay=weight_decay)
  return optax.sgd(lr, momentum=opt.momentum, nesterov=True)


def recurrence_labels(params: Any, names: tuple[str, ...]) -> Any:
  """"recurrence" for the leaves of recurrent layers named in `names`, else "rest"."""
  def label(path, _):
    keys = [getattr(k, "key", str(k)) for k in path]
    in_layer = any(str(k).startswith("layer") for k in keys)
    return "recurrence" if in_layer and keys[-1] in names else "rest"
  return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(opt: "ml_collections.ConfigDict", steps_per_epoch: int,
                     num_epochs: int, recurrence: tuple[str, ...] = ()
                     ) -> optax.GradientTransformation:
  """The optimizer `opt` describes, clipping first if configured.

  Args:
    opt: `config.optimizer`.
    steps_per_epoch, num_epochs: shape the learning-rate schedule.
    recurrence: the cell's RECURRENCE_PARAMS; with a recurrent_lr_factor other than 1
      or a recurrent_weight_decay, those parameters get their own optimizer
      (`optax.multi_transform`), otherwise one optimizer serves all.

  With `opt.ema_decay` > 0 the chain ends with `ema.params_ema`, whose state holds
  the parameters' moving average (`eval_params` reads it).
  """
  lr = create_learning_rate_schedule(opt, steps_per_epoch, num_epochs)
  tx = _base_optimizer(opt, lr, opt.weight_decay)
  if opt.recurrent_lr_factor != 1.0 or opt.recurrent_weight_decay is not None:
    factor = opt.recurrent_lr_factor
    decay = (opt.weight_decay if opt.recurrent_weight_decay is None
             else opt.recurrent_weight_decay)
    recurrent_tx = _base_optimizer(opt, lambda step: factor * lr(step), decay)
    tx = optax.multi_transform(
        {"recurrence": recurrent_tx, "rest": tx},
        functools.partial(recurrence_labels, names=recurrence))
  if opt.grad_clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  if opt.ema_decay > 0:  # Last: it averages the parameters the updates produce.
    tx = optax.chain(tx, ema.params_ema(opt.ema_decay))
  return tx


def init_params(config: "ml_collections.ConfigDict", rng: jax.Array) -> Any:
  """The model's initial parameters for `config` (`rng`: a raw uint32 key)."""
  model = models.build_model(config.model)
  dummy = jnp.zeros((1, *data.input_shape(config.data)), jnp.float32)
  return model.init(rng, dummy, train=False)["params"]


def abstract_params(config: "ml_collections.ConfigDict") -> Any:
  """Shapes and dtypes of the parameters (`jax.ShapeDtypeStruct`s), computing nothing.

  The restore target for evaluation: no optimizer, so no schedule to invent.
  """
  return jax.eval_shape(lambda rng: init_params(config, rng), jax.random.PRNGKey(0))


def _optimizer_for(config: "ml_collections.ConfigDict",
                   steps_per_epoch: int) -> optax.GradientTransformation:
  return create_optimizer(config.optimizer, steps_per_epoch, config.num_epochs,
                          models.layer_class(config.model).RECURRENCE_PARAMS)


def abstract_opt_state(config: "ml_collections.ConfigDict") -> Any:
  """Shapes and dtypes of the optimizer state, computing nothing: the restore target
  for the parameter EMA (the schedule's length does not change the state's shape)."""
  tx = _optimizer_for(config, steps_per_epoch=1000)  # Any length serves.
  return jax.eval_shape(tx.init, abstract_params(config))


def eval_params(params: Any, opt_state: Any, which: str) -> Any:
  """The parameters `config.eval_params` names: "raw" (`params`) or "ema" (the
  moving average in `opt_state`; ValueError if it holds none)."""
  if which == "raw":
    return params
  averaged = ema.find(opt_state)
  if averaged is None:
    raise ValueError("eval_params='ema' but the optimizer state holds no parameter "
                     "EMA (optimizer.ema_decay=0).")
  return averaged


def create_train_state(config: "ml_collections.ConfigDict", rng: jax.Array,
                       steps_per_epoch: int) -> TrainState:
  """Initialises the model and optimizer. `rng` is a raw uint32 key."""
  params_rng, state_rng = jax.random.split(rng)
  return TrainState.create(
      apply_fn=models.build_model(config.model).apply,
      params=init_params(config, params_rng),
      tx=_optimizer_for(config, steps_per_epoch),
      rng=state_rng)


def _all_finite(tree: Any) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite (a scalar bool array)."""
  checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def loss_and_gradients(params: Any, rng: jax.Array, batch: Batch, *,
                       apply_fn: Callable, preprocess: Preprocess,
                       label_smoothing: float = 0.0,
                       augment_max_shift: int = 0) -> tuple[Any, dict]:
  """Gradients of the mean loss over `batch`, and that batch's {loss, accuracy}.

  Args:
    params: model parameters.
    rng: this step's key (shift augmentation and dropout draw from it).
    batch: uint8 images [batch, 28, 28] and integer labels [batch].
    apply_fn: the model's `apply`.
    preprocess: images -> model inputs [batch, time, features].
    label_smoothing: optax.smooth_labels' alpha.
    augment_max_shift: random shift of up to this many pixels (0: none).

  Returns:
    (gradients shaped like `params`, {"loss": scalar, "accuracy": scalar}).
  """
  shift_rng, dropout_rng = jax.random.split(rng)
  images = data.random_shift(shift_rng, batch["image"], augment_max_shift)
  inputs = preprocess(images)
  labels = batch["label"]

  def loss_fn(params):
    logits = apply_fn({"params": params}, inputs, train=True,
                      rngs={"dropout": dropout_rng})
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                  label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return grads, {"loss": loss,
                 "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def apply_gradients(state: TrainState, grads: Any,
                    metrics: dict) -> tuple[TrainState, dict]:
  """The optimizer update, unless anything is not finite; adds grad_norm and finite.

  A step whose loss, gradients or updated state are not finite leaves the state
  unchanged (the caller stops the run); `finite` in the metrics reports it.

  Args:
    state: the train state (its step, params and optimizer state are updated).
    grads: gradients of the mean loss, shaped like `state.params`.
    metrics: {"loss", "accuracy"} of the batch the gradients came from.

  Returns:
    (new state, metrics plus "grad_norm" and "finite").
  """
  grad_norm = optax.global_norm(grads)
  new_state = state.apply_gradients(grads=grads)
  # Finite gradients can still give a non-finite update (e.g. a huge step size).
  finite = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
            & _all_finite((new_state.params, new_state.opt_state)))
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                           new_state, state)
  return new_state, {**metrics, "grad_norm": grad_norm, "finite": finite}


def train_step(state: TrainState, batch: Batch, *, preprocess: Preprocess,
               label_smoothing: float = 0.0,
               augment_max_shift: int = 0) -> tuple[TrainState, dict]:
  """One optimizer step on a batch of uint8 images [batch, 28, 28] and labels.

  The step's key is `fold_in(state.rng, state.step)`: a pure function of the run's
  seed and the step, so a resumed run draws what an uninterrupted one would.
  Metrics: loss, accuracy, grad_norm, and `finite` (False: the state was left
  unchanged because something was not finite; see `apply_gradients`).
  """
  grads, metrics = loss_and_gradients(
      state.params, jax.random.fold_in(state.rng, state.step), batch,
      apply_fn=state.apply_fn, preprocess=preprocess,
      label_smoothing=label_smoothing, augment_max_shift=augment_max_shift)
  return apply_gradients(state, grads, metrics)


def eval_step(params: Any, batch: Batch, *, apply_fn: Callable,
              preprocess: Preprocess) -> dict:
  """Logits [batch, classes] and per-example loss [batch] for a (padded) batch."""
  logits = apply_fn({"params": params}, preprocess(batch["image"]), train=False)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return {"logits": logits, "loss": loss}
