"""Transparent huge pages for XLA's large per-step buffers (Linux, glibc).

XLA on CPU allocates its temporaries afresh for every call of a compiled step. The
stacked per-time-step residuals of a long scan are tens of MB (784-step LSTM(128),
batch 50: 80 MB for the gate pre-activations alone), above glibc's mmap threshold, so
every training step maps fresh memory and takes one page fault per 4 KiB page: ~30 ms
of a 300 ms step, measured here. glibc's `glibc.malloc.hugetlb=1` tunable makes malloc
ask for transparent huge pages (2 MiB) on such mappings, 512x fewer faults. Measured on
this 2-core CPU, one core (`experiments/benchmark.py --config=experiments/smnist_lstm.py`):
124 (with MNIST_JAX_HUGE_PAGES=0) -> 164 training examples/s for the layer-normalised
pixel LSTM; no change for the row-wise seed LSTM, whose buffers are small enough to be
reused from the heap.

glibc reads tunables only at process start, so `relaunch_with_huge_pages` re-executes
the current command with the tunable set. Set MNIST_JAX_HUGE_PAGES=0 to opt out.
"""

import os
import platform
import sys

_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def wanted(environ=os.environ) -> bool:
  """Whether relaunching would turn huge pages on here (and has not already)."""
  if environ.get("MNIST_JAX_HUGE_PAGES", "1") == "0":
    return False
  if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
    return False  # Already set (by us or the user): never relaunch twice.
  if sys.platform != "linux":
    return False
  libc, version = platform.libc_ver()
  if libc != "glibc" or tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
    return False  # The tunable appeared in glibc 2.35.
  try:
    with open(_THP_SETTING) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def relaunch_with_huge_pages() -> None:
  """Re-executes this process's command line with glibc's huge-page tunable set.

  Call it first thing in an entry point, before any heavy import. Returns only when
  nothing needs doing (already set, opted out, not Linux/glibc >= 2.35, or THP off);
  otherwise it does not return: the process image is replaced (same PID, arguments,
  environment plus GLIBC_TUNABLES).
  """
  if not wanted():
    return
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  os.environ["GLIBC_TUNABLES"] = f"{tunables}:{_TUNABLE}" if tunables else _TUNABLE
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
