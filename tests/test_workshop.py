"""Lectures 07-10 (SD v1.5, LoRA, beyond SD, the LoRA workshop): structure and reproducibility of the notebooks.

Running them is tests/test_lectures.py's job (papermill, FAST=True). Here: every notebook follows the course's
notebook conventions, the committed sources are exactly what tools/lectures_07_10.py builds (so the build
script stays the source of truth), and ``tidy`` strips only what it should from an executed notebook.
"""
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
STEMS = ["07_stable_diffusion_v15", "08_fine_tuning_and_lora", "09_beyond", "10_lora_workshop"]


def _builder():
    spec = importlib.util.spec_from_file_location("lectures_07_10", ROOT / "tools" / "lectures_07_10.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_follows_the_conventions(stem):
    nb = nbformat.read(ROOT / "lectures" / f"{stem}.ipynb", as_version=4)
    nbformat.validate(nb)
    first, setup, parameters = nb.cells[:3]
    assert first.cell_type == "markdown" and first.source.startswith("# Lecture")
    assert f"lectures/{stem}.ipynb" in first.source and "colab-badge.svg" in first.source
    assert "What you will learn" in first.source and "Prerequisites" in first.source and "Time" in first.source
    assert setup.cell_type == "code" and '"google.colab" in sys.modules' in setup.source
    assert parameters.metadata.get("tags") == ["parameters"] and "FAST = False" in parameters.source
    assert nb.cells[-1].cell_type == "markdown" and nb.cells[-1].source.startswith("## Check your understanding")
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert 'OUT = Path("outputs/' in code     # everything the notebook writes goes under ./outputs (or Drive)


@pytest.mark.parametrize("stem", STEMS)
def test_committed_sources_match_the_build_script(stem, tmp_path):
    built_path, = _builder().build([stem[:2]], folder=tmp_path)
    built = nbformat.read(built_path, as_version=4)
    committed = nbformat.read(ROOT / "lectures" / f"{stem}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], \
        f"lectures/{stem}.ipynb differs from tools/lectures_07_10.py: rebuild and re-run it"
    assert committed.cells[2].metadata.get("tags") == ["parameters"]


def test_tidy_drops_widget_views_and_run_metadata_only(tmp_path):
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    text = nbformat.v4.new_output("stream", name="stdout", text="max |diff| = 0\n")
    bar = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "LoRA:   0%|          | 0/30"})
    cell = nbformat.v4.new_code_cell("train()", outputs=[bar, figure, text])
    cell.metadata["papermill"] = {"duration": 1.0}
    cell.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["papermill"] = {"parameters": {}}
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)

    size = _builder().tidy(path)

    tidied = nbformat.read(path, as_version=4)
    assert size == path.stat().st_size
    assert "widgets" not in tidied.metadata and "papermill" not in tidied.metadata
    assert tidied.cells[0].metadata == {"tags": ["parameters"]}
    assert [o.output_type for o in tidied.cells[0].outputs] == ["display_data", "stream"]
    assert "image/png" in tidied.cells[0].outputs[0].data
