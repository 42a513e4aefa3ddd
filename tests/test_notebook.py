"""docs/tutorial.ipynb runs end to end (tiny settings) and its stored outputs are whole."""

import json
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

pytestmark = pytest.mark.slow

_NOTEBOOK = REPO / "docs" / "tutorial.ipynb"
_TINY = """EPOCHS = 1
MAX_TRAIN_EXAMPLES = 500
RUNS = "../runs/notebook"
"""


def test_notebook_runs_end_to_end(tmp_path):
  (tmp_path / "docs").mkdir()
  shutil.copytree(REPO / "experiments", tmp_path / "experiments")
  notebook = nbformat.read(_NOTEBOOK, as_version=4)
  settings = next(c for c in notebook.cells if c.cell_type == "code")
  assert settings.source.startswith("# Settings")
  settings.source = _TINY
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path / "docs")}}).execute()
  outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs)
  assert "SimpleRNN: test accuracy" in text and "LSTM: test accuracy" in text
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # Curves, matrix.
  assert (tmp_path / "runs" / "notebook" / "LSTM" / "eval").is_dir()


def test_stored_notebook_shows_its_results():
  """Stored with outputs (so it reads on a code host), from a complete run."""
  notebook = json.loads(_NOTEBOOK.read_text())
  code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
  assert all(c.get("execution_count") for c in code)
  images = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
  assert len(images) == 2
  assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
  settings = "".join(code[0]["source"])  # Stored as a list of lines.
  assert settings.startswith("# Settings")
  assert "EPOCHS = 10" in settings  # The full recipe, not the tiny one.
