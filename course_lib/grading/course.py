"""The course directory as nbgrader sees it: where things live, and the nbgrader configuration that says so.

Glossary (nbgrader's words):
    source       solutions/<assignment>/<assignment>.ipynb, the instructor version with solutions and hidden tests
    release      assignments/<assignment>/, the student version (solutions stubbed out, hidden tests removed)
    submission   grading/submitted/<student>/<assignment>/, one student's notebook(s) plus their files
    gradebook    grading/gradebook.db, nbgrader's SQLite database of assignments, students, cells and scores
    roster       grading/collect/<assignment>.json, every student collect saw, with a status (export reads it)
    workspace    the git-ignored grading/ folder holding everything produced while grading

``nbgrader_config.py`` at the repo root is the single place that states this layout; ``Course.config()``
loads it with the workspace, release folder and cell timeout of this ``Course`` (tests use temporary folders).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path


__all__ = ["Course", "STUDENT_ID_PATTERN", "check_student_id", "check_assignment_name", "kernel_environment"]

CONFIG_FILE = "nbgrader_config.py"
STUDENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ASSIGNMENT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]*$")


# Notebooks are validated and graded on one CPU thread (unless the caller set these variables): the scores are
# the same, grading time is predictable, and on a busy machine a multi-threaded torch can run 20x slower.
KERNEL_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def kernel_environment() -> dict[str, str]:
    """Variables for the processes that execute notebooks (their kernels inherit them)."""
    return {key: os.environ.get(key, value) for key, value in KERNEL_THREADS.items()}


def check_student_id(student: str) -> None:
    if not isinstance(student, str) or not STUDENT_ID_PATTERN.match(student):
        raise ValueError(f"student must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or "
                         f"digit), got {student!r}")


def check_assignment_name(assignment: str) -> None:
    if not isinstance(assignment, str) or not ASSIGNMENT_PATTERN.match(assignment):
        raise ValueError(f"assignment must be a lower-case name like 'a1_vae', got {assignment!r}")


def _find_root() -> Path:
    """The folder holding nbgrader_config.py: the working directory, else the repo this package lives in."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ValueError(f"root must be a folder holding {CONFIG_FILE}; none in {Path.cwd()} or the package's repo")


@contextlib.contextmanager
def patched_environ(values: dict[str, str | None]):
    """Set (or, for None, remove) environment variables inside the block; restore them afterwards."""
    old = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _put_scripts_on_path() -> None:
    """nbgrader creates the gradebook by running the ``alembic`` command: find it next to this interpreter
    even when the virtual environment is not activated (``.venv/bin/python -m course_lib.grading``)."""
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


@dataclass
class Course:
    """One nbgrader course directory plus one grading workspace.

    root          the repo (holds nbgrader_config.py, solutions/, assignments/); found automatically if None
    workspace     grading workspace; default: $COURSE_GRADING_DIR, else <root>/grading
    release_dir   where releases are generated; default: $COURSE_RELEASE_DIR, else <root>/assignments
    cell_timeout  seconds one notebook cell may run (validate, autograde); default: $COURSE_CELL_TIMEOUT or 120
    """
    root: str | os.PathLike | None = None
    workspace: str | os.PathLike | None = None
    release_dir: str | os.PathLike | None = None
    cell_timeout: int | None = None
    _config: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        root = _find_root() if self.root is None else Path(self.root)
        if not (root / CONFIG_FILE).is_file():
            raise ValueError(f"root must be a folder holding {CONFIG_FILE}, got {str(root)!r}")
        self.root = root.resolve()
        self.workspace = Path(self.workspace or os.environ.get("COURSE_GRADING_DIR") or root / "grading").resolve()
        self.release_dir = Path(self.release_dir or os.environ.get("COURSE_RELEASE_DIR")
                                or root / "assignments").resolve()
        if self.cell_timeout is None:
            self.cell_timeout = int(os.environ.get("COURSE_CELL_TIMEOUT") or 120)
        # (course_lib._checks would do, but it imports torch, which every grading worker would then pay for)
        if isinstance(self.cell_timeout, bool) or not isinstance(self.cell_timeout, int) or self.cell_timeout < 1:
            raise ValueError(f"cell_timeout must be an integer >= 1 (seconds), got {self.cell_timeout!r}")

    # ------------------------------------------------------------------------------------------ locations
    @property
    def source_dir(self) -> Path:
        return self.root / "solutions"

    @property
    def submitted_dir(self) -> Path:
        return self.workspace / "submitted"

    @property
    def autograded_dir(self) -> Path:
        return self.workspace / "autograded"

    @property
    def feedback_dir(self) -> Path:
        return self.workspace / "feedback"

    @property
    def status_file(self) -> Path:
        return self.workspace / "status.json"

    @property
    def collect_dir(self) -> Path:
        """Rosters of what collect saw (<assignment>.json) and extra files kept aside (<assignment>/extras/)."""
        return self.workspace / "collect"

    def roster_file(self, assignment: str) -> Path:
        return self.collect_dir / f"{assignment}.json"

    def assignments(self) -> list[str]:
        """Every solutions/<name>/ that holds <name>.ipynb, sorted (a1_vae, a2_attention, ...)."""
        return sorted(p.parent.name for p in self.source_dir.glob("*/*.ipynb") if p.stem == p.parent.name)

    def check_assignment(self, assignment: str) -> None:
        check_assignment_name(assignment)
        if assignment not in self.assignments():
            raise ValueError(f"assignment must be one of {self.assignments()}, got {assignment!r}")

    def submission_dir(self, student: str, assignment: str) -> Path:
        return self.submitted_dir / student / assignment

    def submitted_students(self, assignment: str) -> list[str]:
        folder = self.submitted_dir
        return sorted(p.parent.name for p in folder.glob(f"*/{assignment}") if p.is_dir()) if folder.is_dir() else []

    # ------------------------------------------------------------------------------------------- nbgrader
    def environment(self) -> dict[str, str]:
        """The variables nbgrader_config.py reads; child processes get them so they see the same course."""
        return {"COURSE_GRADING_DIR": str(self.workspace), "COURSE_RELEASE_DIR": str(self.release_dir),
                "COURSE_CELL_TIMEOUT": str(self.cell_timeout),
                "COURSE_GRADING_TOOL": "1"}  # course_lib.grading runs nbgrader (plain.py: else it refuses)

    def config(self):
        """nbgrader_config.py, loaded for this course's workspace, release folder and timeout (a traitlets Config)."""
        from traitlets.config.loader import PyFileConfigLoader

        if self._config is None:
            with patched_environ(self.environment()):
                self._config = PyFileConfigLoader(CONFIG_FILE, path=str(self.root)).load_config()
        return self._config

    def api(self, extra_config=None):
        """An ``nbgrader.apps.NbGraderAPI`` on this course (creates the workspace folder if needed).

        extra_config  a traitlets Config merged over nbgrader_config.py for this API only (the autograde worker
                      adds its sandboxed kernel and its sanitising preprocessors this way)
        """
        import copy
        import logging

        from nbgrader.apps import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory

        _put_scripts_on_path()
        self.workspace.mkdir(parents=True, exist_ok=True)
        config = self.config()
        if extra_config is not None:
            config = copy.deepcopy(config)
            config.merge(extra_config)
        coursedir = CourseDirectory(config=config)
        api = NbGraderAPI(coursedir=coursedir, config=config)
        api.log_level = logging.WARNING
        return api
