"""docs/api.md: every Python block runs, in order, as written; and the API's promises."""

import contextlib
import io
import os
import re
import shutil

import numpy as np
import pytest

from conftest import REPO
from mnist_jax import api
from mnist_jax.errors import WorkdirError

pytestmark = pytest.mark.slow


def _blocks() -> list[str]:
  text = (REPO / "docs" / "api.md").read_text()
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
  """docs/api.md's blocks executed in one namespace, in a folder holding experiments/."""
  folder = tmp_path_factory.mktemp("api_docs")
  shutil.copytree(REPO / "experiments", folder / "experiments")
  namespace, out = {}, io.StringIO()
  cwd = os.getcwd()
  os.chdir(folder)
  try:
    with contextlib.redirect_stdout(out):
      for block in _blocks():
        exec(compile(block, "docs/api.md", "exec"), namespace)  # pylint: disable=exec-used
  finally:
    os.chdir(cwd)
  return {"workdir": str(folder / "runs" / "api_demo"), "ns": namespace,
          "out": out.getvalue()}


def test_every_block_ran(api_run):
  assert len(_blocks()) >= 4
  assert "test accuracy" in api_run["out"]


def test_evaluate_prints_and_writes_nothing_and_matches_the_saved_files(api_run,
                                                                      capsys):
  workdir = api_run["workdir"]
  before = sorted(os.listdir(os.path.join(workdir, "eval")))
  result = api.evaluate(workdir)
  assert capsys.readouterr().out == ""
  assert sorted(os.listdir(os.path.join(workdir, "eval"))) == before
  saved = api.read_eval(workdir)  # Written by train(): the best checkpoint's.
  assert saved["accuracy"] == result.metrics["accuracy"]
  assert saved["confusion_matrix"] == result.metrics["confusion_matrix"]
  predictions = api.read_predictions(workdir)
  np.testing.assert_array_equal(predictions.labels, result.labels)
  np.testing.assert_array_equal(predictions.source_index, result.source_index)
  np.testing.assert_allclose(predictions.probabilities, result.probabilities,
                             rtol=1e-5, atol=1e-6)  # The CSV keeps 6 digits.
  assert result.probabilities.shape == (len(result.labels), 10)


def test_readers_name_the_call_that_writes_a_missing_evaluation(api_run):
  with pytest.raises(WorkdirError, match=r"evaluate\(workdir, 'latest', 'validation', "
                                         r"write=True\)"):
    api.read_eval(api_run["workdir"], split="validation", checkpoint="latest")
  written = api.evaluate(api_run["workdir"], "latest", "validation", write=True)
  again = api.read_predictions(api_run["workdir"], "validation", "latest")
  np.testing.assert_array_equal(again.labels, written.labels)


def test_learning_curves_have_one_value_per_epoch(api_run):
  curves = api.learning_curves(api_run["workdir"])
  assert curves["validation"]["epoch"] == [1] and curves["train"]["epoch"] == [1]
  assert 0.0 < curves["validation"]["accuracy"][0] <= 1.0
