"""Hostile and broken submissions through the instructor's autograde (issue #7, the notebook-level half).

One batch: a small "norms" course (no torch: numpy only, so each submission grades in a few seconds) with one
submission per attack, plus three submissions of the real assignment a1_vae (its solution, an answer that calls
course_lib.vae, comparisons monkeypatched), all graded by ONE call of the public ``autograde`` (both
assignments), then ``feedback`` and ``export_csv``. Every submission must come out as ``EXPECTED`` says: status,
score, exactly which test cells lose points, and the notes of course_lib.grading.sanitize in the export's detail.

``test_attacks_succeed_without_the_sanitiser`` grades the same notebooks with plain nbgrader (the repo's
nbgrader_config.py, none of sanitize's preprocessors) and shows that each defence is needed: there the cheats
score and the honest-but-unusual submissions lose points.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

from course_lib.grading import Course, autograde, export_csv, feedback  # noqa: E402
from course_lib.grading.cells import answer_cell, locked_cell, markdown, notebook  # noqa: E402
from course_lib.grading.cells import test_cell as make_test_cell  # noqa: E402  (not a test)
from course_lib.grading.sanitize import (LIMITS, POLICIES, autograde_config, findings, scan_cells,  # noqa: E402
                                         screen_files, submission_config)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from assignment_mutants.a1_vae import KL_MISSING_HALF, REPARAMETERIZE_WITH_VARIANCE  # noqa: E402
from conftest import built_once  # noqa: E402

# ---------------------------------------------------------------------------------- the norms course

NORM_TESTS = """
_r = norm([3.0, 4.0])
assert isinstance(_r, float), f"norm must return a float, got {type(_r).__name__}"
assert math.isclose(_r, 5.0), f"norm([3, 4]) should be 5, got {_r}"
### BEGIN HIDDEN TESTS
assert np.allclose(norm([1.0, 2.0, 2.0]), 3.0)
assert abs(norm([-2.0]) - 2.0) < 1e-9
assert all(norm([0.0] * n) == 0.0 for n in (1, 2))
### END HIDDEN TESTS
"""


def _norms_source():
    norm = answer_cell('def norm(v):\n    """Euclidean length of a list of numbers, as a float."""\n'
                       "    ### BEGIN SOLUTION\n    return math.sqrt(sum(x * x for x in v))\n    ### END SOLUTION",
                       "norm")
    # the source notebook declares what the answer must not merely call (a1/a2 use sanitize.POLICIES instead)
    norm.metadata["course_grading"] = {"tests": ["test_norm"],
                                       "forbidden": ["numpy.linalg.norm", "math.hypot", "math.dist"]}
    return notebook([
        markdown("# Norms\n\n3 points in total."),
        locked_cell("import math\nimport os\nimport numpy as np\n\nAUTOGRADE = os.environ.get('COURSE_AUTOGRADE') == '1'",
                    "parameters", tags=["parameters"]),
        norm,
        make_test_cell(NORM_TESTS, "test_norm", 2),
        markdown("## Part 2"),
        answer_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION", "double"),
        make_test_cell("assert double(2) == 4, 'double(2) should be 4'\n### BEGIN HIDDEN TESTS\n"
                       "assert double(-3) == -6\n### END HIDDEN TESTS", "test_double", 1),
    ])


def _as_handed_in(source) -> nbformat.NotebookNode:
    """What an honest student hands in: the release (hidden tests removed) with the solutions filled in."""
    nb = nbformat.reads(nbformat.writes(source), as_version=4)
    for cell in nb.cells:
        cell.source = re.sub(r"[ \t]*### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS[ \t]*\n?", "", cell.source,
                             flags=re.S)
    return nb


def _cell(nb, grade_id: str):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def _index(nb, grade_id: str) -> int:
    return nb.cells.index(_cell(nb, grade_id))


def _added(source: str, cell_id: str):
    return nbformat.from_dict({"cell_type": "code", "id": cell_id, "metadata": {}, "outputs": [],
                               "execution_count": None, "source": source})


def _copy(cell, cell_id: str, source: str | None = None):
    copied = nbformat.from_dict(json.loads(json.dumps(cell)))
    copied.id = cell_id
    if source is not None:
        copied.source = source
    return copied


CHEAT_NORM = "def norm(v):\n    return -1.0"  # wrong everywhere: only broken comparisons let it pass
WRONG_DOUBLE = "def double(x):\n    return x + 1"
PATCHES = """
import builtins, math
import numpy as np
math.isclose = lambda *a, **k: True
np.allclose = lambda *a, **k: True
builtins.abs = lambda x: 0.0
builtins.all = lambda iterable: True
isinstance = lambda *a, **k: True
"""
FAKE_NUMPY = "import builtins, math\nmath.isclose = lambda *a, **k: True\nbuiltins.abs = lambda x: 0.0\n" \
             "builtins.all = lambda iterable: True\ndef allclose(*a, **k):\n    return True\n"


def _png_outputs(count: int, size: int) -> list:
    import base64
    import os

    data = base64.b64encode(os.urandom(size)).decode()
    return [nbformat.from_dict({"output_type": "display_data", "metadata": {}, "data": {"image/png": data}})
            for _ in range(count)]


def _mutate(student: str, nb) -> None:
    """Turn an honest submission into the named hostile one (in place)."""
    if student == "edited-test":
        _cell(nb, "test_double").source = "assert True  # the test, simplified"
        _cell(nb, "double").source = WRONG_DOUBLE
    elif student == "deleted-test":  # a correct answer whose test is gone: neither a free point nor a silent 0
        nb.cells.remove(_cell(nb, "test_double"))
    elif student == "duplicated-answer":  # a pasted copy below the answer, edited: nbgrader would grade the copy
        nb.cells.insert(_index(nb, "double") + 1, _copy(_cell(nb, "double"), "pasted", WRONG_DOUBLE))
    elif student == "duplicated-test":
        nb.cells.append(_copy(_cell(nb, "test_norm"), "pasted-test", "assert True"))
    elif student == "answer-markdown":
        cell = _cell(nb, "norm")
        cell.cell_type = "markdown"
        del cell["outputs"], cell["execution_count"]
    elif student == "test-raw":
        cell = _cell(nb, "test_double")
        cell.cell_type = "raw"
        del cell["outputs"], cell["execution_count"]
        _cell(nb, "double").source = WRONG_DOUBLE
    elif student == "flipped-metadata":
        _cell(nb, "norm").metadata.nbgrader.update(grade=True, solution=False, locked=True, points=10)
        _cell(nb, "test_double").metadata.nbgrader["points"] = 100
    elif student == "renamed-test":
        cell = _cell(nb, "test_double")
        cell.metadata.nbgrader.update(grade_id="test_bonus", points=50)
        cell.source = "pass"
        _cell(nb, "double").source = WRONG_DOUBLE
    elif student == "spoofed-credit":  # outputs and metadata claiming points, and a score printed while testing
        for grade_id, value in (("test_norm", "2.0"), ("test_double", "1.0")):
            _cell(nb, grade_id).outputs = [nbformat.from_dict({"output_type": "execute_result", "execution_count": 1,
                                                               "metadata": {}, "data": {"text/plain": value}})]
        fake = _added("print('bonus')", "fake-grade")
        fake.metadata["nbgrader"] = {"grade": True, "grade_id": "bonus", "points": 10, "locked": False,
                                     "solution": False, "schema_version": 3}
        nb.cells.append(fake)
        _cell(nb, "double").source = "import sys\ndef double(x):\n    sys.displayhook(1.0)\n    return x + 1"
    elif student == "spoofed-score":
        _cell(nb, "double").source = "import sys\ndef double(x):\n    sys.displayhook(1.0)\n    return x + 1"
    elif student == "stderr-warning":  # correct answers that warn: not a reason to lose the points
        _cell(nb, "norm").source = ("import warnings\ndef norm(v):\n    warnings.warn('norm: slow pure-Python loop', "
                                    "RuntimeWarning)\n    return math.sqrt(sum(x * x for x in v))")
        _cell(nb, "double").source = "import sys\ndef double(x):\n    print('doubling', file=sys.stderr)\n    return 2 * x"
    elif student == "many-lines":
        nb.cells.insert(_index(nb, "double") + 1, _added("for i in range(200_000):\n    print(i)", "chatty"))
    elif student == "many-images":
        gallery = _added("pass", "gallery")
        gallery.outputs = _png_outputs(300, 15_000)  # 6 MB handed in as outputs
        nb.cells.insert(1, gallery)
        nb.cells.insert(1, nbformat.from_dict({
            "cell_type": "markdown", "id": "poster", "metadata": {}, "source": "![poster](attachment:poster.png)",
            "attachments": {"poster.png": {"image/png": _png_outputs(1, 3_000_000)[0].data["image/png"]}}}))
        nb.cells.append(_added("import base64, os\nfrom IPython.display import Image, display\n"
                               "for _ in range(300):\n    display(Image(data=os.urandom(30_000), format='png'))",
                               "painter"))  # ~12 MB of images made while grading
    elif student == "monkeypatch":
        _cell(nb, "norm").source = CHEAT_NORM
        nb.cells.insert(_index(nb, "norm") + 1, _added(PATCHES, "patches"))
    elif student == "patch-during-test":
        _cell(nb, "norm").source = "def norm(v):\n" + "\n".join("    " + line for line in PATCHES.strip().splitlines()
                                                                if not line.startswith("isinstance")) \
            + "\n    return -1.0"
    elif student == "transformer":  # every later cell is emptied before it runs: no test can fail
        _cell(nb, "norm").source = CHEAT_NORM
        _cell(nb, "double").source = WRONG_DOUBLE
        nb.cells.insert(_index(nb, "norm"), _added("get_ipython().input_transformers_cleanup.append(lambda lines: [])",
                                                   "transformer"))
    elif student == "forbidden":
        _cell(nb, "norm").source = "def norm(v):\n    return float(np.linalg.norm(v))"
    elif student == "forbidden-indirect":
        nb.cells.insert(_index(nb, "norm"), _added('import importlib\n_impl = getattr(importlib.import_module('
                                                   '"numpy.linalg"), "no" + "rm")', "helper"))
        _cell(nb, "norm").source = "def norm(v):\n    return float(_impl(v))"
    elif student == "stray-files":
        _cell(nb, "norm").source = CHEAT_NORM
    elif student == "old-format":  # nbformat 4.4, as older Jupyter saves it: cells without ids
        nb.nbformat_minor = 4
        for cell in nb.cells:
            cell.pop("id", None)
        _cell(nb, "double").source = WRONG_DOUBLE
        nb.cells.remove(_cell(nb, "test_double"))


EXTRA_FILES = {
    "stray-files": {"numpy.py": FAKE_NUMPY, "course_lib.py": "raise SystemExit('shadowed')",
                    "torch.py": "raise SystemExit('shadowed')", "bob_norms.ipynb": "{}", "notes.txt": "kept"},
}
BIG_FILE = ("stray-files", "big.bin", 60_000_000)  # sparse: 60 MB on paper, nothing on disk

NOTE = {
    "edited": "test cell test_double was edited: restored",
    "missing": "test cell test_double was missing: restored",
}

# student -> (status, score, cells that lose points, notes that must be in the detail); max score 3
EXPECTED = {
    "solution": ("graded", 3, [], []),
    "old-format": ("graded", 2, ["test_double"], [NOTE["missing"]]),
    "edited-test": ("graded", 2, ["test_double"], [NOTE["edited"]]),
    "deleted-test": ("graded", 3, [], [NOTE["missing"]]),
    "duplicated-answer": ("graded", 3, [], ["cell double appeared 2 times: the first copy is kept"]),
    "duplicated-test": ("graded", 3, [], ["cell test_norm appeared 2 times: the first copy is kept"]),
    "answer-markdown": ("graded", 3, [], ["answer cell norm was turned into markdown: restored as code"]),
    "test-raw": ("graded", 2, ["test_double"], ["test cell test_double was turned into raw: restored as code"]),
    "flipped-metadata": ("graded", 3, [], ["nbgrader metadata of norm was altered (grade, solution, locked, points)",
                                           "nbgrader metadata of test_double was altered (points)"]),
    "renamed-test": ("graded", 2, ["test_double"], ["nbgrader id 'test_bonus' unknown", NOTE["missing"]]),
    "spoofed-credit": ("graded", 2, ["test_double"], ["nbgrader id 'bonus' unknown",
                                                      "test_double produced a result value while it ran"]),
    "spoofed-score": ("graded", 2, ["test_double"], ["test_double produced a result value while it ran"]),
    "stderr-warning": ("graded", 3, [], ["test_norm wrote to stderr (shown, not penalised)",
                                         "test_double wrote to stderr (shown, not penalised)"]),
    "many-lines": ("graded", 3, [], ["outputs of 1 cell(s) were cut to the size limits"]),
    "many-images": ("graded", 3, [], ["outputs of 1 cell(s) were cut to the size limits", "a markdown cell of 4."]),
    "no-notebook": ("failed-no-notebook", None, None, ["expected ['norms.ipynb']"]),
    "stray-files": ("graded", 1, ["test_norm"], [
        "file numpy.py left out: code next to the notebook could shadow an imported module",
        "file course_lib.py left out", "file torch.py left out", "file big.bin left out: 60 MB is over the 50 MB limit",
        "file bob_norms.ipynb left out: not this assignment's notebook"]),
    "monkeypatch": ("graded", 1, ["test_norm"], [
        "before test_norm, the grader restored what the submission replaced: builtins.abs, builtins.all, "
        "math.isclose, numpy.allclose, the name isinstance (a builtin)",
        "tampering in the submission's code: builtins.abs, builtins.all, math.isclose, numpy.allclose"]),
    "patch-during-test": ("graded", 1, ["test_norm"], [
        "test_norm failed: the submission replaced builtins.abs, builtins.all, math.isclose, numpy.allclose while it ran"]),
    "transformer": ("graded", 0, ["test_double", "test_norm"], [
        "test_norm failed: the test did not run to its end", "test_double failed: the test did not run to its end"]),
    "forbidden": ("graded", 1, ["test_norm"], [
        "norm uses numpy.linalg.norm, the piece it should implement: no credit for test_norm"]),
    "forbidden-indirect": ("graded", 1, ["test_norm"], ["norm uses numpy.linalg.norm"]),
}

# a1_vae (16 points; nobody hands in weights here, so test_reconstruction always fails)
A1_PATCHES = """
import math
torch.allclose = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
torch.Tensor.allclose = lambda self, *a, **k: True
torch.Tensor.__eq__ = lambda self, other: torch.ones((), dtype=torch.bool)
math.isclose = lambda *a, **k: True
"""
A1_FORBIDDEN = """
from course_lib import vae as _library

def kl_divergence(mean, logvar):
    return _library.kl_divergence(mean, logvar)
"""
EXPECTED_A1 = {
    "a1-solution": (16 - 4, ["test_reconstruction"], []),
    "a1-forbidden": (16 - 4 - 3, ["test_kl_divergence", "test_reconstruction"], [
        "kl_divergence uses course_lib.vae.kl_divergence, the piece it should implement: no credit for "
        "test_kl_divergence"]),
    "a1-monkeypatch": (16 - 4 - 3 - 2, ["test_kl_divergence", "test_reconstruction", "test_reparameterize"], [
        "before test_reparameterize, the grader restored what the submission replaced: math.isclose, "
        "torch.Tensor.__eq__, torch.Tensor.allclose, torch.allclose, torch.testing.assert_close",
        "tampering in the submission's code: math.isclose, torch.Tensor.__eq__, torch.Tensor.allclose, "
        "torch.allclose, torch.testing.assert_close"]),
}


def _a1_submission(student: str, source):
    nb = _as_handed_in(source)
    if student == "a1-solution":  # libraries may wrap torch functions themselves: that is no tampering
        nb.cells.insert(_index(nb, "reparameterize"), _added("import torch._dynamo  # wraps torch.manual_seed", "lib"))
    elif student == "a1-forbidden":
        _cell(nb, "kl_divergence").source = A1_FORBIDDEN
    elif student == "a1-monkeypatch":
        _cell(nb, "kl_divergence").source = KL_MISSING_HALF
        _cell(nb, "reparameterize").source = REPARAMETERIZE_WITH_VARIANCE
        nb.cells.insert(_index(nb, "reparameterize"), _added(A1_PATCHES, "patches"))
    return nb


def _make_course(root: Path) -> Course:
    (root / "solutions" / "norms").mkdir(parents=True)
    nbformat.write(_norms_source(), str(root / "solutions" / "norms" / "norms.ipynb"))
    (root / "solutions" / "a1_vae").mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / "a1_vae" / "a1_vae.ipynb", root / "solutions" / "a1_vae")
    shutil.copy(ROOT / "nbgrader_config.py", root)
    return Course(root=root)


def _hand_in(course: Course) -> None:
    source = _norms_source()
    for student in EXPECTED:
        folder = course.submission_dir(student, "norms")
        folder.mkdir(parents=True)
        if student != "no-notebook":
            nb = _as_handed_in(source)
            _mutate(student, nb)
            nbformat.write(nb, str(folder / "norms.ipynb"))
        else:
            (folder / "notes.txt").write_text("I forgot the notebook")
        for name, text in EXTRA_FILES.get(student, {}).items():
            (folder / name).write_text(text)
    student, name, size = BIG_FILE
    with open(course.submission_dir(student, "norms") / name, "wb") as f:
        f.truncate(size)
    a1 = nbformat.read(str(course.source_dir / "a1_vae" / "a1_vae.ipynb"), as_version=4)
    for student in EXPECTED_A1:
        folder = course.submission_dir(student, "a1_vae")
        folder.mkdir(parents=True)
        nbformat.write(_a1_submission(student, a1), str(folder / "a1_vae.ipynb"))


@pytest.fixture(scope="session")
def batch(tmp_path_factory):
    """The whole batch, built once per session (conftest.built_once)."""
    return built_once(tmp_path_factory, "hostile", _grade_batch)


def _grade_batch(tmp: Path) -> dict:
    """Hand in, autograde (one call, both assignments), feedback, export."""
    course = _make_course(tmp / "course")
    _hand_in(course)
    statuses = {(s.assignment, s.student): s for s in autograde(course)}
    feedback_results = {(f.assignment, f.student): f for f in feedback(course)}
    export_csv(course, tmp / "grades.csv")
    with open(tmp / "grades.csv", newline="") as f:
        rows = {(r["assignment"], r["student"]): r for r in csv.DictReader(f)}
    for s in statuses.values():
        print(f"{s.assignment} {s.student}: {s.status} {s.score}/{s.max_score} {s.seconds:.1f} s | {s.detail}")
    return {"course": course, "statuses": statuses, "feedback": feedback_results, "rows": rows, "tmp": tmp}


def _lost(detail: str) -> list[str]:
    match = re.match(r"points lost in ([^;]+)", detail)
    return sorted(match.group(1).split(", ")) if match else []


@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_each_hostile_submission_is_graded_as_intended(batch, student):
    status, score, lost, notes = EXPECTED[student]
    row = batch["rows"][("norms", student)]
    assert row["status"] == status, row
    assert float(row["max_score"]) == 3.0, "a submission cannot change what the assignment is worth"
    if status == "graded":
        assert float(row["score"]) == score, row
        assert _lost(row["detail"]) == sorted(lost), row["detail"]
        assert batch["feedback"][("norms", student)].ok
    else:
        assert row["score"] == "", "never a silent 0"
    for note in notes:
        assert note in row["detail"], f"{note!r} missing from the detail: {row['detail']!r}"
    if student == "solution":
        assert row["detail"] == "", "an honest submission gets no notes"


def test_the_real_assignment_a1(batch):
    """On a real torch notebook: no false alarms for the solution, the forbidden call and the patches caught."""
    for student, (score, lost, notes) in EXPECTED_A1.items():
        row = batch["rows"][("a1_vae", student)]
        assert row["status"] == "graded" and float(row["score"]) == score and float(row["max_score"]) == 16, row
        assert _lost(row["detail"]) == lost, row["detail"]
        for note in notes:
            assert note in row["detail"], f"{student}: {note!r} missing from {row['detail']!r}"
    assert batch["rows"][("a1_vae", "a1-solution")]["detail"] == "points lost in test_reconstruction"


def test_outputs_stay_small_and_the_feedback_says_why(batch):
    course = batch["course"]
    for student in EXPECTED:
        graded = course.autograded_dir / student / "norms" / "norms.ipynb"
        if graded.is_file():
            assert graded.stat().st_size < LIMITS["notebook_output_bytes"] + 300_000, (student, graded.stat().st_size)
        html = course.feedback_dir / student / "norms" / "norms.html"
        if html.is_file():
            assert html.stat().st_size < LIMITS["notebook_output_bytes"] + 1_000_000, (student, html.stat().st_size)
    for student in ("many-images", "many-lines"):
        html = (course.feedback_dir / student / "norms" / "norms.html").read_text()
        assert "Notes from the grader" in html and "output cut by the grader" in html
    nb = nbformat.read(str(course.autograded_dir / "many-lines" / "norms" / "norms.ipynb"), as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "199999" not in text and "0\n1\n2\n" in text, "the start of the printed lines is kept, the rest cut"


def test_the_graded_notebook_is_the_instructors(batch):
    """Saved notebooks show the gradebook's tests exactly (guard lines stripped) and keep the student's cells."""
    course = batch["course"]
    source = _norms_source()
    for student in ("solution", "edited-test", "monkeypatch", "transformer", "renamed-test"):
        nb = nbformat.read(str(course.autograded_dir / student / "norms" / "norms.ipynb"), as_version=4)
        for grade_id in ("test_norm", "test_double"):
            assert _cell(nb, grade_id).source == _cell(source, grade_id).source, (student, grade_id)
        text = json.dumps(nb)
        assert "_grader_" not in text and "[grader:" not in text, f"{student}: guard left in the notebook"
    nb = nbformat.read(str(course.autograded_dir / "monkeypatch" / "norms" / "norms.ipynb"), as_version=4)
    assert any(c.get("id") == "patches" for c in nb.cells), "a student's own cell stays"
    kinds = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells if "nbgrader" in c.metadata]
    assert kinds == ["parameters", "norm", "test_norm", "double", "test_double"]
    for name in ("numpy.py", "course_lib.py", "torch.py", "big.bin", "bob_norms.ipynb"):
        assert not (course.autograded_dir / "stray-files" / "norms" / name).exists(), name
    assert (course.autograded_dir / "stray-files" / "norms" / "notes.txt").is_file(), "harmless files are kept"
    notes = json.loads((course.autograded_dir / "forbidden" / "norms" / "grading_notes.json").read_text())
    assert notes == {"norms": ["norm uses numpy.linalg.norm, the piece it should implement: no credit for test_norm"]}
    assert findings(course, "norms", "stray-files")[:1] == ["file big.bin left out: 60 MB is over the 50 MB limit"]


# student -> score under plain nbgrader (max 3; "abort": nbgrader stops, no grade), and why that is wrong.
# Not listed (plain nbgrader already grades them right; sanitize only adds the note): edited-test, test-raw,
# answer-markdown, many-lines (nbgrader's LimitOutput keeps 1000 lines; sanitize also caps their bytes).
UNDEFENDED = {
    "monkeypatch": (3, "the cheat scores: the patched comparisons accept anything"),
    "patch-during-test": (3, "the cheat scores: it patches while the test calls it"),
    "transformer": (3, "wrong answers score: every test cell runs empty"),
    "stray-files": (3, "the cheat scores: numpy.py next to the notebook is imported instead of numpy"),
    "spoofed-score": (3, "a wrong double scores: the 1.0 it displays while tested is read as partial credit"),
    "forbidden": (3, "numpy.linalg.norm scores as an implementation of norm"),
    "stderr-warning": (0, "correct answers score 0: nbgrader fails a test on any stderr"),
    "deleted-test": (2, "a silent 0 for the deleted test of a correct answer"),
    "many-images": (3, "the graded notebook keeps every image (over 10 MB)"),
    "spoofed-credit": ("abort", "nbgrader stops on the fake grade cell"),
    "duplicated-answer": ("abort", "nbgrader stops on the duplicated answer"),
    "duplicated-test": ("abort", "nbgrader stops on the duplicated test"),
    "renamed-test": ("abort", "nbgrader stops on the renamed test"),
    "flipped-metadata": ("abort", "nbgrader stops on the answer marked as a grade cell"),
}


def test_attacks_succeed_without_the_sanitiser(batch, tmp_path):
    """The same notebooks through plain nbgrader (repo config, no sanitize): each defence above is needed."""
    from nbgrader.api import Gradebook

    course = Course(root=batch["course"].root, workspace=tmp_path / "plain", release_dir=tmp_path / "release")
    api = course.api()
    assert api.generate_assignment("norms", force=True, create=True)["success"]  # a fresh gradebook
    scores = {}
    for student in UNDEFENDED:
        shutil.copytree(batch["course"].submission_dir(student, "norms"), course.submission_dir(student, "norms"))
        result = api.autograde("norms", student, force=True, create=True)
        if not result["success"]:
            scores[student] = "abort"
            continue
        with Gradebook(course.config().CourseDirectory.db_url) as gb:
            scores[student] = float(gb.find_submission("norms", student).score)
    big = course.autograded_dir / "many-images" / "norms" / "norms.ipynb"
    assert big.stat().st_size > 10_000_000, "without the caps the images stay in the graded notebook"
    wrong = {s: (scores[s], why) for s, (score, why) in UNDEFENDED.items() if scores[s] != score}
    assert not wrong, f"plain nbgrader did not behave as described: {wrong}"
    for student in UNDEFENDED:  # and with the sanitiser, each of them was graded as intended
        assert batch["rows"][("norms", student)]["status"] == "graded"
        assert float(batch["rows"][("norms", student)]["score"]) == EXPECTED[student][1]
        assert EXPECTED[student][1] != scores[student] or student == "many-images"


def test_stderr_is_kept_as_stderr_but_not_scored(batch):
    nb = nbformat.read(str(batch["course"].autograded_dir / "stderr-warning" / "norms" / "norms.ipynb"), as_version=4)
    for grade_id, text in (("test_norm", "RuntimeWarning: norm: slow pure-Python loop"), ("test_double", "doubling")):
        streams = [o for o in _cell(nb, grade_id).outputs if o.output_type == "stream"]
        assert any(o.name == "stderr" and text in o.text for o in streams), (grade_id, streams)
    assert float(batch["rows"][("norms", "stderr-warning")]["score"]) == 3.0


# ---------------------------------------------------------------------- the static scan, on its own (fast)

POLICY = {"norm": {"tests": ["test_norm"], "forbidden": ["numpy.linalg.norm", "course_lib.vae.kl_divergence"]}}
INSTRUCTOR_IMPORTS = ("import numpy as np\nfrom numpy import linalg", False)  # the notebook's own import cell


@pytest.mark.parametrize("student_code", [
    "def norm(v):\n    return float(np.linalg.norm(v))",                       # the notebook's alias
    "from numpy.linalg import norm as n\ndef norm(v):\n    return n(v)",       # renamed import
    "def norm(v):\n    return linalg.norm(v)",                                  # the instructor's other import
    "import numpy.linalg as la\nf = la.norm",                                   # module alias, attribute
    "import numpy\nL = numpy.linalg\ndef norm(v):\n    return L.norm(v)",      # assigned alias
    "import importlib\nf = getattr(importlib.import_module('numpy.linalg'), 'no' + 'rm')",  # string + getattr
    "from numpy.linalg import *\ndef norm2(v):\n    return norm(v)",            # star import
    "f = getattr(np.linalg, 'norm')",                                          # dynamic on the module
    "from course_lib import kl_divergence",                                     # a re-export of the same name
    "%time x = 1\nfrom course_lib.vae import kl_divergence",                    # a magic does not hide it
])
def test_scan_finds_the_forbidden_piece(student_code):
    banned, _ = scan_cells([INSTRUCTOR_IMPORTS, (student_code, True)], POLICY)
    assert list(banned) == ["norm"] and "the piece it should implement" in banned["norm"]


@pytest.mark.parametrize("student_code", [
    "def norm(v):\n    return math.sqrt(sum(x * x for x in v))",
    "def norm(v):\n    return float(np.sqrt(np.dot(v, v)))",           # other numpy functions are fine
    "from course_lib import vae\nconfig = vae.VAEConfig",               # the same module, another object
    "norm = 'see numpy.linalg.norm in the docs'",                         # prose in a string is not a path
    "def norm(v:\n    return np.linalg.norm(v)",                          # does not parse, so it never runs
])
def test_scan_has_no_false_alarm(student_code):
    banned, tampering = scan_cells([INSTRUCTOR_IMPORTS, (student_code, True)], POLICY)
    assert banned == {} and tampering == []
    # the instructor's own cells may use anything
    assert scan_cells([("import numpy as np\nnp.linalg.norm([1.0])", False)], POLICY) == ({}, [])


def _scan_source(assignment: str, extra: dict[str, str] | None = None):
    """Scan an assignment's source notebook as if the answers (plus ``extra`` lines) were the student's."""
    source = nbformat.read(str(ROOT / "solutions" / assignment / f"{assignment}.ipynb"), as_version=4)
    cells = []
    for cell in source.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code":
            added = (extra or {}).get(meta.get("grade_id"), "")
            cells.append((cell.source + "\n" + added, bool(meta.get("solution"))))
    return source, scan_cells(cells, POLICIES[assignment])


@pytest.mark.parametrize("assignment", sorted(POLICIES))
def test_policies_name_real_cells_and_accept_the_solutions(assignment):
    source, (banned, tampering) = _scan_source(assignment)
    ids = {c.metadata.nbgrader["grade_id"]: c.metadata.nbgrader for c in source.cells if "nbgrader" in c.metadata}
    for answer, rule in POLICIES[assignment].items():
        assert ids.get(answer, {}).get("solution"), f"{answer!r} is not an answer cell of {assignment}"
        assert rule["tests"] and all(ids.get(t, {}).get("grade") for t in rule["tests"]), rule["tests"]
    assert banned == {} and tampering == [], "the instructor's own solution must not be flagged"


@pytest.mark.parametrize("assignment, answer, forbidden", [
    (a, answer, name) for a in sorted(POLICIES) for answer, rule in POLICIES[a].items() for name in rule["forbidden"]])
def test_policies_catch_each_library_piece(assignment, answer, forbidden):
    module, name = forbidden.rsplit(".", 1)
    call = f"from {module} import {name} as _library_version\n_library_version"
    _, (banned, _) = _scan_source(assignment, {answer: call})
    assert answer in banned and forbidden in banned[answer], banned


@pytest.mark.parametrize("student_code, flagged", [
    ("import torch\ntorch.allclose = lambda *a, **k: True", "torch.allclose"),
    ("import builtins\nbuiltins.abs = lambda x: 0", "builtins.abs"),
    ("import numpy as np\nsetattr(np, 'allclose', len)", "setattr on numpy"),
    ("import sys\nsys.modules['numpy'] = None", "sys.modules[...]"),
    ("get_ipython().ast_transformers.append(object())", "IPython ast_transformers"),
    ("__builtins__['abs'] = len", "__builtins__"),
])
def test_scan_flags_tampering(student_code, flagged):
    _, tampering = scan_cells([(student_code, True)], {})
    assert len(tampering) == 1 and flagged in tampering[0], tampering


@pytest.mark.parametrize("call, argname", [
    (lambda c: autograde_config(c, "no_such_assignment"), "assignment"),
    (lambda c: autograde_config("not a course", "norms"), "course"),
    (lambda c: submission_config(c, "norms", "../escape"), "student"),
    (lambda c: screen_files(c, "Norms!", "alice"), "assignment"),
    (lambda c: findings(c, "norms", "bad id"), "student"),
    (lambda c: scan_cells(["print(1)"], {}), "cells"),
    (lambda c: scan_cells([("print(1)", True)], {"norm": {"forbidden": "numpy.linalg.norm"}}), "policy"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_names_the_argument(tmp_path, call, argname):
    course = _make_course(tmp_path / "course")
    with pytest.raises(ValueError, match=argname):
        call(course)


def test_a_failing_test_keeps_its_own_traceback(batch):
    """The guard lives in cells of its own: a failing assertion is reported at its own line, guard-free."""
    nb = nbformat.read(str(batch["course"].autograded_dir / "edited-test" / "norms" / "norms.ipynb"), as_version=4)
    error, = [o for o in _cell(nb, "test_double").outputs if o.output_type == "error"]
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error.traceback))  # without the colours
    assert error.ename == "AssertionError" and "double(2) should be 4" in error.evalue
    assert "_grader_" not in text and "----> 1 assert double(2) == 4" in text
