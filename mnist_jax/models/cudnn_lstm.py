"""The built-in LSTM run by cuDNN (`model.options.lstm.implementation = "cudnn"`).

`jax.experimental.rnn.lstm` calls cuDNN's fused LSTM, which takes one flat float32
weight vector. Its layout, for pseudo-layers p = (layer 0 forward, layer 0 backward,
layer 1 forward, ...)::

    W_ih^0, W_hh^0, W_ih^1, W_hh^1, ..., b_ih^0, b_hh^0, b_ih^1, b_hh^1, ...
    W_ih [4 * hidden, inputs], W_hh [4 * hidden, hidden], b_ih and b_hh [4 * hidden]

with the gate blocks along the first axis in the order i, f, g, o, and
z = W_ih x + b_ih + W_hh h + b_hh. Our `LSTM` keeps the same gates in the same order
along the last axis of input/kernel [inputs, 4 * hidden], input/bias [4 * hidden] and
recurrent_kernel [hidden, 4 * hidden], so packing is a transpose per matrix, no gate
permutation, and b_hh = 0 (we have one bias). The forget-gate bias of 1 (or chrono's)
is only where input/bias starts, not a constant added at each step, so nothing else
moves. The parameters stay ours and are packed inside the jitted step, so a workdir
trained with either implementation resumes and evaluates with the other.

Each layer and direction is its own cuDNN call (num_layers=1, unidirectional), the
backward direction on time-flipped inputs: `SequenceClassifier` stacks the layers,
concatenates the directions and applies its dropout exactly as for the scan, so
num_layers, bidirectional and dropout mean the same with both implementations.

What the scan does and cuDNN cannot is refused at config validation, one line each:
no CUDA GPU, `model.dtype` other than float32 (jax.experimental.rnn passes float32
only), `model.remat` (cuDNN keeps its own reserve space for the backward pass).
`model.unroll` is the scan's and is ignored. Sequence lengths: every sequence in
mnist_jax has the batch's full length (the padded last evaluation batch adds whole
examples, which cuDNN runs like any other), so each is passed at full length.
"""

import importlib.metadata
import pkgutil
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mnist_jax.errors import ConfigError

SCAN_INSTEAD = "use implementation='scan' (the default; same parameters and checkpoints)"


def pack_weights(layers: Sequence[tuple[jax.Array, jax.Array, jax.Array]]) -> jax.Array:
  """cuDNN's flat weight vector from our parameters, one triple per pseudo-layer.

  Args:
    layers: (input kernel [inputs, 4 * hidden], input bias [4 * hidden], recurrent
      kernel [hidden, 4 * hidden]) in cuDNN's pseudo-layer order (layer 0 forward,
      layer 0 backward when bidirectional, layer 1 forward, ...).

  Returns:
    [sum over pseudo-layers of 4 * hidden * (inputs + hidden + 2)], float32.
  """
  matrices, biases = [], []
  for kernel, bias, recurrent_kernel in layers:
    matrices += [kernel.T.ravel(), recurrent_kernel.T.ravel()]  # W_ih, W_hh.
    biases += [bias, jnp.zeros_like(bias)]  # b_ih; b_hh = 0: we have one bias.
  return jnp.concatenate(matrices + biases).astype(jnp.float32)


def lstm_layer(inputs: jax.Array, kernel: jax.Array, bias: jax.Array,
               recurrent_kernel: jax.Array, reverse: bool = False) -> jax.Array:
  """One LSTM layer through cuDNN: [batch, time, inputs] -> [batch, time, hidden].

  Same result as `LSTM.__call__` with the scan: zero initial state, outputs aligned
  with the inputs also when `reverse` runs time from last to first.
  """
  from jax.experimental import rnn  # Imported here: only this path needs it.
  require_cuda()
  batch, time, features = inputs.shape
  hidden = recurrent_kernel.shape[0]
  x = inputs[:, ::-1] if reverse else inputs
  zeros = jnp.zeros((1, batch, hidden), jnp.float32)  # [layers * directions, b, h].
  lengths = jnp.full((batch,), time, jnp.int32)  # All full length (module docstring).
  y, _, _ = rnn.lstm(x.astype(jnp.float32), zeros, zeros,
                     pack_weights([(kernel, bias, recurrent_kernel)]), lengths,
                     input_size=features, hidden_size=hidden, num_layers=1,
                     dropout=0.0, bidirectional=False)
  return y[:, ::-1] if reverse else y


# -- What is refused, and where. -------------------------------------------------------
def config_error(model: Any) -> str | None:
  """What of `config.model` cuDNN cannot do as the scan does (None: nothing)."""
  if model.dtype != "float32":
    return (f"implementation='cudnn' computes in float32 only (jax.experimental.rnn), "
            f"not config.model.dtype={model.dtype!r}; set model.dtype='float32' or "
            f"{SCAN_INSTEAD}")
  if model.remat:
    return ("implementation='cudnn' keeps cuDNN's own reserve space for the backward "
            "pass, so config.model.remat=True cannot apply; set model.remat=False or "
            f"{SCAN_INSTEAD}")
  return None


def machine_error() -> str | None:
  """Why this machine cannot run cuDNN's LSTM (None: it can), for config validation."""
  missing = _cuda_missing()
  if missing is None:
    return None
  return f"implementation='cudnn' needs a CUDA GPU, but {missing}; {SCAN_INSTEAD}"


def require_cuda() -> None:
  """Raises ConfigError when the layer is traced anywhere but on a CUDA GPU.

  Validation accepts a machine with JAX's CUDA plugin before any backend is started;
  this catches the one it could not see, that plugin without a usable GPU.
  """
  problem = machine_error()
  if problem:
    raise ConfigError(f"config.model.options.lstm: {problem}.")


def _cuda_missing() -> str | None:
  """What stands between JAX here and a CUDA GPU; None when JAX runs on one.

  Starts no backend: configs are validated in processes that must leave the GPU
  alone (a sweep's parent, whose runs start their own; JAX would preallocate most of
  the GPU's memory for it). So, in this order: the backends JAX has started, else
  $JAX_PLATFORMS (the first platform is the default one), else whether a CUDA plugin
  is installed at all.
  """
  if _backends_started():
    platform = jax.default_backend()
    if platform == "gpu" and "cuda" in jax.extend.backend.backends():
      return None
    return f"JAX here runs on {platform}"
  platforms = jax.config.jax_platforms
  if platforms:
    first = platforms.split(",")[0].strip().lower()
    return None if first in ("cuda", "gpu") else f"JAX_PLATFORMS={platforms}"
  if _cuda_plugin_installed():
    return None
  return "JAX here has no CUDA plugin, so it runs on the CPU"


def _backends_started() -> bool:
  from jax._src import xla_bridge  # No public equivalent; absent: assume not started.
  started = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(started and started())


def _cuda_plugin_installed() -> bool:
  """Whether JAX would find a CUDA PJRT plugin (jax[cuda12], jax[cuda13]), as JAX's
  own discovery does: modules under `jax_plugins` and the "jax_plugins" entry points."""
  names = [entry.value for entry in importlib.metadata.entry_points(group="jax_plugins")]
  try:
    import jax_plugins  # A namespace package; absent without any plugin.
    names += [name for _, name, _ in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  return any("cuda" in name for name in names)
