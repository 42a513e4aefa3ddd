"""The benchmark's printed table: speed per config and side, ratios, FLOP rates, memory."""

import statistics

import ml_collections

from mnist_jax import data
from mnist_jax import results


def describe(config: ml_collections.ConfigDict) -> str:
  m = config.model
  model = results.describe_model(m.to_dict())
  if m.name == "simple_rnn":
    model += f", {m.options.simple_rnn.activation}"
  if m.name == "lstm" and m.options.lstm.implementation != "scan":
    model += f", {m.options.lstm.implementation}"
  if m.dtype != "float32":
    model += f", {m.dtype}"
  steps = data.input_shape(config.data)[0]
  return f"{model}; {config.data.sequence} T={steps}"


def _spread(values: list[float]) -> str:
  """Half the min-max range as a percentage of the median: a noise indicator."""
  med = statistics.median(values)
  return f"{50 * (max(values) - min(values)) / med:.0f}%" if med else "-"


def _rss(side: dict) -> str:
  return f"{side['peak_rss_mib']:.0f} (+{side['rss_rise_mib']:.0f})"


def _percent(fraction: float | None) -> str:
  return "-" if fraction is None else f"{100 * fraction:.1f}%"


def format_table(results: list[tuple[str, dict]]) -> str:
  """One table: speed per config and side, ratios, FLOP rates and memory."""
  has_torch = any("torch" in r for _, r in results)
  width = max([len("model")] + [len(name) for name, _ in results])
  head = (f"{'model':<{width}} {'batch':>5} {'train ex/s':>11} {'±':>4} "
          f"{'eval ex/s':>10} "
          f"{'±':>4} {'compile s':>9} {'MFLOP/ex':>8} {'GFLOP/s':>7} {'%peak':>6} "
          f"{'%rec-mm':>7} {'RSS MiB (+rise)':>15}")
  if has_torch:
    head += (f" | {'torch train':>11} {'±':>4} {'torch eval':>10} {'±':>4} "
             f"{'GFLOP/s':>7} {'RSS MiB (+rise)':>15} | {'train x':>7} {'eval x':>6}")
  lines = [head, "-" * len(head)]
  for name, r in results:
    j = r["jax"]
    line = (f"{name:<{width}} {r['config']['batch_size']:>5} "
            f"{j['train_examples_per_s']:>11,.0f} "
            f"{_spread(j['train_examples_per_s_repeats']):>4} "
            f"{j['eval_examples_per_s']:>10,.0f} "
            f"{_spread(j['eval_examples_per_s_repeats']):>4} "
            f"{j['train_compile_s']:>9.2f} "
            f"{r['flops_per_example']['train'] / 1e6:>8.1f} {j['train_gflops']:>7.1f} "
            f"{100 * j['train_fraction_of_peak']:>5.1f}% "
            f"{_percent(j['train_fraction_of_recurrent_shape']):>7} "
            f"{_rss(j):>15}")
    if "torch" in r:
      t = r["torch"]
      line += (f" | {t['train_examples_per_s']:>11,.0f} "
               f"{_spread(t['train_examples_per_s_repeats']):>4} "
               f"{t['eval_examples_per_s']:>10,.0f} "
               f"{_spread(t['eval_examples_per_s_repeats']):>4} "
               f"{t['train_gflops']:>7.1f} {_rss(t):>15} | "
               f"{j['train_examples_per_s'] / t['train_examples_per_s']:>6.2f}x "
               f"{j['eval_examples_per_s'] / t['eval_examples_per_s']:>5.2f}x")
    elif has_torch:
      line += " | (no torch run)"
    lines.append(line)
  peak = results[0][1]["matmul"]["peak_gflops"] if results else float("nan")
  lines += [
      "",
      "ex/s: median of the repeats; ±: half the min-max range of the repeats, as % of "
      "the median. train x / eval x: JAX ex/s over PyTorch ex/s (>1: JAX faster).",
      "eval uses eval_batch_size (torch: no_grad). MFLOP/ex: matmul FLOPs of one "
      "training example (3x forward). compile s: JAX train step trace + compile.",
      f"%peak: training GFLOP/s over an f32 1000x400 @ 400x400 matmul in a jitted "
      f"fori_loop ({peak:.0f} GFLOP/s in this run); %rec-mm: over the model's own "
      f"recurrent matmul shape run the same way.",
      "RSS MiB: process peak resident set while that side compiled / built and "
      "warmed up (includes what the process already held; +rise: above the RSS at "
      "the start of that phase). JAX eval at eval_batch_size is part of the warm-up.",
  ]
  if any(r["config"]["model"]["name"] == "gru" for _, r in results):
    lines.append(
        "GRU: both sides run the reset-after variant, n = tanh(W_in x + b_in + r * "
        "(W_hn h + b_hn)) (mnist_jax.models.GRU; torch.nn.GRU). Flax's nn.GRUCell "
        "(reset before the matmul) is not used.")
  return "\n".join(lines)
