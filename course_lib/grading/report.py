"""Feedback for the students and the grade export for the instructor.

``export_csv`` writes one row per student x assignment with an explicit status, never a silent 0:
    graded              autograded; score and max_score come from the gradebook (manual changes included)
    failed-<reason>     the submission could not be graded (see ``course_lib.grading.autograde``); score empty
    failed-not-autograded   collected but not autograded yet; score empty
    missing             no submission from this student; score empty
Students are everyone in the gradebook or with a collected submission; assignments are those in the gradebook
or with submissions.
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

__all__ = ["FeedbackResult", "feedback", "cell_scores", "export_rows", "export_csv", "CSV_COLUMNS"]

CSV_COLUMNS = ["student", "assignment", "status", "score", "max_score", "detail"]


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
            if recorded is not None and recorded.status != "graded":
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


def export_rows(course: Course) -> list[dict]:
    """The rows ``export_csv`` writes, as dicts with the keys of CSV_COLUMNS (score None unless graded)."""
    from nbgrader.api import MissingEntry

    statuses = load_statuses(course)
    with course.api().gradebook as gb:
        max_scores = {a.name: float(a.max_score) for a in gb.assignments}
        students = {s.id for s in gb.students}
        students |= {p.name for p in course.submitted_dir.glob("*") if p.is_dir()}
        students |= {s for per in statuses.values() for s in per}
        assignments = set(max_scores) | set(statuses)
        assignments |= {p.name for p in course.submitted_dir.glob("*/*") if p.is_dir()}
        rows = []
        for assignment in sorted(assignments):
            max_score = max_scores.get(assignment) or _source_max_score(course, assignment)
            for student in sorted(students):
                row = {"student": student, "assignment": assignment, "status": "missing", "score": None,
                       "max_score": max_score, "detail": ""}
                recorded = statuses.get(assignment, {}).get(student)
                submitted = course.submission_dir(student, assignment).is_dir()
                autograded = (course.autograded_dir / student / assignment).is_dir()
                if recorded is not None:
                    row["status"], row["detail"] = recorded.status, recorded.detail
                elif autograded:
                    row["status"], row["detail"] = "graded", "autograded outside course_lib.grading"
                elif submitted:
                    row["status"], row["detail"] = "failed-not-autograded", "collected; run autograde"
                if row["status"] == "graded":
                    try:
                        row["score"] = float(gb.find_submission(assignment, student).score)
                    except MissingEntry:
                        row["status"], row["detail"] = "failed-not-in-gradebook", "autograded, but no gradebook entry"
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
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_bytes(path, buffer.getvalue().encode())
    return rows
