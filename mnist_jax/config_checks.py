"""Value checks for `config.validate`: the precision, remat, EMA and optimizer rules.

Kept out of config.py (which declares every key) so that file stays a readable list of
keys. Nothing here imports the rest of the package: config.py imports this module.
"""

import math
from typing import Any

from mnist_jax.errors import ConfigError

NUMBER = (int, float)

OPTIMIZERS = ("adam", "adamw", "sgd")  # config.optimizer.name
SCHEDULES = ("constant", "cosine", "warmup_cosine", "onecycle")  # .schedule

# config.model.dtype: the compute dtype of the matmuls and layer outputs (parameters,
# recurrent state, layer-norm statistics and the loss stay float32; models/base.py).
DTYPES = ("float32", "bfloat16", "float16")
# config.eval_params: which parameters validation, test evaluation and prediction use.
EVAL_PARAMS = ("ema", "raw")

# Why float16 is refused rather than trained. Its 5-bit exponent flushes gradients
# below ~6e-8 to zero (and overflows above 65504), so float16 training needs dynamic
# loss scaling: scale the loss up, unscale the gradients, skip the step and shrink the
# scale on overflow. No maintained library does that for optax (DeepMind's jmp, the
# one there is, last released 0.0.4 in 2023), and doing it here would turn the
# overflow steps into expected events where `steps.apply_gradients` now stops a run.
# bfloat16 keeps float32's 8-bit exponent, so it needs no scaling at all.
FLOAT16_REFUSED = (
    "config.model.dtype='float16' is not supported: float16 training needs dynamic "
    "loss scaling (its gradients underflow), which mnist_jax does not do; use "
    "'bfloat16' (float32's exponent range, no loss scaling needed) or 'float32'.")


def choice(value: Any, name: str, choices) -> None:
  """Raises ConfigError unless `value` is one of `choices`."""
  if value not in choices:
    raise ConfigError(
        f"config.{name}={value!r} is not valid; choose one of: {', '.join(choices)}.")


def positive(value: Any, name: str, kind=(int,), allow_zero: bool = False) -> None:
  """Raises ConfigError unless `value` is a finite number of `kind` above (or at) 0."""
  ok = isinstance(value, kind) and not isinstance(value, bool)
  if ok:
    ok = (value >= 0 if allow_zero else value > 0) and math.isfinite(value)
  if not ok:
    what = "a non-negative" if allow_zero else "a positive"
    type_name = "integer" if kind == (int,) else "number"
    raise ConfigError(f"config.{name}={value!r} must be {what} {type_name}.")


def default_eval_params(config) -> str:
  """What an unset `config.eval_params` means: the EMA when there is one. (Runs
  before `validate_numerics`, which names a malformed ema_decay.)"""
  decay = config.optimizer.ema_decay
  return "ema" if isinstance(decay, NUMBER) and decay > 0 else "raw"


def validate_numerics(config) -> None:
  """model.dtype, model.remat, optimizer.ema_decay and eval_params.

  Raises:
    ConfigError: naming the first invalid field and what would be valid.
  """
  model = config.model
  choice(model.dtype, "model.dtype", DTYPES)
  if model.dtype == "float16":
    raise ConfigError(FLOAT16_REFUSED)
  if not isinstance(model.remat, bool):
    raise ConfigError(f"config.model.remat={model.remat!r} must be True or False.")
  decay = config.optimizer.ema_decay
  if (not isinstance(decay, NUMBER) or isinstance(decay, bool)
      or not 0.0 <= decay < 1.0):
    raise ConfigError(f"config.optimizer.ema_decay={decay!r} must be in [0, 1) "
                      f"(0: no parameter EMA; e.g. 0.999).")
  if config.eval_params is not None:
    choice(config.eval_params, "eval_params", EVAL_PARAMS)
    if config.eval_params == "ema" and decay == 0:
      raise ConfigError("config.eval_params='ema' needs a parameter EMA; set "
                        "optimizer.ema_decay (e.g. 0.999) or eval_params='raw'.")


def validate_optimizer(opt, num_epochs: int) -> None:
  """config.optimizer's values (`num_epochs`: the run's, for the warmup)."""
  choice(opt.name, "optimizer.name", OPTIMIZERS)
  choice(opt.schedule, "optimizer.schedule", SCHEDULES)
  positive(opt.learning_rate, "optimizer.learning_rate", NUMBER)
  positive(opt.warmup_epochs, "optimizer.warmup_epochs", NUMBER, allow_zero=True)
  positive(opt.weight_decay, "optimizer.weight_decay", NUMBER, allow_zero=True)
  positive(opt.end_learning_rate_factor, "optimizer.end_learning_rate_factor",
           NUMBER, allow_zero=True)
  if not isinstance(opt.momentum, NUMBER) or not 0.0 <= opt.momentum < 1.0:
    raise ConfigError(f"config.optimizer.momentum={opt.momentum!r} must be in [0, 1).")
  if not isinstance(opt.label_smoothing, NUMBER) or not 0 <= opt.label_smoothing < 1:
    raise ConfigError("config.optimizer.label_smoothing must be in [0, 1).")
  if opt.grad_clip_norm is not None:
    positive(opt.grad_clip_norm, "optimizer.grad_clip_norm", NUMBER)
  if opt.warmup_epochs and opt.warmup_epochs >= num_epochs:
    raise ConfigError(f"config.optimizer.warmup_epochs={opt.warmup_epochs} must be "
                      f"shorter than num_epochs={num_epochs}.")
  if opt.weight_decay and opt.name != "adamw":
    raise ConfigError("config.optimizer.weight_decay is only used by adamw; "
                      "set optimizer.name='adamw' or weight_decay=0.")
  positive(opt.recurrent_lr_factor, "optimizer.recurrent_lr_factor", NUMBER)
  if opt.recurrent_weight_decay is not None:
    positive(opt.recurrent_weight_decay, "optimizer.recurrent_weight_decay", NUMBER,
             allow_zero=True)
    if opt.name != "adamw":
      raise ConfigError("config.optimizer.recurrent_weight_decay is only used by "
                        "adamw; set optimizer.name='adamw' or unset it.")
