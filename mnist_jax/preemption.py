"""Preemption: SIGTERM/SIGINT become a stop taken between training steps.

A scheduler's SIGTERM (or Ctrl-C) must not kill a run mid-save: the loop asks
`StopSignal.decision` after every step, saves a checkpoint and returns, and running the
same command again resumes.
"""

import signal

import jax
from jax.experimental import multihost_utils
import numpy as np


class StopSignal:
  """Turns SIGTERM/SIGINT into a stop decision taken between steps (preemption notice).

  With one process the decision is the local flag, checked after every step. With
  several, a signal may reach only some of them (a pod scheduler preempting one
  host), and a process that stops alone leaves the others blocked in the next
  collective. So every `check_every` steps (and at epoch ends) all processes share
  their flags in one small all-gather and stop together, at the same step. A second
  signal stops at once (KeyboardInterrupt).
  """

  def __init__(self, check_every: int = 10):
    self.received = None
    self.check_every = check_every
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name

  def decision(self, step: int, epoch_end: bool) -> str | None:
    """The signal all processes stop for after `step`, or None to go on.

    Every process must call this after every step: with several processes it is a
    collective at the steps where it checks.
    """
    if jax.process_count() == 1:
      return self.received
    if step % self.check_every and not epoch_end:
      return None
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if not np.any(flags):
      return None
    return self.received or f"a signal to process {int(np.argmax(flags))}"

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
