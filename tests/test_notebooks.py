"""The notebooks are the source: every lecture and assignment source is a jupytext pair, in sync, following the
course's conventions. Quick (nothing is executed; running the lectures is tests/test_lectures.py's job).

Pairs: lectures/NN_name.ipynb <-> lectures/NN_name.py and solutions/<a>/<a>.ipynb <-> solutions/<a>/<a>.py,
declared in jupytext.toml. New notebooks in those places are picked up automatically.
"""
import importlib.util
import json
import re
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest
from jupytext.compare import compare_notebooks
from jupytext.config import find_jupytext_configuration_file, load_jupytext_configuration_file
from jupytext.paired_paths import paired_paths

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MAX_CELL_OUTPUT = 1_000_000     # bytes of JSON per cell: figures at 80 dpi are ~0.1 MB
MAX_FILE = 4_000_000            # bytes per committed notebook


def _stems(pattern: str, same_name_as_folder: bool = False) -> set[Path]:
    found = set()
    for path in ROOT.glob(pattern):
        if not same_name_as_folder or path.stem == path.parent.name:
            found.add(path.with_suffix(""))
    return found


LECTURES = sorted(_stems("lectures/[0-9][0-9]_*.ipynb") | _stems("lectures/[0-9][0-9]_*.py"))
SOURCES = sorted(_stems("solutions/*/*.ipynb", True) | _stems("solutions/*/*.py", True))
RELEASES = sorted(ROOT.glob("assignments/*/*.ipynb"))
PAIRED = LECTURES + SOURCES
IDS = [str(p.relative_to(ROOT)) for p in PAIRED]


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def _tagged(nb, tag: str) -> list:
    return [cell for cell in nb.cells if tag in cell.metadata.get("tags", [])]


def test_there_are_notebooks():
    assert len(LECTURES) >= 10 and len(SOURCES) >= 5, (LECTURES, SOURCES)


@pytest.mark.parametrize("stem", PAIRED, ids=IDS)
def test_pair_exists_and_is_in_sync(stem):
    ipynb, script = stem.with_suffix(".ipynb"), stem.with_suffix(".py")
    fix = f"run `.venv/bin/jupytext --sync {script.relative_to(ROOT)}` (or `--to ipynb`) and commit both files"
    assert ipynb.is_file() and script.is_file(), f"{stem.name}: the .ipynb and its .py go together: {fix}"
    config = load_jupytext_configuration_file(find_jupytext_configuration_file(str(stem.parent)))
    formats = config.default_formats(str(ipynb))
    assert formats and str(script) in [p for p, _ in paired_paths(str(ipynb), "ipynb", formats)], (
        f"jupytext.toml does not pair {ipynb.relative_to(ROOT)} with its .py")
    text, notebook = jupytext.read(script), _read(ipynb)
    try:  # jupytext's own comparison: cell types, sources, cell metadata (tags, nbgrader), notebook metadata
        compare_notebooks(text, notebook, "py:percent", allow_expected_differences=False)
    except Exception as err:  # noqa: BLE001 - jupytext raises several kinds; any of them means out of sync
        pytest.fail(f"{stem.name}: .py and .ipynb differ ({type(err).__name__}: {str(err)[:600]}): {fix}")


@pytest.mark.parametrize("stem", PAIRED, ids=IDS)
def test_notebook_follows_the_conventions(stem):
    path = stem.with_suffix(".ipynb")
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec") == KERNELSPEC, (
        f"kernelspec must be {KERNELSPEC} (what JupyterLab writes; anything else marks the file unsaved on open)")
    first = nb.cells[0]
    badges = re.findall(r"\[!\[Open In Colab\]\([^)]*colab-badge\.svg\)\]\(([^)]+)\)", first.source)
    own = f"/lectures/{stem.name}.ipynb" if stem in LECTURES else f"/assignments/{stem.name}/{stem.name}.ipynb"
    assert first.cell_type == "markdown" and len(badges) == 1 and badges[0].endswith(own), (
        f"cell 0 must be markdown with exactly one Open-in-Colab badge, linking to ...{own}; found {badges}")
    assert first.source.lstrip().startswith("# "), "cell 0 starts with the notebook's title"
    for what, pattern in [("what you will learn", r"(?i)\blearn"), ("how long it takes", r"(?i)\btime\b"),
                          ("the time on a laptop CPU", r"\bCPU\b"), ("the time on a (Colab) GPU", r"\bGPU\b")]:
        assert re.search(pattern, first.source), f"cell 0 must say {what}"
    setup = _tagged(nb, "setup")
    assert len(setup) == 1 and setup[0].cell_type == "code", "exactly one code cell tagged 'setup' (Colab install)"
    parameters = _tagged(nb, "parameters")
    assert len(parameters) == 1 and parameters[0].cell_type == "code", "exactly one code cell tagged 'parameters'"
    assert re.search(r"^FAST\s*=\s*False\b", parameters[0].source, re.M), "the parameters cell sets FAST = False"
    assert "FAST" in papermill.inspect_notebook(str(path)), (
        "papermill cannot read FAST from the parameters cell (write `FAST = False  # comment without '='`)")
    assert nb.cells.index(setup[0]) < nb.cells.index(parameters[0]), "the setup cell comes before the parameters"


def _check_outputs(path: Path, allowed: bool) -> None:
    nb = _read(path)
    # pairing lives in jupytext.toml; jupytext metadata in a notebook would also reach the students' release
    assert "jupytext" not in nb.metadata, f"{path.name}: remove metadata.jupytext ({nb.metadata['jupytext']})"
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for i, cell in enumerate(nb.cells):
        outputs = cell.get("outputs", [])
        if not allowed:
            assert not outputs and not cell.get("execution_count"), f"{path.name} cell {i}: commit without outputs"
        size = len(json.dumps(outputs))
        assert size <= MAX_CELL_OUTPUT, f"{path.name} cell {i}: {size / 1e6:.1f} MB of outputs (keep figures small)"
        for output in outputs:
            view = output.get("data", {}).get(WIDGET_VIEW)
            assert view is None or view.get("model_id") in state, (
                f"{path.name} cell {i}: a widget view without saved widget state renders as frozen text or "
                f"'model not found'; tools/run_lecture.py drops them")
    assert path.stat().st_size <= MAX_FILE, f"{path.name}: {path.stat().st_size / 1e6:.1f} MB"


@pytest.mark.parametrize("stem", LECTURES, ids=[p.name for p in LECTURES])
def test_lecture_outputs_are_small_and_static(stem):
    _check_outputs(stem.with_suffix(".ipynb"), allowed=True)


@pytest.mark.parametrize("path", [s.with_suffix(".ipynb") for s in SOURCES] + RELEASES,
                         ids=[f"solutions/{s.name}" for s in SOURCES] + [f"assignments/{p.stem}" for p in RELEASES])
def test_assignments_have_no_outputs(path):
    _check_outputs(path, allowed=False)
    assert _read(path).metadata.get("kernelspec") == KERNELSPEC


def _run_lecture_tool():
    spec = importlib.util.spec_from_file_location("run_lecture", ROOT / "tools" / "run_lecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tidy_drops_widget_views_and_run_metadata_only():
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    text = nbformat.v4.new_output("stream", name="stdout", text="max |diff| = 0\n")
    bar = nbformat.v4.new_output("display_data", data={
        WIDGET_VIEW: {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "LoRA:   0%|          | 0/30"})
    cell = nbformat.v4.new_code_cell("train()", outputs=[bar, figure, text])
    cell.metadata.update(papermill={"duration": 1.0}, execution={"iopub.status.busy": "x"}, tags=["parameters"])
    untagged = nbformat.v4.new_markdown_cell("# Title", metadata={"tags": []})
    nb = nbformat.v4.new_notebook(cells=[cell, untagged])
    nb.metadata.update(widgets={WIDGET_STATE: {"state": {}}}, papermill={"parameters": {}},
                       kernelspec={"display_name": "Python 3", "language": "python", "name": "python3"})

    tidied = _run_lecture_tool().tidy(nb)

    nbformat.validate(tidied)
    assert "widgets" not in tidied.metadata and "papermill" not in tidied.metadata
    assert tidied.metadata.kernelspec == KERNELSPEC
    assert tidied.cells[0].metadata == {"tags": ["parameters"]}
    assert [o.output_type for o in tidied.cells[0].outputs] == ["display_data", "stream"]
    assert "image/png" in tidied.cells[0].outputs[0].data
    assert tidied.cells[1].source == "# Title" and tidied.cells[1].metadata == {}


def test_run_lecture_names_the_lectures_on_a_bad_name():
    with pytest.raises(SystemExit, match=r"NB must name a lecture, one of \[.*'03_ddpm'.*\]; got 'no_such'"):
        _run_lecture_tool().lecture_path("no_such")
    assert _run_lecture_tool().lecture_path("lectures/03_ddpm.py").name == "03_ddpm.ipynb"


# ------------------------------------------------------------------------- the release's stubs say what to write

def test_name_stubs_names_the_function_method_or_variables():
    from course_lib.grading.release import name_stubs

    source = ("class TinyVAE(nn.Module):\n"
              "    def encode(self, x):\n"
              "        # YOUR CODE HERE\n"
              "        raise NotImplementedError()\n"
              "\n"
              "def kl_divergence(mean, logvar):\n"
              "    raise NotImplementedError()\n"
              "\n"
              "raise NotImplementedError()\n"
              "def done():\n"
              "    raise NotImplementedError(\"already says it\")\n")
    named = name_stubs(source, top_level="TOTAL").splitlines()
    assert named[3] == '        raise NotImplementedError("write TinyVAE.encode() here")'
    assert named[6] == '    raise NotImplementedError("write kl_divergence() here")'
    assert named[8] == 'raise NotImplementedError("write TOTAL here")'
    assert named[10] == '    raise NotImplementedError("already says it")'
    assert name_stubs("def broken(:\n    raise NotImplementedError()") == "def broken(:\n    raise NotImplementedError()"


@pytest.mark.parametrize("path", RELEASES, ids=[p.stem for p in RELEASES])
def test_every_release_stub_names_something_of_its_cell(path):
    stubs = 0
    for cell in _read(path).cells:
        if cell.cell_type != "code" or not cell.metadata.get("nbgrader", {}).get("solution"):
            continue
        assert "raise NotImplementedError()" not in cell.source, f"a bare stub in {cell.metadata.nbgrader}"
        stub = re.compile(r'raise NotImplementedError\("write (.+?) here"\)')
        rest = stub.sub("", cell.source)
        for what in stub.findall(cell.source):
            stubs += 1
            names = re.findall(r"[A-Za-z_]\w*", what.removesuffix("()"))
            assert names and all(re.search(rf"\b{name}\b", rest) for name in names), (
                f"stub says to write {what!r}, which its cell does not mention")
    assert stubs, f"{path.name}: no named stub found (regenerate assignments/: make release)"


# ----------------------------------------------------- course_lib.viz.attach_widget, the slider helper of lectures 4-6

def test_attach_widget_redraws_with_each_new_value_only(capsys):
    import ipywidgets as widgets

    from course_lib.viz import attach_widget

    drawn = []
    slider = widgets.FloatSlider(value=0.5, min=0.0, max=1.0)
    attach_widget(drawn.append, slider)
    assert drawn == []                      # the default value's figure is the notebook's own, plain call
    slider.value = 0.25
    slider.value = 0.75
    assert drawn == [0.25, 0.75]
    capsys.readouterr()


@pytest.mark.parametrize("draw, control, name", [(None, "slider", "draw"), (print, 3, "control")])
def test_attach_widget_names_a_bad_argument(draw, control, name):
    import ipywidgets as widgets

    from course_lib.viz import attach_widget

    control = widgets.IntSlider() if control == "slider" else control
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        attach_widget(draw, control)
