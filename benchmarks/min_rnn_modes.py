r"""minGRU / minLSTM layer speed: mode=sequential (lax.scan) vs parallel (associative).

    python benchmarks/min_rnn_modes.py
    python benchmarks/min_rnn_modes.py --cell=min_lstm --batch=100 --time=784 \
        --hidden=128

Times one jitted forward + backward (gradient with respect to the parameters, as in
training) of a single layer on random [batch, time, 1] pixel sequences: the best of
`--repeats` calls after a compiling one. The layer alone, not a training step: no head,
no optimizer, no data pipeline. The load average is printed because a shared machine
slows both modes, though not necessarily alike.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp

from mnist_jax import models
from mnist_jax.models.min_rnn import MODES


def best_seconds(cell_name: str, mode: str, inputs: jax.Array, hidden: int,
                 repeats: int) -> float:
  cell = models.CELLS[cell_name](hidden_size=hidden, mode=mode)
  params = cell.init(jax.random.key(1), inputs)["params"]
  loss = lambda p: jnp.mean(cell.apply({"params": p}, inputs))
  step = jax.jit(jax.value_and_grad(loss))
  jax.block_until_ready(step(params))  # Compiles.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(params))
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cell", default="min_gru", choices=("min_gru", "min_lstm"))
  parser.add_argument("--batch", type=int, default=100)
  parser.add_argument("--time", type=int, default=784)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  inputs = jax.random.uniform(jax.random.key(0), (args.batch, args.time, 1))
  print(f"{args.cell}, inputs [{args.batch}, {args.time}, 1], hidden {args.hidden}, "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}")
  for mode in MODES:
    seconds = best_seconds(args.cell, mode, inputs, args.hidden, args.repeats)
    print(f"  {mode:<10} forward+backward best of {args.repeats}: "
          f"{seconds * 1e3:7.1f} ms")


if __name__ == "__main__":
  main()
