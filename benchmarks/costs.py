"""What a benchmark measures besides speed: matmul FLOPs, a matmul reference, peak RSS."""

import resource
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections

from mnist_jax import data
from mnist_jax import models


def param_shapes(config: ml_collections.ConfigDict) -> dict:
  """The model's parameter shapes (abstract: nothing is computed)."""
  model = models.build_model(config.model)
  dummy = jax.ShapeDtypeStruct((1, *data.input_shape(config.data)), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                        dummy)["params"]


def flops_per_example(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Matmul FLOPs of one example: {"forward": ..., "train": 3 * forward}.

  Read off the parameter shapes: every 2-D weight of a recurrent layer (input
  projection W_x [features, gates * hidden], recurrent matrix W_h [hidden, gates *
  hidden], or any other per-step matrix) is applied once per time step, 2 FLOPs per
  weight; the head once per example. So an LSTM layer costs T * 2 * 4H * (F + H).
  Diagonal recurrences (1-D weights), biases and gate arithmetic are not counted.
  Training counts 3x forward (backward computes gradients for both the inputs and the
  weights of every matmul), the usual convention.
  """
  steps = data.input_shape(config.data)[0]
  forward = 0.0
  for name, subtree in param_shapes(config).items():
    weights = sum(leaf.size for leaf in jax.tree.leaves(subtree) if leaf.ndim == 2)
    forward += 2 * weights * (1 if name == "head" else steps)
  return {"forward": forward, "train": 3 * forward}


def recurrent_matmul_shape(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """(hidden, gates * hidden) of the first layer's recurrent matrix, if it has one."""
  layer = param_shapes(config).get("layer0_fwd", {})
  kernel = layer.get("recurrent_kernel") if hasattr(layer, "get") else None
  return tuple(kernel.shape) if kernel is not None and kernel.ndim == 2 else None


def matmul_gflops(m: int, k: int, n: int, iterations: int, repeats: int = 3) -> float:
  """GFLOP/s of an f32 [m, k] @ [k, n] matmul iterated in a jitted `fori_loop`.

  Each iteration feeds the first k columns of its product back in, so XLA cannot hoist
  the matmul out of the loop; the columns come from orthogonal blocks, so values keep
  their scale.
  """
  key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
  blocks = [jax.nn.initializers.orthogonal()(key, (k, k))
            for key in jax.random.split(key_w, -(-n // k))]
  w = jnp.concatenate(blocks, axis=1)[:, :n]
  if n < k:  # Pad the fed-back slice up to k columns.
    w = jnp.pad(w, ((0, 0), (0, k - n)))
  x = jax.random.normal(key_x, (m, k), jnp.float32)

  @jax.jit
  def loop(x, w):
    return jax.lax.fori_loop(0, iterations, lambda _, h: (h @ w)[:, :k], x)

  loop(x, w).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    loop(x, w).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * m * k * w.shape[1] * iterations / min(times) / 1e9


def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark for this process (Linux >= 4.0)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _rss_mib() -> tuple[float, float]:
  """(current, peak) resident set size in MiB."""
  current = peak = None
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          current = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
          peak = int(line.split()[1]) / 1024
  except OSError:
    pass
  maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # ru_maxrss is in bytes on macOS, KiB on Linux.
  maxrss_mib = maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024
  return (current if current is not None else float("nan"),
          peak if peak is not None else maxrss_mib)


class PeakRss:
  """Peak RSS over a `with` block, and how far it rose above the RSS at entry."""

  def __enter__(self):
    self.per_phase = _reset_peak_rss()
    self.start_mib, _ = _rss_mib()
    return self

  def __exit__(self, *exc):
    _, self.peak_mib = _rss_mib()
    self.rise_mib = self.peak_mib - self.start_mib
