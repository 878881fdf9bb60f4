"""Grading the course's assignments with nbgrader: release, collect, autograde, feedback, export.

Command line (from the repo root; ``--help`` on each command):
    python -m course_lib.grading release [assignment|all]     generate assignments/<a>/, check it fails validation
    python -m course_lib.grading collect <folder or zip>      unpack submissions into grading/submitted/
    python -m course_lib.grading autograde [assignment]       grade every submission, one process per student
    python -m course_lib.grading feedback [assignment]        HTML feedback in grading/feedback/
    python -m course_lib.grading export grades.csv            one row per student x assignment, with a status

The same steps from Python: ``Course`` (where things are), ``release``, ``collect``, ``autograde``,
``feedback``, ``export_csv``. The layout itself is stated once, in nbgrader_config.py at the repo root.

Modules: course (layout, nbgrader config), cells (building nbgrader notebooks), release (generate + validate),
collect, autograde (+ _worker, the per-student process), report (feedback, CSV export). The names below are
imported on first use, so a grading worker process only loads what it needs.
"""
import importlib

_EXPORTS = {
    "Course": "course", "release": "release", "validate_notebook": "release", "validate_source": "release",
    "ReleaseReport": "release", "ValidationReport": "release", "collect": "collect", "CollectReport": "collect",
    "autograde": "autograde", "autograde_submission": "autograde", "load_statuses": "autograde",
    "SubmissionStatus": "autograde", "feedback": "report", "export_rows": "report", "export_csv": "report",
    "FeedbackResult": "report", "cell_scores": "report", "Submission": "roster", "load_roster": "roster",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'course_lib.grading' has no attribute {name!r}")
    module = importlib.import_module(f"course_lib.grading.{_EXPORTS[name]}")
    # Bind every export of that module now: importing it also bound its own name (release, collect,
    # autograde) to the submodule, and the function of the same name must win, as with a plain import.
    globals().update({key: getattr(module, key) for key, where in _EXPORTS.items() if where == _EXPORTS[name]})
    return globals()[name]


def __dir__():
    return sorted(set(globals()) | set(__all__))
