"""Transparent huge pages for XLA's large per-step buffers on CPU (Linux, glibc).

XLA on CPU allocates its temporaries afresh for every call of a compiled step. The
stacked per-time-step residuals of a long scan are tens of MB (784-step LSTM(128),
batch 50: 80 MB for the gate pre-activations alone), above glibc's mmap threshold, so
every training step maps fresh memory and takes one page fault per 4 KiB page. glibc's
`glibc.malloc.hugetlb=1` tunable makes malloc ask for transparent huge pages (2 MiB)
on such mappings, 512x fewer faults: pixel-sequence models train markedly faster, the
row-wise ones are unchanged (docs/performance.md has the figures and the command).

glibc reads tunables only at process start, so `relaunch_with_huge_pages` re-executes
the current command with the tunable set, once, and only where JAX will run on the CPU
(accelerators allocate on the device). Set MNIST_JAX_HUGE_PAGES=0 to opt out.
"""

import glob
import importlib.util
import os
import platform
import sys

_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
ANNOUNCE = "MNIST_JAX_HUGE_PAGES_RELAUNCHED"  # Set for the relaunched process.
_ACCELERATORS = (  # (a JAX plugin module, device files that show its hardware is here)
    ("jax_cuda12_plugin", "/dev/nvidia[0-9]*"),
    ("jax_cuda13_plugin", "/dev/nvidia[0-9]*"),
    ("jax_rocm60_plugin", "/dev/kfd"), ("jax_rocm7_plugin", "/dev/kfd"),
    ("libtpu", "/dev/accel*"), ("libtpu", "/dev/vfio/[0-9]*"))


def jax_runs_on_cpu(environ=os.environ) -> bool:
  """Whether JAX will pick its CPU backend, judged without starting any backend."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(module) is not None and glob.glob(devices)
                 for module, devices in _ACCELERATORS)


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
      if "[never]" in f.read():
        return False
  except OSError:
    return False
  return jax_runs_on_cpu(environ)


def relaunch_with_huge_pages() -> None:
  """Re-executes this process's command line with glibc's huge-page tunable set.

  Call it first thing in an entry point, before any heavy import. Returns only when
  nothing needs doing (already set, opted out, not Linux/glibc >= 2.35, THP off, or
  JAX will use an accelerator); otherwise it does not return: the process image is
  replaced (same PID, arguments, environment plus GLIBC_TUNABLES and `ANNOUNCE`).
  """
  if not wanted():
    return
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  os.environ["GLIBC_TUNABLES"] = f"{tunables}:{_TUNABLE}" if tunables else _TUNABLE
  os.environ[ANNOUNCE] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)


def announcement() -> str | None:
  """The one log line for a relaunched process (None if this one was not)."""
  if os.environ.pop(ANNOUNCE, None) != "1":
    return None
  return (f"Huge pages on for XLA's CPU buffers (relaunched with GLIBC_TUNABLES="
          f"{_TUNABLE}; MNIST_JAX_HUGE_PAGES=0 turns this off).")
