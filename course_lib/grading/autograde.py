"""Autograding every submission of an assignment, each in its own process, several at a time.

Per-student isolation: every submission is graded by a new worker process (``course_lib.grading._worker``,
which calls nbgrader's ``autograde`` for that one student) with COURSE_AUTOGRADE=1 in its environment, so the
notebooks skip training and grade the weights the student submitted. Whatever a submission does (invalid
JSON, a crashing kernel, an endless loop), the worker's failure is recorded and the next student is graded.

Two time limits:
    cell_timeout        (nbgrader_config.py, default 120 s) a cell running longer is interrupted and, if it is
                        a test cell, scores 0; the notebook continues with its next cell
    submission_timeout  (default 600 s) the whole worker is killed, with its kernel, and the submission is
                        recorded as failed-timeout

Statuses (saved in grading/status.json, read by ``export``): ``graded``; ``graded-partial-kernel-died`` (the
kernel died in a cell: the notebook was run again in a new kernel without that cell, tests passed elsewhere keep
their points, the detail names the cell; see ``_worker``); ``failed-<reason>`` with reason
no-notebook, invalid-notebook, timeout, kernel-died, autograde-error, worker-crashed or invalid-student-id.
A failure never becomes a silent 0. Each status also records ``isolation``: the sandbox level and limits its
kernel ran with (``course_lib.grading.sandbox``: namespaces, or unsandboxed when the instructor allowed it).

Parallel grading: ``jobs`` workers at once (default: the number of CPU cores; kernels use one thread each).
Each worker is still one process per submission with its own sandboxed kernel; the gradebook stays one
consistent SQLite file because workers take turns on it (see ``_worker``: a file lock around nbgrader's
gradebook phases, released while the notebook executes); status.json is written by this process only.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from course_lib._checks import check_float
from course_lib._io import atomic_write_json
from course_lib.grading import sandbox
from course_lib.grading.course import STUDENT_ID_PATTERN, Course, check_student_id, kernel_environment
from course_lib.grading.sandbox import SETTINGS_ENV, SandboxSettings, resolve_settings

__all__ = ["SubmissionStatus", "autograde", "autograde_submission", "load_statuses", "forget_status"]

DEFAULT_SUBMISSION_TIMEOUT = 600.0


@dataclass
class SubmissionStatus:
    """Outcome of autograding one submission. ``score``/``max_score`` are None unless status starts with "graded"."""
    assignment: str
    student: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    score: float | None = None
    max_score: float | None = None
    isolation: str = ""  # how the kernel was sandboxed and limited ("" if nothing ran)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SubmissionStatus":
        return cls(**{key: d.get(key) for key in ("assignment", "student", "status", "detail", "seconds",
                                                   "score", "max_score")}, isolation=d.get("isolation") or "")


def load_statuses(course: Course) -> dict[str, dict[str, SubmissionStatus]]:
    """assignment -> student -> last recorded SubmissionStatus (empty if nothing was autograded yet)."""
    if not course.status_file.is_file():
        return {}
    raw = json.loads(course.status_file.read_text())
    return {a: {s: SubmissionStatus.from_dict(d) for s, d in per.items()} for a, per in raw.items()}


_STATUS_LOCK = threading.Lock()  # the grading threads of this process; the file lock: other processes


@contextlib.contextmanager
def _status_file_locked(course: Course):
    course.workspace.mkdir(parents=True, exist_ok=True)
    with _STATUS_LOCK, open(course.workspace / "status.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _save_status(course: Course, status: SubmissionStatus) -> None:
    with _status_file_locked(course):
        raw = json.loads(course.status_file.read_text()) if course.status_file.is_file() else {}
        raw.setdefault(status.assignment, {})[status.student] = status.to_dict()
        atomic_write_json(course.status_file, raw)


def forget_status(course: Course, assignment: str, student: str) -> None:
    """Drop a recorded status (a newly collected submission has not been graded yet)."""
    with _status_file_locked(course):
        if not course.status_file.is_file():
            return
        raw = json.loads(course.status_file.read_text())
        if raw.get(assignment, {}).pop(student, None) is not None:
            atomic_write_json(course.status_file, raw)


def _precheck(course: Course, assignment: str, student: str) -> str | None:
    """A reason to fail without running anything (missing or unreadable notebook), else None."""
    import nbformat

    folder = course.submission_dir(student, assignment)
    expected = sorted(p.name for p in (course.source_dir / assignment).glob("*.ipynb"))
    present = [name for name in expected if (folder / name).is_file()]
    if not present:
        return f"no-notebook: expected {expected} in {folder}"
    for name in present:
        try:
            nbformat.validate(nbformat.read(str(folder / name), as_version=4))
        except Exception as err:  # JSONDecodeError, ValidationError, UnicodeDecodeError, ...
            return f"invalid-notebook: {name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return None


def _kill_tree(pid: int) -> None:
    """Kill a worker and every process it started (its kernel runs in a session of its own)."""
    try:
        import psutil

        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
    except Exception:  # psutil missing or the process is gone: fall back to the worker's process group
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


_START_LOCK = threading.Lock()  # _caller_script_hidden swaps a global: one worker start at a time


@contextlib.contextmanager
def _caller_script_hidden():
    """While a worker starts, hide the caller's __main__ from multiprocessing.

    Workers need nothing from it, and multiprocessing would otherwise re-run the caller's script in every
    worker (a script without an ``if __name__ == "__main__":`` guard would then start grading again).
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _process_context():
    """forkserver where there is one (workers start without re-importing nbgrader, torch, diffusers), else spawn."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # the worker's modules, and the libraries the grader's checks compute references with (diffusers and peft take
    # ~5-15 s to import, scikit-learn's models ~1.5 s: once per run instead of once per submission; a missing one
    # is skipped)
    context.set_forkserver_preload(["course_lib.grading._worker", "diffusers", "peft",
                                    "diffusers.models.unets.unet_2d_condition", "sklearn.linear_model",
                                    "sklearn.decomposition"])
    return context


def _run_worker(course: Course, assignment: str, student: str, timeout: float, log_path: Path,
                settings: SandboxSettings) -> dict:
    """Grade one submission in a new process; returns its result dict, or {"status": "failed-..."}."""
    from course_lib.grading import _worker

    env = {**os.environ, **kernel_environment(), **course.environment(), "COURSE_AUTOGRADE": "1",
           SETTINGS_ENV: json.dumps(settings.to_dict())}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="autograde-") as scratch:
        result_path = Path(scratch) / "result.json"
        job = {"root": str(course.root), "env": env, "log": str(log_path), "result": str(result_path),
               "assignment": assignment, "student": student}
        proc = _process_context().Process(target=_worker.run, args=(job,), name=f"autograde-{student}")
        (course.workspace / "sandbox" / assignment / student / "init.pid").unlink(missing_ok=True)  # a stale one
        with _START_LOCK, _caller_script_hidden():
            proc.start()
        proc.join(timeout)
        killed = proc.is_alive()
        if killed:
            _kill_tree(proc.pid)
            proc.join()
        sandbox.wait_for_sandbox_exit(course, assignment, student)  # (a killed worker could not clean up)
        if killed:
            shutil.rmtree(course.autograded_dir / student / assignment, ignore_errors=True)  # half-written
            return {"status": "failed-timeout", "detail": f"killed after {timeout:.0f} s"}
        if result_path.is_file():
            return json.loads(result_path.read_text())
        lines = log_path.read_text(errors="replace").strip().splitlines() if log_path.is_file() else []
        return {"status": "failed-worker-crashed",
                "detail": f"exit code {proc.exitcode}: {lines[-1][:300] if lines else 'no log'}"}


def autograde_submission(course: Course, assignment: str, student: str,
                         submission_timeout: float = DEFAULT_SUBMISSION_TIMEOUT,
                         sandbox: SandboxSettings | None = None) -> SubmissionStatus:
    """Autograde one collected submission in a worker process (its kernel sandboxed) and record its status.

    sandbox  isolation and limits (default ``SandboxSettings()``: namespaces required, 4 GiB, ...); raises
             ValueError if namespaces are unavailable and ``sandbox.allow_unsandboxed`` is not set
    """
    course.check_assignment(assignment)
    check_student_id(student)
    check_float("submission_timeout", submission_timeout, minimum=1.0)
    if not isinstance(sandbox, SandboxSettings) or sandbox.level is None:
        sandbox = resolve_settings(course, sandbox)
    start = time.perf_counter()
    problem = _precheck(course, assignment, student)
    isolation = ""
    if problem is not None:
        reason, detail = problem.split(": ", 1)
        result = {"status": f"failed-{reason}", "detail": detail}
    else:
        log_path = course.workspace / "logs" / assignment / f"{student}.log"
        result = _run_worker(course, assignment, student, submission_timeout, log_path, sandbox)
        isolation = sandbox.describe()
    status = SubmissionStatus(assignment, student, result["status"], result.get("detail", ""),
                              round(time.perf_counter() - start, 2), result.get("score"), result.get("max_score"),
                              isolation)
    _save_status(course, status)
    return status


def _ensure_in_gradebook(course: Course, assignment: str) -> None:
    """Autograding needs the assignment's cells in the gradebook; a fresh workspace gets them from the source."""
    from nbgrader.api import MissingEntry

    from course_lib.grading._worker import GradebookLock

    with GradebookLock(course):  # another autograde may be running
        with course.api().gradebook as gb:
            try:
                known = bool(gb.find_assignment(assignment).notebooks)
            except MissingEntry:
                known = False
        if known:
            return
        with tempfile.TemporaryDirectory(prefix="gradebook-sync-") as scratch:  # same cells, release thrown away
            synced = Course(root=course.root, workspace=course.workspace, release_dir=scratch,
                            cell_timeout=course.cell_timeout)
            result = synced.api().generate_assignment(assignment, force=True, create=True)
    if not result.get("success"):
        raise ValueError(f"assignment {assignment!r} could not be registered in the gradebook:\n"
                         f"{result.get('error') or result.get('log')}")


def _check_jobs(jobs) -> int:
    if jobs is None:
        return os.cpu_count() or 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 64:
        raise ValueError(f"jobs must be an integer in [1, 64] (submissions graded at once), got {jobs!r}")
    return jobs


def autograde(course: Course, assignment: str | None = None, students: list[str] | None = None,
              submission_timeout: float = DEFAULT_SUBMISSION_TIMEOUT, jobs: int | None = None,
              sandbox: SandboxSettings | None = None) -> list[SubmissionStatus]:
    """Autograde every collected submission (of ``assignment``, or of every assignment), with one progress bar.

    jobs     submissions graded at once (default: the number of CPU cores)
    sandbox  isolation and limits of the kernels (see ``autograde_submission``)
    Returns the statuses in order: assignment, then student.
    """
    assignments = course.assignments() if assignment is None else [assignment]
    if assignment is not None:
        course.check_assignment(assignment)
    for student in students or []:
        check_student_id(student)
    check_float("submission_timeout", submission_timeout, minimum=1.0)
    jobs = _check_jobs(jobs)
    todo = [(name, s) for name in assignments for s in course.submitted_students(name)
            if students is None or s in students]
    if not todo:
        return []
    settings = resolve_settings(course, sandbox)  # before anything runs: refuse here if it cannot isolate
    for name in sorted({name for name, _ in todo}):
        _ensure_in_gradebook(course, name)

    def grade(task: tuple[str, str]) -> SubmissionStatus:
        name, student = task
        if not STUDENT_ID_PATTERN.match(student):  # a folder made by hand: record it, grade the others
            status = SubmissionStatus(name, student, "failed-invalid-student-id",
                                      "rename the folder: letters, digits, '.', '_' or '-'")
            _save_status(course, status)
            return status
        return autograde_submission(course, name, student, submission_timeout, settings)

    desc = f"autograde {assignment or 'all'} ({min(jobs, len(todo))} at once)"
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="autograde") as pool, \
            tqdm(total=len(todo), desc=desc, unit="submission") as bar:
        futures = [pool.submit(grade, task) for task in todo]
        for _ in as_completed(futures):
            bar.update(1)
        return [future.result() for future in futures]
