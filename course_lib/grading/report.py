"""Feedback for the students and the grade export for the instructor.

``export_csv`` writes one row per student x assignment with an explicit status, never a silent 0:
    graded              autograded; score and max_score come from the gradebook (manual changes included)
    failed-<reason>     the submission could not be graded (see ``course_lib.grading.autograde``), or collect
                        could not store it (see ``course_lib.grading.collect``); score empty
    failed-not-autograded   collected but not autograded yet; score empty
    failed-submission-removed   collect stored it, but grading/submitted/<student>/<assignment> is gone
    missing             no submission from this student; score empty
Students are everyone in the gradebook, in a collect roster, or with a collected submission; assignments are
those in the gradebook, with a roster or with submissions. Every roster entry has its row, so the export is
never shorter than what collect saw. ``submitted_at``/``late`` are what the LMS download said (empty if it did
not say); ``name``/``lms_id`` identify the student in the LMS; ``detail`` joins the grading detail and the
notes of collect.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from course_lib._io import atomic_write_bytes
from course_lib.grading.autograde import load_statuses
from course_lib.grading.cells import grade_cells
from course_lib.grading.course import Course
from course_lib.grading.roster import load_roster

__all__ = ["FeedbackResult", "feedback", "cell_scores", "export_rows", "export_csv", "CSV_COLUMNS"]

CSV_COLUMNS = ["student", "assignment", "status", "score", "max_score", "submitted_at", "late", "name", "lms_id",
               "detail"]


@dataclass
class FeedbackResult:
    assignment: str
    student: str
    ok: bool
    detail: str  # the HTML file(s), or the error


def feedback(course: Course, assignment: str | None = None) -> list[FeedbackResult]:
    """Generate HTML feedback for every graded submission (one student at a time: one failure stays local)."""
    if assignment is not None:
        course.check_assignment(assignment)
    api = course.api()
    statuses = load_statuses(course)
    results = []
    for name in course.assignments() if assignment is None else [assignment]:
        students = sorted(p.parent.name for p in course.autograded_dir.glob(f"*/{name}") if p.is_dir())
        for student in students:
            recorded = statuses.get(name, {}).get(student)
            if recorded is not None and not recorded.status.startswith("graded"):
                continue  # a failed run's leftovers; the export shows why
            result = api.generate_feedback(name, student, force=True)
            files = sorted(str(p) for p in (course.feedback_dir / student / name).glob("*.html"))
            ok = bool(result.get("success")) and bool(files)
            detail = ", ".join(files) if ok else (result.get("error") or result.get("log") or "no HTML written")
            results.append(FeedbackResult(name, student, ok, detail.strip().splitlines()[-1] if not ok else detail))
    return results


def cell_scores(course: Course, assignment: str, student: str) -> dict[str, tuple[float, float]]:
    """grade_id -> (score, max_score) of every graded cell of one submission, from the gradebook."""
    from nbgrader.api import MissingEntry

    scores = {}
    with course.api().gradebook as gb:
        try:
            submission = gb.find_submission(assignment, student)
        except MissingEntry:
            raise ValueError(f"student {student!r} has no submission of {assignment!r} in the gradebook") from None
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                scores[grade.name] = (float(grade.score), float(grade.max_score))
    return scores


def _source_max_score(course: Course, assignment: str) -> float | None:
    import nbformat

    notebooks = sorted((course.source_dir / assignment).glob("*.ipynb"))
    if not notebooks:
        return None
    return float(sum(sum(grade_cells(nbformat.read(str(p), as_version=4)).values()) for p in notebooks))


def _rosters(course: Course) -> dict:
    rosters = {p.stem: load_roster(course, p.stem) for p in course.collect_dir.glob("*.json")} \
        if course.collect_dir.is_dir() else {}
    return {a: r for a, r in rosters.items() if r}


def _row_status(course: Course, assignment: str, student: str, recorded, entry) -> tuple[str, str]:
    """(status, detail) of one student x assignment, before the gradebook is asked for the score."""
    submitted = course.submission_dir(student, assignment).is_dir()
    autograded = (course.autograded_dir / student / assignment).is_dir()
    if entry is not None and entry.status != "collected":
        return entry.status, entry.reason
    if recorded is not None:
        return recorded.status, recorded.detail
    if autograded:
        return "graded", "autograded outside course_lib.grading"
    if submitted:
        return "failed-not-autograded", "collected; run autograde"
    if entry is not None:
        return "failed-submission-removed", f"collected, but {course.submission_dir(student, assignment)} is gone"
    return "missing", ""


def export_rows(course: Course) -> list[dict]:
    """The rows ``export_csv`` writes, as dicts with the keys of CSV_COLUMNS (score None unless graded)."""
    from nbgrader.api import MissingEntry

    statuses = load_statuses(course)
    rosters = _rosters(course)
    with course.api().gradebook as gb:
        max_scores = {a.name: float(a.max_score) for a in gb.assignments}
        students = {s.id for s in gb.students}
        students |= {p.name for p in course.submitted_dir.glob("*") if p.is_dir()}
        students |= {s for per in statuses.values() for s in per}
        students |= {s for roster in rosters.values() for s in roster}
        assignments = set(max_scores) | set(statuses) | set(rosters)
        assignments |= {p.name for p in course.submitted_dir.glob("*/*") if p.is_dir()}
        rows = []
        for assignment in sorted(assignments):
            max_score = max_scores.get(assignment) or _source_max_score(course, assignment)
            for student in sorted(students):
                entry = rosters.get(assignment, {}).get(student)
                status, detail = _row_status(course, assignment, student, statuses.get(assignment, {}).get(student),
                                             entry)
                row = {"student": student, "assignment": assignment, "status": status, "score": None,
                       "max_score": max_score, "submitted_at": None, "late": None, "name": None, "lms_id": None,
                       "detail": detail}
                if status.startswith("graded"):  # graded, graded-partial-kernel-died
                    try:
                        row["score"] = float(gb.find_submission(assignment, student).score)
                    except MissingEntry:
                        row["status"], row["detail"] = "failed-not-in-gradebook", "autograded, but no gradebook entry"
                if entry is not None:
                    row.update(submitted_at=entry.submitted_at, late=entry.late, name=entry.name or None,
                               lms_id=entry.lms_id or None)
                    row["detail"] = "; ".join(filter(None, [row["detail"]] + [f"collect: {n}" for n in entry.notes]))
                rows.append(row)
    return rows


def export_csv(course: Course, path) -> list[dict]:
    """Write the grades to the CSV file ``path`` (atomically); returns the rows."""
    path = Path(path)
    if path.suffix.lower() != ".csv" or path.is_dir():
        raise ValueError(f"path must be a .csv file name, got {str(path)!r}")
    rows = export_rows(course)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else {True: "yes", False: "no"}.get(v, v) if isinstance(v, bool) else v)
                         for k, v in row.items()})
    atomic_write_bytes(path, buffer.getvalue().encode())
    return rows
