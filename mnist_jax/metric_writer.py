"""Where training metrics go: WORKDIR/metrics.jsonl, TensorBoard, the log and a bar.

`MetricWriter` appends one JSON object per event to `metrics.jsonl` and the same values
to TensorBoard event files; `Progress` turns step counts into the examples/s and ETA
of the periodic log line and drives a tqdm bar on interactive terminals.
"""

import json
import os
import socket
import sys
import time

import jax

from mnist_jax.workdir import write_atomic


def truncate_jsonl(path: str, last_step: int | None) -> None:
  """Keeps the rows of `path` up to `last_step` (None: none), and only whole rows.

  A resumed run goes on from its checkpoint's step; rows a killed session logged
  after that step are logged again by the resumed one, so they go. The file is
  rewritten atomically (a kill during this leaves the old file).
  """
  if not os.path.exists(path):
    return
  kept = []
  with open(path, errors="replace") as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # A row cut short by a kill.
      if (isinstance(row, dict) and last_step is not None
          and isinstance(row.get("step"), int) and row["step"] <= last_step):
        kept.append(json.dumps(row) + "\n")
  write_atomic(path, "".join(kept))


class MetricWriter:
  """Appends metrics to WORKDIR/metrics.jsonl and TensorBoard (process 0 only).

  TensorBoard events are written with the `tensorboard` package's record writer and
  protos, not tf.summary: a run that reads cached data then never imports TensorFlow
  (seconds of start-up). Each write is flushed; a killed run leaves at most a
  truncated last record, which TensorBoard skips. Without the `tensorboard` package
  (a minimal accelerator image) only metrics.jsonl is written, with one warning.

  A run resumed from its checkpoint at step N (`resumed_from`) first drops the rows
  after N from metrics.jsonl, and starts its event file with TensorBoard's "session
  start" marker at N + 1, which makes TensorBoard discard the older events from step
  N + 1 on: both then hold one value per (step, split), as an uninterrupted run would.

  `also`, if given, gets every record too (`write(step, prefix, values, **extra)`):
  wandb_writer.WandbRun, kept out of this module so that wandb is never imported here.
  """

  def __init__(self, workdir: str, resumed_from: int | None = None, also=None):
    self.enabled = jax.process_index() == 0
    self._events = None
    self._also = also
    if not self.enabled:
      return
    jsonl_path = os.path.join(workdir, "metrics.jsonl")
    truncate_jsonl(jsonl_path, resumed_from)
    self._jsonl = open(jsonl_path, "a")
    try:
      from tensorboard.compat.proto import event_pb2, summary_pb2
      from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
      from absl import logging
      logging.warning("The tensorboard package is not installed: metrics go to "
                      "metrics.jsonl only.")
      return
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    session_start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    tb_dir = os.path.join(workdir, "tensorboard")
    os.makedirs(tb_dir, exist_ok=True)
    # One file per writer, named as TensorBoard expects; a resumed run adds a file.
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.{time.monotonic_ns()}")
    try:
      self._events_file = open(os.path.join(tb_dir, name), "xb")  # Never truncate.
    except OSError:
      self._jsonl.close()
      raise
    self._events = RecordWriter(self._events_file)
    self._write_event(self._event(wall_time=time.time(), file_version="brain.Event:2"))
    self._write_event(self._event(wall_time=time.time(), step=(resumed_from or 0) + 1,
                                  session_log=session_start))

  def _write_event(self, event) -> None:
    if self._events is not None:
      self._events.write(event.SerializeToString())
      self._events.flush()

  def write(self, step: int, prefix: str, values: dict, **extra) -> None:
    """One record: {"step", "split": prefix, **extra, **values} and its summaries."""
    if not self.enabled:
      return
    record = {"step": step, "split": prefix, **extra,
              **{k: float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._also is not None:
      self._also.write(step, prefix, values, **extra)
    if self._events is None:
      return
    summary = self._summary(value=[
        self._summary.Value(tag=f"{prefix}/{k}", simple_value=float(v))
        for k, v in values.items()])
    self._write_event(self._event(wall_time=time.time(), step=step, summary=summary))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._events is not None:
        self._events_file.close()


def format_duration(seconds: float) -> str:
  """'1h05m' from an hour on, else '3m07s'."""
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
  """Throughput and ETA between log lines, and a tqdm bar on interactive terminals."""

  def __init__(self, start_step: int, total_steps: int, batch_size: int):
    self.total_steps, self.batch_size = total_steps, batch_size
    self._since_step, self._since = start_step, time.perf_counter()
    self._bar = None
    if sys.stderr.isatty():
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step",
                       dynamic_ncols=True, leave=False)

  def update(self) -> None:
    """One step done."""
    if self._bar is not None:
      self._bar.update(1)

  def rate_and_eta(self, step: int) -> tuple[float, str]:
    """(examples/s since the last call, time left at that rate); restarts the window."""
    now = time.perf_counter()
    rate = (step - self._since_step) * self.batch_size / max(now - self._since, 1e-9)
    eta = (self.total_steps - step) * self.batch_size / max(rate, 1e-9)
    self._since_step, self._since = step, now
    return rate, format_duration(eta)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
