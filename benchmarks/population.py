r"""Examples/s per member of a population's train step: K seed LSTMs as one program.

    python3 benchmarks/population.py                       # K = 1, 4, 16
    python3 benchmarks/population.py --members=1,4,16 --steps=50 --repeats=3 \
        --json_out=benchmarks/results/population_NAME.json

Times `mnist_jax.population_step.make_step` (`jax.vmap` of `steps.train_step` over a
leading member axis, jitted, the stacked state donated: the step `mnist-jax-sweep
--population` trains with) for K members of the seed LSTM recipe
(experiments/seed_lstm.py: LSTM(100) over 28 rows, Adam 1e-3, batch 100), each member
with its own seed's parameters. Batches are random uint8 images [K, 100, 28, 28] and
labels placed on the device first: the train step alone, without the data pipeline,
validation or checkpoints.

Per K: the first call (tracing and compiling, plus one step), then the best of
`--repeats` timed repeats of `--steps` steps each (dispatched back to back and waited
for once, as the training loop does), after two untimed steps. Reported as examples/s
per member (what each run of the population gets), for the whole population (K times
that), and per member relative to K=1 (K=1 is in the list, or measured first).

Runs with plain `python3` wherever jax, flax and optax are: nothing imported here needs
ml_collections, TensorFlow or tensorflow-datasets (a GPU machine may lack them), so the
seed config is built here as a namespace (`seed_lstm_config`; tests/test_population.py
checks it against experiments/seed_lstm.py).
"""

import argparse
import json
import os
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_jax import data  # pylint: disable=wrong-import-position
from mnist_jax import models  # pylint: disable=wrong-import-position
from mnist_jax import population_step  # pylint: disable=wrong-import-position
from mnist_jax import steps  # pylint: disable=wrong-import-position

STEPS_PER_EPOCH = 550  # 55,000 training images, batch 100 (the schedule is constant).


def seed_lstm_config(hidden_size: int = 100, batch_size: int = 100):
  """experiments/seed_lstm.py's config, as the fields `steps` reads, without
  ml_collections."""
  ns = types.SimpleNamespace
  cell = models.CELLS["lstm"]
  model = ns(name="lstm", hidden_size=hidden_size, num_layers=1, bidirectional=False,
             dropout=0.0, readout="last", unroll=1, num_classes=10, dtype="float32",
             remat=False, cell_file=None,
             options={"lstm": {k: o.default for k, o in cell.OPTIONS.items()}})
  optimizer = ns(name="adam", learning_rate=1e-3, schedule="constant",
                 warmup_epochs=0.0, end_learning_rate_factor=0.0, weight_decay=0.0,
                 momentum=0.9, grad_clip_norm=None, label_smoothing=0.0,
                 recurrent_lr_factor=1.0, recurrent_weight_decay=None, ema_decay=0.0)
  data_config = ns(name="mnist", sequence="rows", resize=None, standardize=False,
                   augment_max_shift=0, permutation=None, permutation_seed=None)
  return ns(seed=0, num_epochs=10, batch_size=batch_size, model=model,
            optimizer=optimizer, data=data_config)


def measure(config, members: int, num_steps: int, repeats: int) -> dict:
  """Compile time and the best repeat's examples/s of a population of `members`."""
  states = [steps.create_train_state(config, jax.random.PRNGKey(seed), STEPS_PER_EPOCH)
            for seed in range(members)]
  state = population_step.stack(states)
  step = population_step.make_step({
      "preprocess": data.make_preprocess(config.data),
      "label_smoothing": config.optimizer.label_smoothing,
      "augment_max_shift": config.data.augment_max_shift})
  rng = np.random.default_rng(0)
  shape = (members, config.batch_size)
  batch = jax.device_put({
      "image": rng.integers(0, 256, (*shape, 28, 28), dtype=np.uint8),
      "label": rng.integers(0, 10, shape).astype(np.int32)})
  rates = jnp.full((members,), config.optimizer.learning_rate, jnp.float32)
  active = jnp.ones((members,), bool)
  start = time.perf_counter()
  state, metrics = step(state, rates, active, batch)
  jax.block_until_ready((state, metrics))
  first_call_s = time.perf_counter() - start
  for _ in range(2):
    state, metrics = step(state, rates, active, batch)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(num_steps):
      state, metrics = step(state, rates, active, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  per_member = num_steps * config.batch_size / min(times)
  return {"members": members, "first_call_s": first_call_s,
          "step_ms": 1e3 * min(times) / num_steps,
          "examples_per_s_per_member": per_member,
          "examples_per_s_total": per_member * members,
          "repeats_s": times}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--members", default="1,4,16",
                      help="Population sizes K, comma-separated.")
  parser.add_argument("--steps", type=int, default=20, help="Steps per timed repeat.")
  parser.add_argument("--repeats", type=int, default=3, help="Timed repeats (best).")
  parser.add_argument("--hidden", type=int, default=100, help="LSTM units.")
  parser.add_argument("--batch", type=int, default=100, help="Batch per member.")
  parser.add_argument("--json_out", default=None, help="Also write JSON here.")
  args = parser.parse_args()
  sizes = [int(k) for k in args.members.split(",")]
  if not sizes or min(sizes) < 1 or args.steps < 1 or args.repeats < 1:
    parser.error("--members must list positive sizes; --steps, --repeats >= 1.")
  config = seed_lstm_config(args.hidden, args.batch)
  device = jax.devices()[0]
  print(f"population train step: LSTM({args.hidden}), batch {args.batch} x 28 x 28 "
        f"per member, {device.platform} ({device.device_kind}), jax {jax.__version__},"
        f" load average {os.getloadavg()[0]:.2f}", flush=True)
  results = {k: measure(config, k, args.steps, args.repeats)
             for k in dict.fromkeys([1] + sizes)}
  base = results[1]["examples_per_s_per_member"]
  print(f"{'K':>4} {'first call s':>12} {'step ms':>9} {'ex/s per member':>16} "
        f"{'ex/s total':>12} {'per member vs K=1':>18}")
  for k in sizes:
    r = results[k]
    r["per_member_vs_k1"] = r["examples_per_s_per_member"] / base
    print(f"{k:>4} {r['first_call_s']:>12.2f} {r['step_ms']:>9.2f} "
          f"{r['examples_per_s_per_member']:>16,.0f} "
          f"{r['examples_per_s_total']:>12,.0f} {r['per_member_vs_k1']:>18.2f}",
          flush=True)
  print("ex/s per member (all members): " + "; ".join(  # One line for gpu_check.sh.
      f"K={k} {results[k]['examples_per_s_per_member']:,.0f} "
      f"({results[k]['examples_per_s_total']:,.0f})" for k in sizes), flush=True)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump({"device": f"{device.platform} ({device.device_kind})",
                 "jax": jax.__version__, "hidden": args.hidden, "batch": args.batch,
                 "steps": args.steps, "repeats": args.repeats,
                 "results": [results[k] for k in sizes]}, f, indent=2)


if __name__ == "__main__":
  main()
