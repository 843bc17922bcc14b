"""Every notebook in colab/ runs top to bottom on CPU at smoke size.

The kernel is this interpreter (a kernelspec written to a temporary
JUPYTER_PATH, so a fresh virtualenv needs no `ipykernel install`). The
notebooks' pip cell is skipped (KERAS_SAM_NOTEBOOK_TEST) and KERAS_SAM_SMOKE=1
shrinks them to toy data (TFDS mock data, a few steps).
"""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
KERNEL = "keras-sam-test-python"


@pytest.fixture
def this_interpreter_kernel(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "keras-sam tests",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("KERAS_SAM_NOTEBOOK_TEST", "1")
    monkeypatch.setenv("KERAS_SAM_SMOKE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the inline backend draws the plots
    # The kernel imports the working tree's keras_sam even when not installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return KERNEL


def test_there_are_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "sam_cifar10_tpu.ipynb", "sam_jax_tpu.ipynb", "sam_quickstart.ipynb"
    ]  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_clean_v4_with_markdown(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds[0] == "markdown" and kinds.count("markdown") >= 5
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit without outputs"
    sources = "\n".join(cell.source for cell in notebook.cells)
    assert "%pip install" in sources and "KERAS_SAM_NOTEBOOK_TEST" in sources


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, this_interpreter_kernel):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name=this_interpreter_kernel,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot was drawn"
    text = "".join(o.get("text", "") for o in outputs)
    if path.stem == "sam_cifar10_tpu":
        assert "_DefaultDistributionStrategy with 1 replica(s)" in text  # CPU fallback
        assert "accuracy" in text
    elif path.stem == "sam_jax_tpu":
        assert "jax backend, 4 x cpu" in text and "DataParallel over 4 devices" in text
        assert "accuracy" in text and "SAMModel Functional" in text
    else:
        assert "SGD: train loss" in text and "SAM: train loss" in text
