"""The relaunch that turns on glibc's transparent-huge-page tunable."""

import os
import subprocess
import sys

import pytest

from mnist_jax import hugepages

from conftest import REPO


def test_not_wanted_when_opted_out_or_already_set(monkeypatch):
  assert not hugepages.wanted({"MNIST_JAX_HUGE_PAGES": "0"})
  assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
  assert not hugepages.wanted({"GLIBC_TUNABLES": "a=1:glibc.malloc.hugetlb=1"})
  monkeypatch.setattr(sys, "platform", "darwin")
  assert not hugepages.wanted({})


def test_relaunch_execs_the_same_command_with_the_tunable_added(monkeypatch):
  calls = []
  monkeypatch.setattr(hugepages, "wanted", lambda: True)
  monkeypatch.setattr(os, "execv", lambda path, argv: calls.append((path, argv)))
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  hugepages.relaunch_with_huge_pages()
  assert calls == [(sys.executable, sys.orig_argv)]
  assert os.environ["GLIBC_TUNABLES"] == (
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


def test_relaunch_replaces_the_process_once():
  """A real exec: the child restarts itself once, then runs on with the tunable.

  `wanted` is replaced in the child so the outcome does not depend on this machine's
  kernel and glibc (the expectation must not come from the code under test).
  """
  script = ("import os; from mnist_jax import hugepages; print('start', flush=True); "
            "hugepages.wanted = lambda: 'hugetlb' not in "
            "os.environ.get('GLIBC_TUNABLES', ''); "
            "hugepages.relaunch_with_huge_pages(); "
            "print(os.environ.get('GLIBC_TUNABLES')); print(hugepages.announcement())")
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "MNIST_JAX_HUGE_PAGES", hugepages.ANNOUNCE)}
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True, timeout=60).stdout.split("\n")
  assert out[:3] == ["start", "start", "glibc.malloc.hugetlb=1"]
  assert out[3].startswith("Huge pages on for XLA's CPU buffers")


@pytest.mark.parametrize("platforms,cpu", [("cpu", True), ("cuda", False),
                                           ("tpu", False), ("cuda,cpu", False),
                                           ("cpu,cuda", True)])
def test_only_the_cpu_backend_gets_huge_pages(platforms, cpu):
  assert hugepages.jax_runs_on_cpu({"JAX_PLATFORMS": platforms}) == cpu
  if not cpu:  # Whatever the kernel and glibc say.
    assert not hugepages.wanted({"JAX_PLATFORMS": platforms})


def test_an_accelerator_plugin_with_its_device_means_no_relaunch(monkeypatch):
  monkeypatch.setattr(hugepages.importlib.util, "find_spec",
                      lambda name: object() if name == "jax_cuda12_plugin" else None)
  monkeypatch.setattr(hugepages.glob, "glob",
                      lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])
  assert not hugepages.jax_runs_on_cpu({})
  monkeypatch.setattr(hugepages.glob, "glob", lambda pattern: [])  # Plugin, no GPU.
  assert hugepages.jax_runs_on_cpu({})


def test_announcement_only_in_a_relaunched_process(monkeypatch):
  monkeypatch.delenv(hugepages.ANNOUNCE, raising=False)
  assert hugepages.announcement() is None
  monkeypatch.setenv(hugepages.ANNOUNCE, "1")
  assert "MNIST_JAX_HUGE_PAGES=0" in hugepages.announcement()
  assert hugepages.announcement() is None  # Said once.
