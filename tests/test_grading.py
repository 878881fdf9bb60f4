"""Every graded assignment (solutions/<a>/) and the grading tooling (python -m course_lib.grading).

Per assignment, ``test_grading_term`` runs a whole grading term in a temporary workspace:
    1. release into a temporary folder (generate_assignment, then validate --invert on the release);
    2. validate the source on a copy with FAST = True (its training cells leave weights next to the copy);
    3. pack an LMS zip: "solution" (the source + those weights), "blank" (the release, untouched), one student
       per mutant of tests/assignment_mutants/<a>.py (source with cells replaced + the same weights) and
       "broken" (not a notebook);
    4. collect the zip -> autograde every student (one process each) -> feedback -> export CSV.
and then checks it (TERM_CHECKS). New assignments (a3, a4, a5) are picked up from solutions/ automatically.

The tooling tests use a tiny "toy" course made here (no torch in its notebook, so they are quick): collect
layouts, a crashing and an endless submission, the CSV statuses, the command line.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

from course_lib.grading import (Course, autograde, autograde_submission, cell_scores, collect,  # noqa: E402
                                export_csv, export_rows, feedback, release, validate_notebook, validate_source)
from course_lib.grading.__main__ import main  # noqa: E402
from course_lib.grading.cells import (answer_cell, code, grade_cells, locked_cell, markdown,  # noqa: E402
                                      nbgrader_cells, notebook)
from course_lib.grading.cells import test_cell as make_test_cell  # noqa: E402  (not a test)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assignment_mutants import load_mutants  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(p.parent.name for p in ROOT.glob("solutions/*/*.ipynb") if p.stem == p.parent.name)
def _colab_prefix() -> str:
    """Where the badges point: [tool.course] repository and tag of pyproject.toml (tools/course_notebooks.py)."""
    import tomllib
    course = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["course"]
    slug = course["repository"].removeprefix("https://github.com/").removesuffix(".git").strip("/")
    return f"https://colab.research.google.com/github/{slug}/blob/{course['tag']}/assignments"


COLAB = _colab_prefix()
RERELEASE = "run `python -m course_lib.grading release {a}` and commit assignments/{a}/"
MAX_SECONDS_PER_SUBMISSION = 90  # the contract says <= 30 s on an idle machine; this leaves room for a busy one


def mutant_bundles(assignment: str) -> dict[str, list[dict]]:
    """The mutants of an assignment packed into students ("mutants-1", ...): one submission carries several
    mutants when they replace different answer cells and each of them keeps a test that no other mutant of the
    submission expects to fail (a9's capstone test catches every mutant; each also has a test of its own).

    Grading a submission costs a kernel (seconds of imports and judges), so the ~90 mutants of the course go in
    ~25 submissions. What a bundle checks: every mutant's expected tests fail, and no other test does. What it
    cannot see: a mutant that leaks into a test which another mutant of the same bundle breaks anyway, and
    whether a shared test (the capstone) would catch each mutant alone. A bundle that fails is easiest to read
    one mutant at a time: COURSE_TEST_MUTANTS_ALONE=1 grades every mutant as a student of its own.
    """
    import os

    mutants = load_mutants(assignment)
    if os.environ.get("COURSE_TEST_MUTANTS_ALONE") == "1":
        return {"mutant-" + m["name"].replace("_", "-"): [m] for m in mutants}
    def fits(bundle: list[dict], mutant: dict) -> bool:
        """Different cells, and every mutant keeps a test that only it expects to fail (its own proof)."""
        together = bundle + [mutant]
        if set(mutant["replace"]) & {cell for m in bundle for cell in m["replace"]}:
            return False
        return all(set(m["expect_fail"]) - {t for other in together if other is not m for t in other["expect_fail"]}
                   for m in together)

    bundles: list[list[dict]] = []
    for mutant in mutants:
        home = next((bundle for bundle in bundles if fits(bundle, mutant)), None)
        if home is None:
            bundles.append([mutant])
        else:
            home.append(mutant)
    return {f"mutants-{i + 1}": bundle for i, bundle in enumerate(bundles)}


# ------------------------------------------------------------------------------------------- the term

def _replace_cells(nb, replacements: dict[str, str]):
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # deep copy
    by_id = {cell.metadata.nbgrader["grade_id"]: cell for cell in nbgrader_cells(nb)}
    for grade_id, source in replacements.items():
        assert grade_id in by_id, f"mutant replaces unknown cell {grade_id!r}"
        assert by_id[grade_id].metadata.nbgrader.get("solution"), f"{grade_id!r} is not an answer cell"
        by_id[grade_id].source = source.strip("\n")
    return nb


def _pack_submissions(assignment: str, source_run: Path, release_dir: Path, zip_path: Path) -> dict[str, str]:
    """The LMS zip of the term; returns student -> what they handed in."""
    source_nb = nbformat.read(str(source_run / f"{assignment}.ipynb"), as_version=4)
    extras = [p for p in sorted(source_run.iterdir()) if p.is_file() and p.suffix != ".ipynb"]
    students = {"solution": "the source solution", "blank": "the untouched release", "broken": "not a notebook"}
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr(f"solution_{assignment}.ipynb", nbformat.writes(source_nb))
        for student, bundle in mutant_bundles(assignment).items():
            students[student] = ", ".join(m["name"] for m in bundle)
            replace = {cell: source for m in bundle for cell, source in m["replace"].items()}
            zf.writestr(f"{student}_{assignment}.ipynb", nbformat.writes(_replace_cells(source_nb, replace)))
        for student in [s for s in students if s.startswith("mutant")] + ["solution"]:
            for extra in extras:  # weights the source's FAST run trained (never committed)
                zf.write(extra, f"{student}_{extra.name}")
        for nb_path in release_dir.glob("*.ipynb"):  # folder-per-student layout, nbgrader style
            zf.write(nb_path, f"blank/{assignment}/{nb_path.name}")
        zf.writestr(f"broken_{assignment}.ipynb", "this is not a notebook {")
        zf.writestr("__MACOSX/._solution_notes.txt", "resource fork")
        zf.writestr("grading_instructions.txt", "a stray file without a student prefix")
    return students


def _run_term(assignment: str, tmp: Path) -> dict:
    course = Course(workspace=tmp / "grading", release_dir=tmp / "release")
    times = {}
    start = time.perf_counter()
    released = release(course, assignment)
    times["release + validate --invert"] = time.perf_counter() - start
    start = time.perf_counter()
    source_reports = validate_source(course, assignment, tmp / "source_run", fast=True)
    times["validate source (FAST training)"] = time.perf_counter() - start
    students = _pack_submissions(assignment, tmp / "source_run" / assignment, released.release_dir,
                                 tmp / f"{assignment}_submissions.zip")
    collected = collect(course, tmp / f"{assignment}_submissions.zip")
    start = time.perf_counter()
    statuses = {s.student: s for s in autograde(course, assignment)}
    times["autograde"] = time.perf_counter() - start
    start = time.perf_counter()
    feedback_results = {f.student: f for f in feedback(course, assignment)}
    times["feedback"] = time.perf_counter() - start
    rows = export_csv(course, tmp / "grades.csv")
    for what, seconds in times.items():
        print(f"[{assignment}] {what}: {seconds:.1f} s")
    for s in statuses.values():
        print(f"[{assignment}] {s.student}: {s.status} {s.score}/{s.max_score} in {s.seconds:.1f} s {s.detail}")
    return {"assignment": assignment, "course": course, "release": released, "source": source_reports,
            "students": students, "collected": collected, "statuses": statuses, "feedback": feedback_results,
            "rows": rows, "csv": tmp / "grades.csv"}


# -------------------------------------------------------------------------------- per assignment: fast

def _load(path: Path):
    return nbformat.read(str(path), as_version=4)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_notebook_follows_the_contract(assignment):
    source = _load(ROOT / "solutions" / assignment / f"{assignment}.ipynb")
    ids = [cell.metadata.nbgrader["grade_id"] for cell in nbgrader_cells(source)]
    assert len(ids) == len(set(ids)), f"grade_ids must be unique, got duplicates in {ids}"
    points = grade_cells(source)
    assert points and all(p > 0 for p in points.values()), f"every test cell needs points > 0, got {points}"
    assert any(cell.metadata.nbgrader.get("solution") for cell in nbgrader_cells(source)), "no answer cells"
    for cell in source.cells:
        assert not cell.get("outputs") and not cell.get("execution_count"), "commit solutions without outputs"
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution"):
            assert "### BEGIN SOLUTION" in cell.source, f"answer cell {cell.id} has no solution markers"
    first = source.cells[0]
    assert first.cell_type == "markdown" and f"{COLAB}/{assignment}/{assignment}.ipynb" in first.source, (
        "the first cell must be markdown with the Colab badge of the student release")
    total = sum(points.values())
    stated = re.compile(rf"\b{total:g}\b[^\n]*\bpoints?\b|\bpoints?\b[^\n]*\b{total:g}\b", re.IGNORECASE)
    assert any(stated.search(c.source) for c in source.cells if c.cell_type == "markdown"), (
        f"state the total ({total:g} points) in the notebook's markdown")
    fast = [c for c in source.cells if c.cell_type == "code" and re.search(r"^FAST\s*=\s*False\b", c.source, re.M)]
    assert len(fast) == 1, "exactly one code cell must set FAST = False"
    meta = fast[0].metadata
    assert meta.get("nbgrader", {}).get("locked") and "parameters" in meta.get("tags", []), (
        "the FAST cell must be locked and tagged 'parameters'")
    assert "COURSE_AUTOGRADE" in "".join(c.source for c in source.cells), "training must depend on COURSE_AUTOGRADE"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_mutant_bundles_cover_each_mutant_once_without_overlaps(assignment, monkeypatch):
    monkeypatch.delenv("COURSE_TEST_MUTANTS_ALONE", raising=False)
    bundles = mutant_bundles(assignment)
    names = [m["name"] for bundle in bundles.values() for m in bundle]
    assert sorted(names) == sorted(m["name"] for m in load_mutants(assignment))
    for student, bundle in bundles.items():
        cells = [cell for m in bundle for cell in m["replace"]]
        assert len(cells) == len(set(cells)), f"{student}: two mutants replace the same cell: {cells}"
        for m in bundle:
            others = {t for other in bundle if other is not m for t in other["expect_fail"]}
            assert set(m["expect_fail"]) - others, f"{student}: {m['name']} has no expected test of its own"
    monkeypatch.setenv("COURSE_TEST_MUTANTS_ALONE", "1")
    assert [b for b in mutant_bundles(assignment).values()] == [[m] for m in load_mutants(assignment)]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_mutants_name_real_cells(assignment):
    cells = {c.metadata.nbgrader["grade_id"]: c.metadata.nbgrader
             for c in nbgrader_cells(_load(ROOT / "solutions" / assignment / f"{assignment}.ipynb"))}
    for mutant in load_mutants(assignment):
        for grade_id in mutant["replace"]:
            assert cells.get(grade_id, {}).get("solution"), f"{mutant['name']}: {grade_id!r} is not an answer cell"
        for grade_id in mutant["expect_fail"]:
            assert cells.get(grade_id, {}).get("grade"), f"{mutant['name']}: {grade_id!r} is not a test cell"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_committed_release_has_no_outputs_or_solutions(assignment):
    released = sorted((ROOT / "assignments" / assignment).glob("*.ipynb"))
    assert released, RERELEASE.format(a=assignment)
    for path in released:
        text = path.read_text()
        for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS"):
            assert marker not in text, f"{path.name} contains {marker!r}: {RERELEASE.format(a=assignment)}"
        assert not any(c.get("outputs") for c in _load(path).cells), f"{path.name} has outputs"


# ------------------------------------------------------------------------------- per assignment: a term

def _normalised(path: Path) -> list[dict]:
    """A notebook without volatile parts: cell type, id, source and the metadata nbgrader and papermill use."""
    cells = []
    for cell in _load(path).cells:
        meta = {k: cell.metadata[k] for k in ("nbgrader", "tags", "deletable", "editable") if k in cell.metadata}
        cells.append({"type": cell.cell_type, "id": cell.get("id"), "source": cell.source, "metadata": meta,
                      "outputs": cell.get("outputs", [])})
    return cells


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def check_release_fails_validation(term) -> list[str]:
    released = term["release"]
    if not released.generated:
        return [f"generate_assignment failed:\n{released.log}"]
    if not released.validations or not all(v.invert for v in released.validations):
        return ["the release was not validated with --invert"]
    return [f"a blank release must pass no test cell:\n{v.summary()}" for v in released.validations if not v.ok]


def check_committed_release_is_up_to_date(term) -> list[str]:
    a = term["assignment"]
    fresh, committed = _files(term["release"].release_dir), _files(ROOT / "assignments" / a)
    if sorted(fresh) != sorted(committed):
        return [f"release files {sorted(fresh)} != committed {sorted(committed)}: {RERELEASE.format(a=a)}"]
    problems = []
    for name, path in fresh.items():
        same = (_normalised(path) == _normalised(committed[name]) if name.endswith(".ipynb")
                else path.read_bytes() == committed[name].read_bytes())
        if not same:
            problems.append(f"assignments/{a}/{name} is stale: {RERELEASE.format(a=a)}")
    return problems


def check_source_passes_validation(term) -> list[str]:
    if not term["source"]:
        return ["no source notebook was validated"]
    return [f"nbgrader validate fails on the source:\n{r.summary()}" for r in term["source"] if not r.ok or r.invert]


def check_solution_scores_full_marks(term) -> list[str]:
    a, course = term["assignment"], term["course"]
    status = term["statuses"]["solution"]
    if status.status != "graded":
        return [f"the solution was not graded: {status}"]
    problems = []
    scores = cell_scores(course, a, "solution")
    lost = {gid: s for gid, s in scores.items() if s[0] < s[1]}
    if not scores or lost:
        problems.append(f"the solution loses points: {lost or scores}")
    total = sum(grade_cells(_load(course.source_dir / a / f"{a}.ipynb")).values())
    if not status.score == status.max_score == total:
        problems.append(f"solution scored {status.score}/{status.max_score}, expected {total}/{total}")
    for path in (course.autograded_dir / "solution" / a).glob("*.ipynb"):  # correct answers are quiet
        for cell in _load(path).cells:
            noise = [o.text for o in cell.get("outputs", []) if o.get("name") == "stderr"]
            if cell.metadata.get("nbgrader", {}).get("grade") and noise:
                problems.append(f"{cell.metadata.nbgrader['grade_id']} prints to stderr: {noise}")
    return problems


def check_blank_release_scores_zero(term) -> list[str]:
    status = term["statuses"]["blank"]
    if status.status != "graded":
        return [f"the run must complete for a blank submission: {status}"]
    scores = cell_scores(term["course"], term["assignment"], "blank")
    free = {gid: s for gid, s in scores.items() if s[0] != 0}
    return [f"free points in a blank release: {free or scores}"] if free or not scores else []


def check_mutants(term) -> list[str]:
    a, problems = term["assignment"], []
    for student, bundle in mutant_bundles(a).items():
        names = [m["name"] for m in bundle]
        status = term["statuses"].get(student)
        if status is None or status.status != "graded":
            problems.append(f"{student} (mutants {names}) was not graded: {status}")
            continue
        scores = cell_scores(term["course"], a, student)
        failed = {gid for gid, (score, top) in scores.items() if score < top}
        for mutant in bundle:
            missed = sorted(set(mutant["expect_fail"]) - failed)
            if missed:
                problems.append(f"mutant {mutant['name']} ({student}): {missed} did not catch it")
        extra = sorted(failed - {gid for m in bundle for gid in m["expect_fail"]})
        if extra:
            problems.append(f"{student}: {extra} failed, which none of its mutants {names} expects (a mutant leaks "
                            f"into another test; COURSE_TEST_MUTANTS_ALONE=1 grades them one by one)")
        partial = [gid for gid, (score, top) in scores.items() if 0 < score < top]
        if partial:
            problems.append(f"{student} (mutants {names}): partial scores in {partial} (test cells are "
                            f"all-or-nothing)")
    return problems


def check_pipeline(term) -> list[str]:
    a, collected, problems = term["assignment"], term["collected"], []
    if sorted(collected.students) != sorted(term["students"]):
        problems.append(f"collect: {collected.summary()}")
    if not {path for path, _ in collected.ignored} >= {"__MACOSX", "grading_instructions.txt"}:
        problems.append(f"collect must note the stray files: {collected.summary()}")
    with open(term["csv"], newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f) if r["assignment"] == a}
    if sorted(rows) != sorted(term["students"]):
        return problems + [f"export: one row per student expected, got {sorted(rows)}"]
    top = term["statuses"]["solution"].max_score
    for student, row in rows.items():
        if float(row["max_score"]) != top:
            problems.append(f"export: max_score {row}")
        if student == "broken":  # recorded, never a silent 0, and the students after it were graded
            if row["status"] != "failed-invalid-notebook" or row["score"] != "" or "broken" in term["feedback"]:
                problems.append(f"export/feedback of the broken notebook: {row}")
        elif row["status"] != "graded" or float(row["score"]) != term["statuses"][student].score:
            problems.append(f"export: {row} vs {term['statuses'][student]}")
        elif not term["feedback"][student].ok:
            problems.append(f"feedback: {term['feedback'][student]}")
    if rows["blank"]["score"] != "0.0" or not rows["blank"]["detail"].startswith("points lost in"):
        problems.append(f"export of the blank release: {rows['blank']}")
    return problems


def check_grading_time(term) -> list[str]:
    graded = {s: st.seconds for s, st in term["statuses"].items() if st.status == "graded"}
    print(f"[{term['assignment']}] seconds per submission: {graded}")
    slow = {s: t for s, t in graded.items() if t >= MAX_SECONDS_PER_SUBMISSION}
    return [f"grading took longer than {MAX_SECONDS_PER_SUBMISSION} s: {slow}"] if slow else []


TERM_CHECKS = [check_release_fails_validation, check_committed_release_is_up_to_date,
               check_source_passes_validation, check_solution_scores_full_marks, check_blank_release_scores_zero,
               check_mutants, check_pipeline, check_grading_time]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_grading_term(assignment, tmp_path):
    """One whole term per assignment (see the module docstring), then every check; fails if any check did.

    One test rather than one per check: under pytest-xdist (make test runs two workers), tests sharing an
    expensive fixture would each rebuild it on every worker.
    """
    term = _run_term(assignment, tmp_path)
    problems = [f"{check.__name__}: {problem}" for check in TERM_CHECKS for problem in check(term)]
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------ tooling: a toy course

TOY_TESTS = """
assert double(2) == 4, "double(2) should be 4"
### BEGIN HIDDEN TESTS
assert double(-3) == -6
### END HIDDEN TESTS
"""


def _toy_notebook():
    return notebook([
        markdown("# Toy assignment\n\n3 points in total."),
        locked_cell("import os\nFAST = False\nAUTOGRADE = os.environ.get('COURSE_AUTOGRADE') == '1'", "parameters",
                    tags=["parameters"]),
        answer_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION", "double"),
        make_test_cell(TOY_TESTS, "test_double", 2),
        code("if not AUTOGRADE:\n    open('weights.txt', 'w').write('fast' if FAST else 'slow')"),
        make_test_cell("assert open('weights.txt').read() in ('fast', 'slow')", "test_weights", 1),
    ])


@pytest.fixture(scope="session")
def empty_gradebook(tmp_path_factory):
    """A fresh gradebook made once (nbgrader runs the slow `alembic` command for every new one); toys copy it."""
    course = Course(workspace=tmp_path_factory.mktemp("empty") / "grading")
    course.api().gradebook.close()
    return course.workspace / "gradebook.db"


@pytest.fixture
def toy(tmp_path, monkeypatch, empty_gradebook):
    """A course with assignments toy and toy2 (same notebook), the repo's nbgrader_config.py, and cwd in it."""
    root = tmp_path / "course"
    for name in ("toy", "toy2"):
        (root / "solutions" / name).mkdir(parents=True)
        nbformat.write(_toy_notebook(), str(root / "solutions" / name / f"{name}.ipynb"))
    shutil.copy(ROOT / "nbgrader_config.py", root)
    (root / "grading").mkdir()
    shutil.copy(empty_gradebook, root / "grading" / "gradebook.db")
    monkeypatch.chdir(root)
    monkeypatch.delenv("COURSE_GRADING_DIR", raising=False)
    monkeypatch.delenv("COURSE_RELEASE_DIR", raising=False)
    return Course(root=root)


def _toy_solution(toy: Course):
    return _load(toy.source_dir / "toy" / "toy.ipynb")


def test_collect_accepts_the_documented_layouts(toy, tmp_path):
    nb = nbformat.writes(_toy_solution(toy))
    zip_path = tmp_path / "toy_download.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("download/alice_toy.ipynb", nb)  # one wrapping folder around flat LMS files
        zf.writestr("download/alice_weights.txt", "fast")
        zf.writestr("download/bob/toy (1).ipynb", nb)  # folder per student, a renamed notebook
        zf.writestr("download/bob/weights.txt", "fast")
        zf.writestr("download/carol/toy/toy.ipynb", nb)  # nbgrader's own layout
        zf.writestr("download/dave_first.ipynb", nb)  # two candidate notebooks: ambiguous
        zf.writestr("download/dave_second.ipynb", nb)
        zf.writestr("download/.DS_Store", "x")
        zf.writestr("download/notes.txt", "no student prefix")
        zf.writestr("download/marking_scheme.txt", "looks like a flat file, but no notebook comes with it")
        zf.writestr("../escape_toy.ipynb", nb)  # zip-slip attempt
        zf.writestr("download/bad id!/toy.ipynb", nb)
    report = collect(toy, zip_path)  # assignment inferred from the zip's name
    assert report.assignment == "toy" and (report.layout, report.detected) == ("generic", True)
    assert sorted(report.students) == ["alice", "bad-id", "bob", "carol"], report.summary()
    assert report.students["alice"] == ["toy.ipynb", "weights.txt"]
    assert report.students["bob"] == ["toy.ipynb", "weights.txt"]
    assert (toy.submission_dir("carol", "toy") / "toy.ipynb").is_file()
    assert "made from 'bad id!'" in " ".join(report.submissions["bad-id"].notes)
    reasons = dict(report.ignored)
    assert reasons["download/notes.txt"].startswith("does not fit the generic layout")
    assert reasons["download/.DS_Store"] == "system file"
    assert reasons["download/marking_scheme.txt"] == "no notebook from a student 'marking'"
    failed = {s: sub.status for s, sub in report.submissions.items() if sub.status != "collected"}
    assert failed == {"dave": "failed-ambiguous-notebooks", "escape": "failed-unsafe-path"}, report.summary()
    assert "'../escape_toy.ipynb'" in report.submissions["escape"].reason
    assert not (tmp_path / "escape_toy.ipynb").exists() and not toy.submission_dir("escape", "toy").exists()
    assert any("stored as 'toy.ipynb'" in note for note in report.notes)
    # a folder works too, and collecting again replaces the earlier submission
    folder = tmp_path / "plain"
    (folder / "alice").mkdir(parents=True)
    (folder / "alice" / "toy.ipynb").write_text(nb)
    again = collect(toy, folder, assignment="toy")
    assert again.students == {"alice": ["toy.ipynb"]}
    assert not (toy.submission_dir("alice", "toy") / "weights.txt").exists()
    assert any("replaced" in note for note in again.notes)


def test_collect_needs_the_assignment_when_it_cannot_tell(toy, tmp_path):
    (tmp_path / "subs" / "alice").mkdir(parents=True)
    (tmp_path / "subs" / "alice" / "notebook.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="assignment must be given"):
        collect(toy, tmp_path / "subs")


def _kernels_in(folder: Path) -> list[int]:
    """Jupyter kernels whose working directory is inside ``folder`` (other people's kernels are elsewhere)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel_launcher" in " ".join(proc.info["cmdline"] or []) and \
                    Path(proc.cwd()).is_relative_to(folder):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def test_toy_term_from_the_command_line(toy, tmp_path, capsys):
    """release -> collect -> autograde (ok, a crashing kernel, no notebook, a bad folder name; then an endless
    loop) -> feedback -> export, all through ``python -m course_lib.grading``."""
    assert main(["release", "toy"]) == 0
    solution = json.loads(nbformat.writes(_toy_solution(toy)))
    crash, endless = json.loads(json.dumps(solution)), json.loads(json.dumps(solution))
    crash["cells"][2]["source"] = "import os\nos._exit(3)"
    endless["cells"][2]["source"] = "def double(x):\n    return 2 * x\nwhile True:\n    pass"
    with zipfile.ZipFile(tmp_path / "subs.zip", "w") as zf:
        zf.writestr("crash_toy.ipynb", json.dumps(crash))  # graded first (alphabetical): must not stop the rest
        zf.writestr("ok_toy.ipynb", json.dumps(solution))
        zf.writestr("ok_weights.txt", "fast")
        zf.writestr("empty/weights.txt", "a folder with a file, but no notebook")
    assert main(["collect", str(tmp_path / "subs.zip"), "--assignment", "toy"]) == 0
    (toy.submission_dir("bad id", "toy")).mkdir(parents=True)  # made by hand, not by collect
    (tmp_path / "toy2" / "ok").mkdir(parents=True)  # ok also hands in toy2, which is never autograded
    (tmp_path / "toy2" / "ok" / "toy2.ipynb").write_text(json.dumps(solution))
    assert main(["collect", str(tmp_path / "toy2"), "--assignment", "toy2"]) == 0
    assert main(["autograde", "toy"]) == 0
    with zipfile.ZipFile(tmp_path / "late.zip", "w") as zf:  # a second download adds a student
        zf.writestr("endless_toy.ipynb", json.dumps(endless))
    assert main(["collect", str(tmp_path / "late.zip"), "--assignment", "toy"]) == 0
    assert main(["autograde", "toy", "--student", "endless", "--timeout", "15"]) == 0
    time.sleep(1)
    assert not _kernels_in(toy.root), "a killed submission left its kernel running"
    assert not (toy.autograded_dir / "endless" / "toy").exists(), "a killed run must not leave a half graded copy"
    assert main(["feedback", "toy"]) == 0
    assert (toy.feedback_dir / "ok" / "toy" / "toy.html").is_file()
    assert not (toy.feedback_dir / "endless").exists() and (toy.feedback_dir / "crash" / "toy" / "toy.html").is_file()
    assert main(["export", str(tmp_path / "grades.csv")]) == 0
    with open(tmp_path / "grades.csv", newline="") as f:
        rows = {(r["student"], r["assignment"]): r for r in csv.DictReader(f)}
    expected = {("ok", "toy"): "graded", ("crash", "toy"): "graded-partial-kernel-died",  # run again without the cell
                ("endless", "toy"): "failed-timeout", ("empty", "toy"): "failed-no-notebook",
                ("bad id", "toy"): "failed-invalid-student-id", ("ok", "toy2"): "failed-not-autograded",
                ("crash", "toy2"): "missing", ("endless", "toy2"): "missing", ("empty", "toy2"): "missing",
                ("bad id", "toy2"): "missing"}
    assert {key: row["status"] for key, row in rows.items()} == expected
    assert rows[("ok", "toy")]["score"] == "3.0" and rows[("ok", "toy")]["max_score"] == "3.0"
    assert rows[("crash", "toy")]["score"] == "0.0", "graded without the fatal cell (no weights handed in either)"
    assert all(row["score"] == "" for key, row in rows.items() if not expected[key].startswith("graded")), \
        "never a silent 0"
    assert all(row["max_score"] == "3.0" for row in rows.values())
    out = capsys.readouterr().out
    assert "failed-timeout" in out and "wrote 10 row(s)" in out


def test_autograde_sets_course_autograde_and_records_timing(toy):
    """Training cells are skipped while grading: without the submitted weights file, test_weights fails."""
    assert release(toy, "toy").ok
    folder = toy.submission_dir("noweights", "toy")
    folder.mkdir(parents=True)
    shutil.copy(toy.source_dir / "toy" / "toy.ipynb", folder)
    status = autograde_submission(toy, "toy", "noweights")
    assert status.status == "graded" and status.score == 2.0 and status.max_score == 3.0, status
    assert status.detail == "points lost in test_weights" and status.seconds > 0
    assert not (toy.autograded_dir / "noweights" / "toy" / "weights.txt").exists(), "training ran while grading"
    assert cell_scores(toy, "toy", "noweights") == {"test_double": (2.0, 2.0), "test_weights": (0.0, 1.0)}


def test_validate_source_trains_in_fast_mode_and_release_fails(toy, tmp_path):
    reports = validate_source(toy, "toy", tmp_path / "run", fast=True)
    assert [r.ok for r in reports] == [True]
    assert (tmp_path / "run" / "toy" / "weights.txt").read_text() == "fast"
    blank = tmp_path / "blank.ipynb"
    nb = _toy_solution(toy)
    nb.cells[2].source = "def double(x):\n    raise NotImplementedError()"
    nbformat.write(nb, str(blank))
    report = validate_notebook(toy, blank, invert=True)
    assert report.passed == ["test_weights"] and not report.ok  # weights.txt was written: a free point
    assert "test_double" in report.failed and "NotImplementedError" in report.errors["test_double"]


def test_command_line_help():
    import subprocess

    result = subprocess.run([sys.executable, "-m", "course_lib.grading", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0
    for command in ("release", "collect", "autograde", "feedback", "export"):
        assert command in result.stdout
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


def test_export_of_an_empty_workspace(toy, tmp_path):
    assert export_rows(toy) == []
    assert export_csv(toy, tmp_path / "grades.csv") == []
    assert (tmp_path / "grades.csv").read_text() == \
        "student,assignment,status,score,max_score,submitted_at,late,name,lms_id,detail\n"


@pytest.mark.parametrize("call, argname", [
    (lambda c, t: Course(root=t), "root"),
    (lambda c, t: Course(root=c.root, cell_timeout=0), "cell_timeout"),
    (lambda c, t: release(c, "no_such_assignment"), "assignment"),
    (lambda c, t: release(c, "Toy!"), "assignment"),
    (lambda c, t: collect(c, t / "missing.zip", assignment="toy"), "path"),
    (lambda c, t: collect(c, t, assignment="no_such_assignment"), "assignment"),
    (lambda c, t: autograde(c, "toy", submission_timeout=0), "submission_timeout"),
    (lambda c, t: autograde(c, "toy", students=["no spaces"]), "student"),
    (lambda c, t: autograde_submission(c, "toy", "../escape"), "student"),
    (lambda c, t: export_csv(c, t / "grades.txt"), "path"),
    (lambda c, t: validate_notebook(c, t / "nothing.ipynb"), "path"),
    (lambda c, t: validate_source(c, "nope", t), "assignment"),
    (lambda c, t: cell_scores(c, "toy", "nobody"), "student"),
    (lambda c, t: feedback(c, "nope"), "assignment"),
    (lambda c, t: make_test_cell("pass", "t", points=0), "points"),
    (lambda c, t: answer_cell("pass", "bad id"), "grade_id"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_names_the_argument(toy, tmp_path, call, argname):
    with pytest.raises(ValueError, match=argname):
        call(toy, tmp_path)
