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

A kernel that dies (os._exit, a crash, the memory limit) or stops answering while a cell runs does not lose the
submission: the notebook is run again in a new kernel (a fresh sandbox) without that cell, at most MAX_DEATHS
times, the cell gets an error output, and the outcome is ``graded-partial-kernel-died`` with the cell named.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import nbgrader.apps  # noqa: F401  (imported here so that the forkserver imports it once, before forking)
import safetensors.torch  # noqa: F401  (likewise: the grader's checks run in every worker; no torch op runs here,
import torch  # noqa: F401               so no thread is started before the fork)


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
    """Release the gradebook lock while nbgrader's Execute preprocessor runs the notebook (afterwards wait for the
    sandbox to be gone and clean the working folder before nbgrader writes into it again), and while the
    grader's checks judge what it computed (verdicts.ApplyVerdicts: seconds of sampling for some assignments,
    none of it touches the gradebook)."""
    from nbgrader.preprocessors import Execute

    from course_lib.grading import sandbox
    from course_lib.grading.verdicts import ApplyVerdicts

    original, original_verdicts = Execute.preprocess, ApplyVerdicts.preprocess
    removed = []

    def run_once(self, nb, resources, *args, **kwargs):
        try:
            return original(self, nb, resources, *args, **kwargs)
        finally:
            sandbox.wait_for_sandbox_exit(course, assignment, student)
            removed.extend(sandbox.clean_workdir(course.autograded_dir / student / assignment))

    def preprocess(self, nb, resources, *args, **kwargs):
        lock.release()
        try:
            return _execute_surviving_deaths(run_once, lambda: _fresh_sandbox(course, assignment, student), self, nb,
                                             resources, *args, **kwargs)
        finally:
            lock.acquire()

    def judge(self, nb, resources, *args, **kwargs):
        lock.release()
        try:
            return original_verdicts(self, nb, resources, *args, **kwargs)
        finally:
            lock.acquire()

    Execute.preprocess = preprocess  # this process grades one submission, then exits
    ApplyVerdicts.preprocess = judge
    try:
        yield removed
    finally:
        Execute.preprocess, ApplyVerdicts.preprocess = original, original_verdicts


MAX_DEATHS = 3        # kernel deaths survived per notebook (each one re-runs the notebook without the fatal cell)
DEATHS: list[str] = []  # where the kernel died, in this process (it grades one submission)
_SKIPPED = "pass  # not run again by the grader: the kernel died in this cell"


def _death_error(text: str):
    from nbformat import from_dict

    return from_dict({"output_type": "error", "ename": "DeadKernelError", "evalue": text,
                      "traceback": [f"DeadKernelError: {text}"]})


def _fresh_sandbox(course, assignment: str, student: str) -> None:
    """Before a kernel is started again for the same submission: what the last sandbox's exit removed (the folder
    of its sockets) is made again, and its pid file is forgotten (as ``sandbox.kernel_config`` does)."""
    folder = course.workspace / "sandbox" / assignment / student
    try:
        ipc_dir = json.loads((folder / "policy.json").read_text()).get("ipc_dir")
    except (OSError, ValueError):
        ipc_dir = None
    if ipc_dir:
        os.makedirs(ipc_dir, mode=0o700, exist_ok=True)
    for name in ("init.pid", "limit.txt"):
        (folder / name).unlink(missing_ok=True)


def _cell_name(cells, index: int) -> str:
    """How a cell is named in the detail: its grade_id, or its place after the previous graded cell."""
    def grade_id(cell):
        return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")

    probe = cells[index].get("metadata", {}).get("course_grading", {}).get("probe")
    if probe:
        return f"the grader's check of {probe}"
    if grade_id(cells[index]):
        return f"cell {grade_id(cells[index])}"
    before = [grade_id(c) for c in cells[:index] if grade_id(c)]
    return f"a cell after {before[-1]}" if before else "a cell before the first graded cell"


def _execute_surviving_deaths(run_once, fresh_sandbox, self, nb, resources, *args, **kwargs):
    """Run the notebook; if the kernel dies, run it again in a fresh kernel without the cell it died in.

    Tests that passed before the death pass again (and keep their points); the fatal cell gets an error output
    (a test cell dying scores 0). After MAX_DEATHS deaths, the cells not reached get an error each. Returns what
    ``Execute.preprocess`` returns.
    """
    import copy

    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    pristine, skipped = copy.deepcopy(nb), []
    while True:
        if skipped:
            fresh_sandbox()
        work = copy.deepcopy(pristine)
        for index in skipped:
            work.cells[index].source = _SKIPPED
        running = []

        def preprocess_cell(cell, res, index, _self=self):
            running[:] = [index]
            return type(_self).preprocess_cell(_self, cell, res, index)

        self.preprocess_cell = preprocess_cell
        try:
            result = run_once(self, work, resources, *args, **kwargs)
            break
        except (DeadKernelError, CellTimeoutError):  # dead, or alive but no longer answering (its output channel)
            index = running[0] if running else None
            if index is None or index in skipped or len(skipped) >= MAX_DEATHS:
                result = (work, resources)
                reached = index if index is not None else -1
                for later in work.cells[reached + 1:]:
                    if later.cell_type == "code":
                        later.outputs = [_death_error("not run: the kernel died earlier in this notebook")]
                if index is not None:
                    skipped.append(index)
                break
            skipped.append(index)
        finally:
            del self.preprocess_cell
    out_nb = result[0]
    for index in dict.fromkeys(skipped):
        cell = out_nb.cells[index]
        cell.source = pristine.cells[index].source
        cell.outputs = [_death_error("the kernel died or stopped answering while running this cell (os._exit, a "
                                     "crash, the memory limit, a broken interpreter); the notebook was run again "
                                     "in a new kernel without it")]
        if _cell_name(pristine.cells, index) not in DEATHS:
            DEATHS.append(_cell_name(pristine.cells, index))
    return result


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
    status = "graded"
    if DEATHS:
        status = "graded-partial-kernel-died"
        detail = "; ".join(filter(None, [f"the kernel died in {', '.join(DEATHS)}: graded without it", detail]))
    return {"status": status, "detail": detail, "score": score, "max_score": max_score}


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
