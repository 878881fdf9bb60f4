"""The roster of an assignment: every student ``collect`` saw, with a status, kept in
grading/collect/<assignment>.json. ``export`` writes a row for every entry, so a submission that reached
collect never disappears from the grade sheet, even when it could not be stored or graded.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from course_lib.grading.course import Course

__all__ = ["Submission", "load_roster", "save_roster"]


@dataclass
class Submission:
    """One student's entry in the roster of an assignment."""
    student: str
    status: str = "collected"       # or failed-<reason>
    reason: str = ""                # why it failed ("" if collected)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # paths in the download
    lms: str = ""
    lms_id: str = ""
    name: str = ""
    submitted_at: str | None = None
    late: bool | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Submission":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})



def load_roster(course: Course, assignment: str) -> dict[str, Submission]:
    """student -> Submission: everyone collect has seen for ``assignment`` (empty before the first collect)."""
    path = course.roster_file(assignment)
    if not path.is_file():
        return {}
    return {s: Submission.from_dict(d) for s, d in json.loads(path.read_text()).items()}


def save_roster(course: Course, assignment: str, seen: dict[str, Submission]) -> None:
    from course_lib._io import atomic_write_json

    roster = load_roster(course, assignment)
    roster.update(seen)
    atomic_write_json(course.roster_file(assignment), {s: asdict(sub) for s, sub in sorted(roster.items())})
