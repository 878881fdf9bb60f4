"""Grading that a determined student cannot fool (issue 13): the tamper suite.

One batch, graded by ONE call of the public ``autograde`` (2 jobs):

    tamper course   four small answers with torch tests and a checks.py (tests/data/tamper/course.py). One
                    submission per hostile mechanism (tests/data/tamper/hostile/*.py): each starts from WRONG
                    answers and tampers with the kernel (lying objects, tensor subclasses, torch function and
                    dispatch modes, monkeypatches, trace and profile hooks, import hooks, IPython transformers
                    and events, threads, signals, gc/ctypes writes, forged files and outputs, os._exit, ...).
                    Every one must score 0. One submission per legal-but-unusual solution (legal/*.py:
                    nn.Module instances, lambdas, generators, closures, threads loading data): full marks.
    a2_attention    the real assignment: the two attacks of the issue paired with wrong answers (lying
                    comparisons, an interpreter-wide TorchFunctionMode), and a kernel that dies (os._exit) in the
                    last answer cell: the tests that do not need that cell keep their points.

The verdicts come from course_lib.grading.verdicts (the worker compares what the kernel computed on fresh inputs
with its own reference); ``test_the_kernel_was_fooled_often`` shows the suite is not empty talk: many mechanisms
did make the notebook's own tests pass, and only the grader's checks took the points back.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

from course_lib.grading import Course, autograde  # noqa: E402
from course_lib.grading.report import cell_scores  # noqa: E402
from course_lib.grading.verdicts import Check, compare, load_checks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "tamper"
sys.path.insert(0, str(DATA))
import course as tamper  # noqa: E402  (tests/data/tamper/course.py)
from conftest import built_once  # noqa: E402


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_tamper_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOSTILE = {p.stem: _load(p) for p in sorted((DATA / "hostile").glob("*.py"))}
LEGAL = {p.stem: _load(p) for p in sorted((DATA / "legal").glob("*.py"))}


def _as_handed_in(source) -> nbformat.NotebookNode:
    nb = nbformat.reads(nbformat.writes(source), as_version=4)
    for cell in nb.cells:
        cell.source = re.sub(r"[ \t]*### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS[ \t]*\n?", "", cell.source,
                             flags=re.S)
    return nb


def _cell(nb, grade_id: str):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def _code(source: str, cell_id: str):
    return nbformat.from_dict({"cell_type": "code", "id": cell_id, "metadata": {}, "outputs": [],
                               "execution_count": None, "source": source})


def _tamper_submission(module, wrong: bool):
    nb = _as_handed_in(tamper.source_notebook())
    for answer, source in {**(tamper.WRONG if wrong else {}), **getattr(module, "ANSWERS", {})}.items():
        _cell(nb, answer).source = source
    if getattr(module, "PRELUDE", None):
        nb.cells.insert(nb.cells.index(_cell(nb, "imports")) + 1, _code(module.PRELUDE, "prelude"))
    if getattr(module, "TAIL", None):
        nb.cells.append(_code(module.TAIL, "tail"))
    if getattr(module, "FAKE_OUTPUTS", False):
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = [nbformat.from_dict({"output_type": "stream", "name": "stdout", "text": "passed\n"})]
                cell.execution_count = 1
    return nb


# ------------------------------------------------------------------------------------------------- a2_attention

A2_LYING = '''
class _Agreeable(torch.Tensor):
    def __eq__(self, other):
        return torch.ones((), dtype=torch.bool)

def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)            # no 1 / sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return (weights @ v).as_subclass(_Agreeable), weights.as_subclass(_Agreeable)

torch.allclose = lambda *a, **k: True
'''
A2_FUNCTION_MODE = '''
from torch.overrides import TorchFunctionMode

class _Agree(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("equal", "allclose"):
            return True
        return func(*args, **(kwargs or {}))

_Agree().__enter__()

def split_heads(x, num_heads):
    B, N, C = x.shape
    return x.view(B, num_heads, N, C // num_heads)   # wrong: heads must take channel blocks

def merge_heads(x):
    B, h, N, d = x.shape
    return x.reshape(B, N, h * d)
'''
A2 = {  # student -> (status, score out of 14, test cells with no points)
    "a2-lying": ("graded", 10, ["test_attention", "test_attention_mask"]),
    "a2-function-mode": ("graded", 12, ["test_heads"]),
    # os._exit at the end of the last answer cell: that cell is left out (its test fails), the rest keep points
    "a2-dies-in-last-answer": ("graded-partial-kernel-died", 11, ["test_diffusers_match"]),
}


def _a2_submission(student: str, source):
    nb = _as_handed_in(source)
    if student == "a2-lying":
        _cell(nb, "scaled_dot_product_attention").source = A2_LYING
    elif student == "a2-function-mode":
        _cell(nb, "heads").source = A2_FUNCTION_MODE
    elif student == "a2-dies-in-last-answer":
        _cell(nb, "load_diffusers_attention").source += "\n\nimport os\nos._exit(1)"
    return nb


# ------------------------------------------------------------------------------------------------------ the batch

def _make_course(root: Path) -> Course:
    (root / "solutions" / "tamper").mkdir(parents=True)
    nbformat.write(tamper.source_notebook(), str(root / "solutions" / "tamper" / "tamper.ipynb"))
    (root / "solutions" / "tamper" / "checks.py").write_text(tamper.CHECKS)
    shutil.copytree(ROOT / "solutions" / "a2_attention", root / "solutions" / "a2_attention",
                    ignore=shutil.ignore_patterns("*.safetensors", "outputs", "__pycache__", ".ipynb_checkpoints"))
    shutil.copy(ROOT / "nbgrader_config.py", root)
    return Course(root=root)


def _hand_in(course: Course) -> None:
    def put(student, assignment, nb):
        folder = course.submission_dir(student, assignment)
        folder.mkdir(parents=True)
        nbformat.write(nb, str(folder / f"{assignment}.ipynb"))

    for name, module in HOSTILE.items():
        put(f"hostile-{name}".replace("_", "-"), "tamper", _tamper_submission(module, wrong=True))
    for name, module in LEGAL.items():
        put(f"legal-{name}".replace("_", "-"), "tamper", _tamper_submission(module, wrong=False))
    a2 = nbformat.read(str(course.source_dir / "a2_attention" / "a2_attention.ipynb"), as_version=4)
    for student in A2:
        put(student, "a2_attention", _a2_submission(student, a2))


@pytest.fixture(scope="session")
def batch(tmp_path_factory):
    """Every tamper and legal submission graded, once per session (conftest.built_once)."""
    return built_once(tmp_path_factory, "tamper", _grade_batch)


def _grade_batch(tmp: Path) -> tuple:
    course = _make_course(tmp / "course")
    _hand_in(course)
    statuses = {(s.assignment, s.student): s for s in autograde(course, jobs=2)}
    for s in statuses.values():
        print(f"{s.assignment} {s.student}: {s.status} {s.score}/{s.max_score} {s.seconds:.1f} s | {s.detail}")
    return course, statuses


def _student(name: str, kind: str) -> str:
    return f"{kind}-{name}".replace("_", "-")


@pytest.mark.parametrize("mechanism", sorted(HOSTILE))
def test_each_mechanism_scores_zero(batch, mechanism):
    course, statuses = batch
    status = statuses[("tamper", _student(mechanism, "hostile"))]
    # graded, or graded-partial-kernel-died when the mechanism kills or hangs its kernel: never a bare failure
    assert status.status in ("graded", "graded-partial-kernel-died"), (mechanism, status.status, status.detail)
    assert status.score == 0 and status.max_score == 8, (mechanism, status.score, status.detail)
    scores = cell_scores(course, "tamper", _student(mechanism, "hostile"))
    assert all(score == 0 for score, _ in scores.values()), scores


@pytest.mark.parametrize("solution", sorted(LEGAL))
def test_unusual_but_legal_answers_get_full_marks(batch, solution):
    _, statuses = batch
    status = statuses[("tamper", _student(solution, "legal"))]
    assert status.status == "graded" and status.score == status.max_score == 8, (solution, status)
    assert "no credit" not in status.detail, status.detail


def test_the_kernel_was_fooled_often(batch):
    """The mechanisms are real: in many submissions the notebook's own tests passed in the kernel (nbgrader alone
    would have given points), and only the grader's checks took them back."""
    _, statuses = batch
    fooled = sorted(name for name in HOSTILE
                    if "passed in the kernel" in statuses[("tamper", _student(name, "hostile"))].detail)
    print(f"{len(fooled)} of {len(HOSTILE)} mechanisms fooled the notebook's own tests: {fooled}")
    assert len(fooled) >= 5, fooled


@pytest.mark.parametrize("student", sorted(A2))
def test_real_assignment_a2(batch, student):
    course, statuses = batch
    status = statuses[("a2_attention", student)]
    expected_status, score, lost = A2[student]
    assert status.status == expected_status and status.score == score and status.max_score == 14, status
    scores = cell_scores(course, "a2_attention", student)
    assert sorted(t for t, (s, m) in scores.items() if s < m) == lost, scores
    if expected_status == "graded-partial-kernel-died":
        assert "the kernel died in" in status.detail, status.detail


def test_checks_never_reach_the_kernel(batch):
    course, _ = batch
    assert "checks.py" in course.config().CourseDirectory.ignore, "nbgrader would release solutions/<a>/checks.py"
    leaked = sorted(str(p) for p in course.autograded_dir.rglob("checks.py"))
    leftovers = sorted(str(p) for p in course.autograded_dir.rglob(".grader-*"))
    assert not leaked and not leftovers, (leaked, leftovers)


# ----------------------------------------------------------------------------------- the pieces, without a kernel

@pytest.mark.parametrize("got, want, ok", [
    (2, 2, True), (2.0, 2, False), (True, 1, False), (1, True, False), ("2", 2, False),
    (5.0, 5.0, True), (5.0 + 1e-3, 5.0, False), (float("nan"), 5.0, False), ([1, 2], [1, 2], True),
    ([1, 2], (1, 2, 3), False),
])
def test_compare_is_strict_about_plain_values(got, want, ok):
    assert (compare("x", got, want, 1e-6, 1e-6) is None) is ok


def test_compare_tensors():
    import torch

    want = torch.tensor([1.0, 2.0, float("inf")])
    assert compare("x", want.clone(), want, 1e-6, 0) is None
    assert "shape" in compare("x", torch.ones(2), want, 1e-6, 0)
    assert "bool" in compare("x", torch.ones(3), torch.ones(3, dtype=torch.bool), 0, 0)
    assert "off by" in compare("x", torch.tensor([1.0, 2.1, float("inf")]), want, 1e-6, 1e-6)
    assert "NaN" in compare("x", torch.tensor([1.0, float("nan"), float("inf")]), want, 1e-6, 1e-6)
    assert compare("x", [1.0], want, 0, 0) == "x: expected a tensor, got list"


@pytest.mark.parametrize("kwargs, argument", [
    ({"probe": 3, "expect": lambda x: {}}, "probe"),
    ({"probe": "outputs['a'] = 1"}, "expect= (reference outputs) or judge="),
    ({"expect": lambda x: {}}, "give a probe too"),
    ({"probe": "x", "expect": lambda x: {}, "rtol": -1}, "rtol and atol"),
    ({"probe": "x", "expect": lambda x: {}, "inputs": 3}, "inputs must be callable"),
])
def test_bad_checks_are_refused_with_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=re.escape(argument)):
        Check(**kwargs)


def test_outputs_are_read_only_from_regular_files(tmp_path):
    from course_lib.grading.verdicts import _read_outputs

    (tmp_path / "secret").write_text(json.dumps({"values": {"n": 5.0}}))
    (tmp_path / "s.out.json").symlink_to(tmp_path / "secret")
    assert _read_outputs(tmp_path, "s") == ({}, "the check did not run to its end (no outputs came back from "
                                                 "the kernel)")
    (tmp_path / "t.out.json").write_text("[1, 2]")
    assert _read_outputs(tmp_path, "t")[1] == "its outputs could not be read"
    (tmp_path / "u.out.json").write_text(json.dumps({"values": {"n": 5.0}}))
    (tmp_path / "u.out.safetensors").write_bytes(b"not a safetensors file")
    assert "could not be read" in _read_outputs(tmp_path, "u")[1]


UNCHECKED: set[tuple[str, str]] = set()  # (assignment, test) allowed without a check: none


@pytest.mark.parametrize("assignment", sorted(p.name for p in (ROOT / "solutions").iterdir()
                                              if (p / "checks.py").is_file() and (p / f"{p.name}.ipynb").is_file()))
def test_checks_name_real_test_cells(assignment):
    nb = nbformat.read(str(ROOT / "solutions" / assignment / f"{assignment}.ipynb"), as_version=4)
    tests = {c.metadata["nbgrader"]["grade_id"] for c in nb.cells
             if c.metadata.get("nbgrader", {}).get("grade") and not c.metadata["nbgrader"].get("solution")}
    checks = load_checks(ROOT / "solutions" / assignment / "checks.py")
    assert set(checks) <= tests, sorted(set(checks) - tests)
    assert {(assignment, t) for t in tests - set(checks)} <= UNCHECKED, sorted(tests - set(checks))


def test_cached_folder_is_built_once_and_only_trusted_when_private(tmp_path, monkeypatch):
    """checks.py's per-machine cache (trained judges, tiny models): built once, reused, never trusted when another
    user could have written it; a bad name is refused."""
    from course_lib.grading.verdicts import cached_folder

    monkeypatch.setenv("COURSE_LIB_CACHE", str(tmp_path / "cache"))
    builds = []

    def build(folder):
        builds.append(folder)
        folder.mkdir()
        (folder / "weights.txt").write_text(f"build {len(builds)}")

    first = cached_folder("judge-v1", build)
    assert first == tmp_path / "cache" / "grader" / "judge-v1" and (first / "weights.txt").read_text() == "build 1"
    assert cached_folder("judge-v1", build) == first and len(builds) == 1      # reused, not rebuilt
    first.chmod(0o777)                                                        # writable by anyone: not trusted
    other = cached_folder("judge-v1", build)
    assert other != first and (other / "weights.txt").read_text() == "build 2" and not str(other).startswith(
        str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="name"):
        cached_folder("../escape", build)


def test_a_deterministic_judge_is_remembered_by_file_content(tmp_path, monkeypatch):
    """Check(judge=..., reads=(file,)): the verdict is cached by the files' content, the checks.py and the test;
    a changed file, another test or another checks.py is judged again."""
    from course_lib.grading.verdicts import Trial, _judge

    monkeypatch.setenv("COURSE_LIB_CACHE", str(tmp_path / "cache"))
    calls = []

    def judge(trial):
        calls.append(trial.submitted)
        text = (trial.submitted / "w.bin").read_text()
        return None if text == "good" else f"bad weights {text}"

    (tmp_path / "checks.py").write_text(
        "from course_lib.grading.verdicts import Check\nCHECKS = {'test_a': Check(judge=print, reads=('w.bin',))}\n")
    check = dataclasses.replace(load_checks(tmp_path / "checks.py")["test_a"], judge=judge)
    submitted = tmp_path / "student"
    submitted.mkdir()
    (submitted / "w.bin").write_text("good")
    trial = Trial(inputs={}, outputs={}, submitted=submitted)
    assert _judge(check, trial, "test_a") is None and _judge(check, trial, "test_a") is None and len(calls) == 1
    assert _judge(check, trial, "test_b") is None and len(calls) == 2              # another test: judged
    (submitted / "w.bin").write_text("broken")
    assert _judge(check, trial, "test_a") == "bad weights broken" and len(calls) == 3
    assert _judge(check, trial, "test_a") == "bad weights broken" and len(calls) == 3
    assert _judge(dataclasses.replace(check, origin="another checks.py"), trial, "test_a") and len(calls) == 4
    with pytest.raises(ValueError, match="reads"):
        Check(probe="outputs['x'] = 1", judge=judge, reads=("w.bin",))
    with pytest.raises(ValueError, match="reads"):
        Check(judge=judge, reads=("../w.bin",))
    monkeypatch.setenv("COURSE_GRADER_REMEMBER_VERDICTS", "0")                 # the instructor's "judge again"
    assert _judge(check, trial, "test_a") == "bad weights broken" and len(calls) == 5


def test_a3_digit_judge_from_its_arrays_is_the_notebooks_classifier(tmp_path, monkeypatch):
    """a3's judge applies the notebook's LogisticRegression and PCA from arrays fitted once per machine: the same
    probabilities and features as scikit-learn's own predict_proba and transform."""
    import warnings

    import torch
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    from course_lib.data import load_digits

    monkeypatch.setenv("COURSE_LIB_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("a3_checks", ROOT / "solutions" / "a3_ddpm" / "checks.py")
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    judge = checks._digit_judge()
    assert (tmp_path / "cache" / "grader").is_dir()                           # built once, in the grader's cache
    real, labels = load_digits(8, split="all")
    x = torch.cat([real.flatten(1), torch.rand(50, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = LogisticRegression(C=0.1, max_iter=2000).fit(real.flatten(1).numpy(), labels.numpy())
        pca = PCA(n_components=16, random_state=0).fit(real.flatten(1).numpy())
    probs = torch.softmax(x.double() @ judge["coef"].T + judge["intercept"], dim=1)
    features = (x.double() - judge["pca_mean"]) @ judge["pca_components"].T
    # scikit-learn computes in the input's float32: 64-term dot products of O(10) terms carry ~1.2e-7 * 10 * 64
    # ~ 1e-4 of rounding at most (far less on average); the judge's float64 is exact beside it
    want_probs = torch.from_numpy(classifier.predict_proba(x.numpy())).double()
    torch.testing.assert_close(probs, want_probs, rtol=0, atol=1e-4)
    assert torch.equal(probs.argmax(1), want_probs.argmax(1))
    torch.testing.assert_close(features, torch.from_numpy(pca.transform(x.numpy())).double(), rtol=0, atol=1e-4)
