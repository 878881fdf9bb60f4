"""Worker: autograde ONE submission with nbgrader, in a process of its own, and write the outcome as JSON.

``course_lib.grading.autograde`` runs ``run(job)`` in a new process for every submission. On Linux and macOS
that process is forked from a multiprocessing *forkserver* that imported nbgrader once (about 2 s of imports
saved per submission); elsewhere it is spawned. Either way it shares no state with other submissions: it
gets the job's environment (COURSE_GRADING_DIR, ..., COURSE_AUTOGRADE=1, COURSE_SANDBOX), working directory
and log file. Its kernel runs in the sandbox of ``course_lib.grading.sandbox``.

One gradebook for many workers: nbgrader's SQLite gradebook is written by several worker processes when
``autograde`` runs jobs in parallel. SQLite alone would answer "database is locked" when two transactions
that read then write meet, so every worker holds an exclusive file lock (grading/gradebook.lock) while
nbgrader touches the gradebook, that is for the whole ``api.autograde`` call except the execution of the
notebook (``Execute.preprocess``, the long part), during which the lock is released. Scores are read back
under the lock too. Gradebook phases are short (well under a second), so N workers still grade in parallel.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import nbgrader.apps  # noqa: F401  (imported here so that the forkserver imports it once, before forking)


def _timed_out_cells(course, assignment: str, student: str) -> list[str]:
    import nbformat

    names = []
    for path in sorted((course.autograded_dir / student / assignment).glob("*.ipynb")):
        for cell in nbformat.read(str(path), as_version=4).cells:
            if any(out.get("ename") == "CellTimeoutError" for out in cell.get("outputs", [])):
                names.append(cell.metadata.get("nbgrader", {}).get("grade_id", cell.get("id", "?")))
    return names


class GradebookLock:
    """An exclusive ``flock`` on <workspace>/gradebook.lock, released and taken again around notebook execution."""

    def __init__(self, course):
        self.path = course.workspace / "gradebook.lock"
        self.fd = None

    def acquire(self) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing drops the lock
        self.fd = None


@contextlib.contextmanager
def _unlocked_while_executing(lock: GradebookLock, course, assignment: str, student: str):
    """Release the gradebook lock while nbgrader's Execute preprocessor runs the notebook; afterwards wait for the
    sandbox to be gone and clean the working folder before nbgrader writes into it again."""
    from nbgrader.preprocessors import Execute

    from course_lib.grading import sandbox

    original = Execute.preprocess
    removed = []

    def preprocess(self, nb, resources, *args, **kwargs):
        lock.release()
        try:
            return original(self, nb, resources, *args, **kwargs)
        finally:
            sandbox.wait_for_sandbox_exit(course, assignment, student)
            removed.extend(sandbox.clean_workdir(course.autograded_dir / student / assignment))
            lock.acquire()

    Execute.preprocess = preprocess  # this process grades one submission, then exits
    try:
        yield removed
    finally:
        Execute.preprocess = original


def grade(assignment: str, student: str) -> dict:
    from course_lib.grading.course import Course

    course = Course()
    with GradebookLock(course) as lock, _unlocked_while_executing(lock, course, assignment, student) as removed:
        outcome = _grade(course, assignment, student)
    if removed:
        outcome["detail"] = "; ".join(filter(None, [outcome.get("detail"),
                                                    f"removed from the working folder: {', '.join(removed)}"]))
    return outcome


def _grade(course, assignment: str, student: str) -> dict:
    from traitlets.config import Config

    from course_lib.grading import sandbox, sanitize

    extra = Config()
    extra.merge(sandbox.kernel_config(course, assignment, student))  # where and how student code runs
    extra.merge(sanitize.autograde_config(course, assignment))        # what is done to the notebook around it
    extra.merge(sanitize.submission_config(course, assignment, student))  # extra files kept out (torch.py, ...)
    api = course.api(extra_config=extra)
    result = api.autograde(assignment, student, force=True, create=True)
    if not result.get("success"):
        text = (result.get("error") or "") + (result.get("log") or "")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        died = [line for line in lines if "DeadKernelError" in line or "Kernel died" in line]
        errors = [line for line in lines if "Error" in line and not line.startswith(("[ERROR]", "File "))]
        if died:
            return {"status": "failed-kernel-died", "detail": died[-1][:300]}
        return {"status": "failed-autograde-error", "detail": (errors or lines or [""])[-1][:300]}
    with api.gradebook as gb:
        submission = gb.find_submission(assignment, student)
        score, max_score = float(submission.score), float(submission.max_score)
        lost = sorted(g.name for nb in submission.notebooks for g in nb.grades if g.score < g.max_score)
    timed_out = _timed_out_cells(course, assignment, student)
    findings = sanitize.findings(course, assignment, student)  # e.g. "test cell test_kl was edited: restored"
    detail = "; ".join(([f"points lost in {', '.join(lost)}"] if lost else [])
                       + ([f"cell timeout in {', '.join(timed_out)}"] if timed_out else []) + findings)
    return {"status": "graded", "detail": detail, "score": score, "max_score": max_score}


def run(job: dict) -> None:
    """Entry point of the worker process: job = {root, env, log, result, assignment, student}."""
    os.setsid()  # a process group of its own: the parent can kill it with everything it started
    os.chdir(job["root"])
    os.environ.clear()
    os.environ.update(job["env"])
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)  # everything nbgrader and the kernel print goes to the submission's log
    os.dup2(log, 2)
    outcome = grade(job["assignment"], job["student"])
    Path(job["result"]).write_text(json.dumps(outcome))
