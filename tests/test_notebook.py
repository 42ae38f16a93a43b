"""The tour notebook runs top to bottom in a fresh kernel, as a reader would run it."""
import time

import pytest

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "tour_of_the_study.ipynb"


@pytest.mark.slow
def test_the_tour_notebook_runs_top_to_bottom_in_under_two_minutes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:  # a fresh copy: none of the committed outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    started = time.perf_counter()
    # Raises CellExecutionError, naming the cell, on any error.
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    seconds = time.perf_counter() - started
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]
    images = sum("image/png" in output.get("data", {}) for cell in code for output in cell.outputs)
    assert images >= 6  # letters, noisy letters, curves, reconstructions, latent map, decoded grid
    assert seconds < 120, f"the notebook took {seconds:.0f} s"


def test_the_committed_notebook_holds_the_outputs_of_a_whole_run():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1))  # run once, in order, top to bottom
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]
