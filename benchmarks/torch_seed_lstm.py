r"""The seed LSTM recipe in plain PyTorch, timed from process start to the test report.

    MNIST_JAX_MANUAL_DIR=/path/to/data python benchmarks/torch_seed_lstm.py
    python -m mnist_jax.main --config=experiments/seed_lstm.py --workdir=runs/seed_lstm

The end-to-end reference for `experiments/seed_lstm.py`: LSTM(100) over the 28 rows,
last step -> Linear(10), Adam 1e-3, batch 100, 10 epochs, train on 55k and validate on
the first 5k training images after every epoch, then report test accuracy with the
parameters of the best validation epoch (as `eval_checkpoint="best"` does). Batch order
is the library's (`np.random.default_rng([seed, epoch]).permutation`). The data is read
with gzip + NumPy from the canonical .gz files in $MNIST_JAX_MANUAL_DIR/mnist (or
--data_dir). Initialisation is
PyTorch's default (not the library's orthogonal / forget-bias-1 scheme).

Needs `pip install -e .[bench]` (torch, CPU wheel). Seed notebook: 98.47% test
accuracy; PyTorch's figure and time: see the printed report.
"""

import copy
import gzip
import os
import time

_START = time.time()  # Fallback for the process start time: before heavy imports.


def _process_start() -> float:
  """Wall-clock time this process started (Linux /proc), else this module's import."""
  try:
    with open("/proc/self/stat") as f:
      ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # Field 22: starttime.
    with open("/proc/stat") as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError, StopIteration):
    return _START


from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Flags exist only when run as a script, so importing this file defines none."""
  flags.DEFINE_string("data_dir", None, "Folder with the four MNIST .gz files.")
  flags.DEFINE_integer("epochs", 10, "Passes over the 55k training images.")
  flags.DEFINE_integer("batch_size", 100, "Training batch.")
  flags.DEFINE_integer("eval_batch_size", 1000, "Validation / test batch.")
  flags.DEFINE_integer("hidden_size", 100, "LSTM units.")
  flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
  flags.DEFINE_integer("validation_size", 5000, "Held out from the head of train.")
  flags.DEFINE_integer("seed", 0, "Seeds parameters and batch order.")
  flags.DEFINE_integer("threads", 0, "Intra-op threads; 0: PyTorch's default.")


def default_data_dir() -> str | None:
  env = os.environ.get("MNIST_JAX_MANUAL_DIR")
  return os.path.join(env, "mnist") if env else None


def read_idx(path: str, offset: int) -> np.ndarray:
  """Payload of an IDX file (images: 16-byte header, labels: 8)."""
  with gzip.open(path, "rb") as f:
    return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_mnist(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{"train", "test"}: (uint8 images [n, 28, 28], int64 labels [n])."""
  out = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), 16)
    labels = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), 8)
    out[split] = (images.reshape(-1, 28, 28), labels.astype(np.int64))
  return out


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn

  if FLAGS.threads:
    torch.set_num_threads(FLAGS.threads)
  torch.manual_seed(FLAGS.seed)
  folder = FLAGS.data_dir or default_data_dir()
  if folder is None:
    raise app.UsageError("Set MNIST_JAX_MANUAL_DIR (a folder holding mnist/) or "
                         "--data_dir (the folder with the four MNIST .gz files).")
  mnist = load_mnist(folder)
  images, labels = mnist["train"]
  n_val = FLAGS.validation_size
  to_torch = lambda x, y: (torch.from_numpy(x.copy()), torch.from_numpy(y.copy()))
  val = to_torch(images[:n_val], labels[:n_val])
  train_x, train_y = to_torch(images[n_val:], labels[n_val:])
  test = to_torch(*mnist["test"])

  class Net(nn.Module):
    """LSTM over the rows, last step -> Linear(10)."""

    def __init__(self, hidden: int):
      super().__init__()
      self.lstm = nn.LSTM(28, hidden, batch_first=True)
      self.head = nn.Linear(hidden, 10)

    def forward(self, images):
      out, _ = self.lstm(images.float().div_(255.0))
      return self.head(out[:, -1])

  model = Net(FLAGS.hidden_size)
  optimizer = torch.optim.Adam(model.parameters(), lr=FLAGS.learning_rate)
  loss_fn = nn.CrossEntropyLoss()

  def accuracy(split) -> float:
    x, y = split
    model.eval()
    correct = 0
    with torch.no_grad():
      for i in range(0, len(y), FLAGS.eval_batch_size):
        logits = model(x[i:i + FLAGS.eval_batch_size])
        correct += int((logits.argmax(-1) == y[i:i + FLAGS.eval_batch_size]).sum())
    return correct / len(y)

  n = len(train_y)
  steps = n // FLAGS.batch_size  # Full batches; the library drops the remainder too.
  best_acc, best_state = -1.0, None
  train_start = time.time()
  for epoch in range(FLAGS.epochs):
    epoch_start = time.time()
    order = torch.from_numpy(np.random.default_rng([FLAGS.seed, epoch]).permutation(n))
    model.train()
    for step in range(steps):
      idx = order[step * FLAGS.batch_size:(step + 1) * FLAGS.batch_size]
      optimizer.zero_grad(set_to_none=True)
      loss = loss_fn(model(train_x[idx]), train_y[idx])
      loss.backward()
      optimizer.step()
    train_s = time.time() - epoch_start
    val_acc = accuracy(val) if n_val else float("nan")
    if n_val == 0 or val_acc > best_acc:
      best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
    rate = steps * FLAGS.batch_size / train_s
    print(f"epoch {epoch + 1}: loss {loss.item():.4f}, validation accuracy "
          f"{100 * val_acc:.2f}%, {rate:,.0f} train ex/s, "
          f"{time.time() - epoch_start:.1f} s", flush=True)
  train_total = time.time() - train_start
  model.load_state_dict(best_state)
  test_acc = accuracy(test)
  total = time.time() - _process_start()
  print(f"test accuracy {100 * test_acc:.2f}% (best validation epoch, "
        f"{100 * best_acc:.2f}% validation) | training {train_total:.1f} s | total "
        f"{total:.1f} s from process start to this report | torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads", flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
