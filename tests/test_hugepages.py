"""The relaunch that turns on glibc's transparent-huge-page tunable."""

import os
import subprocess
import sys

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
  """A real exec: the child restarts itself once, then runs on with the tunable."""
  script = ("from mnist_jax import hugepages; print('start', flush=True); "
            "hugepages.relaunch_with_huge_pages(); import os; "
            "print(os.environ.get('GLIBC_TUNABLES'))")
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "MNIST_JAX_HUGE_PAGES")}
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True, timeout=60).stdout.split("\n")
  if hugepages.wanted(env):
    assert out[:3] == ["start", "start", "glibc.malloc.hugetlb=1"]
  else:  # Not Linux/glibc >= 2.35 or THP off: nothing happens.
    assert out[:2] == ["start", "None"]
