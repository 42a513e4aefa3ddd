"""The suite's own scheduling: files in conftest._ONE_WORKER run whole on one worker."""

import pytest


def test_grouped_files_keep_their_group_under_xdist(request):
  """With `--dist loadgroup` (pyproject.toml) a grouped file's tests carry the group in
  their id; pytest 9.2 drops it without a word (pytest-xdist #1386), and every worker
  then builds each module fixture (a trained workdir) again."""
  if not hasattr(request.config, "workerinput"):
    pytest.skip("runs in one process (-n 0): no groups to keep")
  assert request.config.getvalue("loadgroup")  # Set on workers by --dist loadgroup.
  assert request.node.nodeid.endswith("@test_xdist_groups"), request.node.nodeid
