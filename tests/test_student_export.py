"""The public student repository (tools/export_student.py): what it holds, where it points, and that no solution,
hidden test, grader check or mutant reaches it."""
from __future__ import annotations

import json
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import course_notebooks  # noqa: E402
import export_student  # noqa: E402

PUBLIC = "https://github.com/example-school/diffusion-course-public"
BLOCK = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)[^\n]*\n(.*?)### END \1", re.S)
MIN_CHARS = 25  # a shorter line (`return x`, `progress=False).images`) is no evidence of a leak
# Lines a solution shares with what a lecture teaches (reviewed one by one): not a leak.
TAUGHT_IN_LECTURES = {"noise = torch.randn(x0.shape, generator=generator)"}  # lecture 3, sampling q(x_t | x_0)


def _lines(text: str) -> set[str]:
    """Lines with their whitespace collapsed, long enough to be evidence."""
    return {" ".join(line.split()) for line in text.splitlines() if len("".join(line.split())) >= MIN_CHARS}


def _public_lines() -> set[str]:
    """Text that is public by design: what nbgrader releases (solutions outside the blocks) and course_lib."""
    public = set()
    for nb in ROOT.glob("solutions/*/*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            public |= _lines(BLOCK.sub("", "".join(cell["source"])))
    for py in (ROOT / "course_lib").rglob("*.py"):
        if "grading" not in py.relative_to(ROOT / "course_lib").parts:
            public |= _lines(py.read_text())
    return public


def _secret_lines() -> set[str]:
    """Solutions and hidden tests (inside the nbgrader blocks), the graders' checks, and the mutants' code.

    The checks and mutants share boilerplate (imports, logging set-up) with the lectures, which are public: for
    them a line a lecture shows is not evidence. Solution and hidden-test lines are held against everything."""
    blocks, graders, lectures = set(), set(), set()
    for nb in ROOT.glob("solutions/*/*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            for _, inside in BLOCK.findall("".join(cell["source"])):
                blocks |= _lines(inside)
    for py in [*ROOT.glob("solutions/**/*.py"), *ROOT.glob("tests/assignment_mutants/*.py")]:
        if not py.with_suffix(".ipynb").exists():  # a jupytext pair is the notebook again, read above
            graders |= _lines(py.read_text())
    for _, text in _texts(ROOT / "lectures"):
        lectures |= _lines(text)
    public = _public_lines()
    return (blocks - public - TAUGHT_IN_LECTURES) | (graders - public - lectures)


def _texts(folder: Path):
    """(path, text) of every file: notebooks as their cells' sources and text outputs."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts):
        if path.suffix == ".ipynb":
            cells = json.loads(path.read_text())["cells"]
            outputs = [o.get("text", "") or json.dumps(o.get("data", {})) for c in cells for o in c.get("outputs", [])]
            yield path, "\n".join(["".join(c["source"]) for c in cells] + ["".join(o) for o in outputs])
        else:
            try:
                yield path, path.read_text()
            except UnicodeDecodeError:  # images: no text to leak
                continue


def leaks(folder: Path, secret: set[str]) -> list[str]:
    found = []
    for path, text in _texts(folder):
        rel = path.relative_to(folder)
        found += [f"{rel}: {line}" for line in sorted(_lines(text) & secret)]
        found += [f"{rel}: nbgrader marker {m!r}" for m in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS") if m in text]
    return found


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    dest = tmp_path_factory.mktemp("public") / "course"
    (dest / ".git").mkdir(parents=True)
    (dest / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (dest / "stale.txt").write_text("from an older export")
    export_student.export(dest, repository=PUBLIC)
    return dest


@pytest.fixture(scope="module")
def secret():
    lines = _secret_lines()
    assert len(lines) > 50, "found almost no solution text: has the nbgrader block format changed?"
    return lines


def test_export_holds_the_student_tree_and_nothing_instructor_only(export):
    files = {p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()}
    for wanted in ["README.md", "pyproject.toml", "constraints.txt", "course_lib/__init__.py",
                   "tools/install_torch.py", *[f"lectures/{p.name}" for p in ROOT.glob("lectures/*.ipynb")],
                   *[p.relative_to(ROOT).as_posix() for p in ROOT.glob("assignments/*/*.ipynb")]]:
        assert wanted in files, f"the export lacks {wanted}"
    forbidden = ("solutions/", "tests/", "docs/", "bench/", "grading/", "course_lib/grading/", "nbgrader_config")
    assert not [f for f in files if f.startswith(forbidden)], "instructor files in the export"
    assert not [f for f in files if f.endswith(".py") and f.startswith("lectures/")], "jupytext pairs exported"
    assert ".git/HEAD" in files and "stale.txt" not in files  # a clone of the public repo: .git kept, rest replaced
    readme = (export / "README.md").read_text()
    assert readme.startswith("# ") and "For instructors" not in readme and "nbgrader" not in readme


def test_export_points_at_itself(export):
    assert tomllib.loads((export / "pyproject.toml").read_text())["tool"]["course"]["repository"] == PUBLIC
    assert course_notebooks.apply(export, course_notebooks.setting(export), check=True) == {}
    slug = PUBLIC.removeprefix("https://github.com/")
    instructor = course_notebooks.setting(ROOT)["repository"]
    for path, text in _texts(export):
        assert instructor not in text, f"{path} still names {instructor}"
        links = re.findall(r"colab\.research\.google\.com/github/(\S+?)/blob/", text) if path.suffix != ".py" else []
        assert all(url == slug for url in links), f"{path}: Colab links to {links}"
    for nb in export.glob("lectures/*.ipynb"):
        setup = [c for c in json.loads(nb.read_text())["cells"] if "setup" in c["metadata"].get("tags", [])]
        assert f"git+{PUBLIC}@" in "".join(setup[0]["source"]), nb.name


def test_export_leaks_no_solution_hidden_test_check_or_mutant(export, secret):
    assert leaks(export, secret) == []


def test_leak_scan_finds_a_planted_solution_line(export, secret, tmp_path):
    planted = tmp_path / "planted"
    shutil.copytree(export, planted)
    line = sorted(secret)[len(secret) // 2]
    nb = next(planted.glob("lectures/*.ipynb"))
    data = json.loads(nb.read_text())
    data["cells"][-1]["source"] = ["    " + line + "\n"]
    nb.write_text(json.dumps(data))
    assert leaks(planted, secret) == [f"{nb.relative_to(planted)}: {line}"]
