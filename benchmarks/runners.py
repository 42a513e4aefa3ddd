"""Runners: one per framework, each building a config's model and timing n steps.

The JAX runner is the library's own code, exactly as `train.train` builds it; the
PyTorch runner (`pip install -e .[bench]`) is its eager `torch.nn` equivalent.
"""

import dataclasses
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from mnist_jax import data
from mnist_jax import parallel
from mnist_jax import steps

# Models the PyTorch runner can build (torch.nn.LSTM, GRU, RNN).
TORCH_MODELS = ("lstm", "gru", "simple_rnn", "irnn")


@dataclasses.dataclass
class Runner:
  """Runs and waits for n training or evaluation steps of one framework."""
  name: str
  train_steps: Callable[[int], None]
  eval_steps: Callable[[int], None]
  info: dict


def random_batch(rng: np.random.Generator, batch_size: int,
                 num_classes: int) -> dict[str, np.ndarray]:
  size = data.IMAGE_SIZE  # Raw images are 28 x 28; `preprocess` resizes if configured.
  return {"image": rng.integers(0, 256, (batch_size, size, size), dtype=np.uint8),
          "label": rng.integers(0, num_classes, (batch_size,), dtype=np.int32)}


def jax_runner(config: ml_collections.ConfigDict, num_batches: int = 4) -> Runner:
  """Builds, compiles and warms up the library's train and eval steps for `config`.

  Args:
    config: a resolved config.
    num_batches: distinct batches cycled through (held on the device).
  """
  placement = parallel.make_placement()
  placement.check_batch_size(config.batch_size, "batch_size")
  placement.check_batch_size(config.eval_batch_size, "eval_batch_size")
  preprocess = data.make_preprocess(config.data, perm=data.permutation(config.data))
  spe = data.steps_per_epoch(55_000, config.batch_size)  # Only shapes the LR schedule.
  state = steps.create_train_state(config, jax.random.PRNGKey(config.seed), spe)
  state = placement.put_state(state)

  # Exactly as `train.train` builds it.
  jit_train_step = placement.train_step(
      state.apply_fn, preprocess=preprocess,
      label_smoothing=config.optimizer.label_smoothing,
      augment_max_shift=config.data.augment_max_shift)
  jit_eval_step = placement.eval_step(state.apply_fn, preprocess)

  rng = np.random.default_rng(0)
  classes = config.model.num_classes
  train_batches = [placement.put_batch(random_batch(rng, config.batch_size, classes))
                   for _ in range(num_batches)]
  eval_batches = [placement.put_batch(random_batch(rng, config.eval_batch_size,
                                                    classes))
                  for _ in range(num_batches)]

  # Compile ahead of time to time it; the jitted functions reuse the executables.
  start = time.perf_counter()
  compiled = jit_train_step.compile(state, train_batches[0])
  train_compile_s = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(jit_eval_step(state.params, eval_batches[0]))
  eval_compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()

  holder = {"state": state}  # The state is donated: always keep the latest.

  def train_steps(n: int) -> None:
    state = holder["state"]
    for i in range(n):
      state, _ = jit_train_step(state, train_batches[i % num_batches])
    holder["state"] = jax.block_until_ready(state)

  def eval_steps(n: int) -> None:
    params = holder["state"].params
    out = None
    for i in range(n):
      out = jit_eval_step(params, eval_batches[i % num_batches])
    jax.block_until_ready(out)

  info = {"train_compile_s": train_compile_s, "eval_compile_s": eval_compile_s,
          "placement": placement.describe()}
  if memory is not None:
    info["xla_train_step_mib"] = {
        "arguments": memory.argument_size_in_bytes / 2**20,
        "outputs": memory.output_size_in_bytes / 2**20,
        "aliased": memory.alias_size_in_bytes / 2**20,
        "temporaries": memory.temp_size_in_bytes / 2**20,
    }
  return Runner("jax", train_steps, eval_steps, info)


def torch_runner(config: ml_collections.ConfigDict, num_batches: int = 4,
                 threads: int = 0, device: str = "cpu") -> Runner:
  """The PyTorch equivalent of `config`'s model, loss and optimizer (eager).

  Args:
    config: a resolved config.
    num_batches: distinct batches cycled through.
    threads: intra-op threads; 0 keeps PyTorch's default.
    device: "cpu", or "cuda" (nn.LSTM / GRU / RNN then run cuDNN's kernels).
  """
  import torch  # Optional dependency: only --compare=torch needs it.
  from torch import nn
  import torch.nn.functional as F

  if threads:
    torch.set_num_threads(threads)
  opt = config.optimizer
  torch.manual_seed(config.seed)
  model = _torch_model(config).to(device)
  optimizer = _torch_optimizer(opt, model.parameters())
  loss_fn = nn.CrossEntropyLoss(label_smoothing=opt.label_smoothing)
  preprocess = _torch_preprocess(config.data, device)
  train_batches, eval_batches = _torch_batches(config, num_batches, device)

  def synchronize() -> None:  # CUDA runs asynchronously: time finished work only.
    if device != "cpu":
      torch.cuda.synchronize()

  def train_steps(n: int) -> None:
    model.train()
    for i in range(n):
      batch = train_batches[i % num_batches]
      optimizer.zero_grad(set_to_none=True)
      loss = loss_fn(model(preprocess(batch["image"])), batch["label"])
      loss.backward()
      if opt.grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
      optimizer.step()
    synchronize()

  def eval_steps(n: int) -> None:
    model.eval()
    with torch.no_grad():
      for i in range(n):
        batch = eval_batches[i % num_batches]
        F.cross_entropy(model(preprocess(batch["image"])), batch["label"],
                        reduction="none")
    synchronize()

  info = {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
          "device": device, "cudnn": bool(device != "cpu"
                                          and torch.backends.cudnn.is_available())}
  return Runner("torch", train_steps, eval_steps, info)


def _torch_model(config: ml_collections.ConfigDict):
  """Recurrent layers -> dropout -> readout -> Linear, like `SequenceClassifier`."""
  import torch
  from torch import nn

  m = config.model
  features = data.input_shape(config.data)[1]
  if m.name == "lstm":
    rnn_cls, extra = nn.LSTM, {}
  elif m.name == "gru":
    rnn_cls, extra = nn.GRU, {}
  elif m.name in ("simple_rnn", "irnn"):  # IRNN: relu Elman net, identity init.
    rnn_cls = nn.RNN
    extra = {"nonlinearity": "relu" if m.name == "irnn"
             else m.options.simple_rnn.activation}
  else:
    raise ValueError(f"no PyTorch equivalent of model {m.name!r}; "
                     f"choose one of {TORCH_MODELS}")

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      # nn.LSTM's `dropout` acts between layers; ours also follows the last layer.
      self.rnn = rnn_cls(features, m.hidden_size, num_layers=m.num_layers,
                         batch_first=True, bidirectional=m.bidirectional,
                         dropout=m.dropout if m.num_layers > 1 else 0.0, **extra)
      self.dropout = nn.Dropout(m.dropout)
      directions = 2 if m.bidirectional else 1
      self.head = nn.Linear(directions * m.hidden_size, m.num_classes)

    def forward(self, x):  # x: [batch, time, features]
      x = self.dropout(self.rnn(x)[0])
      if m.readout == "mean":
        return self.head(x.mean(dim=1))
      if m.readout == "max":
        return self.head(x.amax(dim=1))
      if m.bidirectional:  # "last": each direction's last step.
        h = m.hidden_size
        return self.head(torch.cat([x[:, -1, :h], x[:, 0, h:]], dim=-1))
      return self.head(x[:, -1])

  return Net()


def _torch_optimizer(opt: ml_collections.ConfigDict, parameters):
  import torch

  if opt.name == "adam":
    return torch.optim.Adam(parameters, lr=opt.learning_rate)
  if opt.name == "adamw":
    return torch.optim.AdamW(parameters, lr=opt.learning_rate,
                             weight_decay=opt.weight_decay)
  return torch.optim.SGD(parameters, lr=opt.learning_rate, momentum=opt.momentum,
                         nesterov=True)


def _torch_preprocess(data_config: ml_collections.ConfigDict,
                      device: str) -> Callable:
  """uint8 [batch, 28, 28] -> float [batch, time, features], as `data.make_preprocess`."""
  import torch
  import torch.nn.functional as F

  steps_, features = data.input_shape(data_config)
  perm = data.permutation(data_config)
  perm = None if perm is None else torch.from_numpy(perm).to(device)
  side = data_config.resize

  def preprocess(images):
    x = images.float().div_(255.0)
    if side is not None and side != data.IMAGE_SIZE:
      x = F.interpolate(x[:, None], size=(side, side), mode="bilinear",
                        antialias=True)[:, 0]
    x = x.reshape(x.shape[0], steps_, features)
    return x if perm is None else x[:, perm]

  return preprocess


def _torch_batches(config: ml_collections.ConfigDict, num_batches: int, device: str):
  """The same random batches as the JAX runner's, as torch tensors on `device`."""
  import torch

  rng = np.random.default_rng(0)
  classes = config.model.num_classes

  def to_torch(batch):
    return {"image": torch.from_numpy(batch["image"]).to(device),
            "label": torch.from_numpy(batch["label"]).long().to(device)}

  train = [to_torch(random_batch(rng, config.batch_size, classes))
           for _ in range(num_batches)]
  evaluation = [to_torch(random_batch(rng, config.eval_batch_size, classes))
                for _ in range(num_batches)]
  return train, evaluation
