"""Worker: autograde ONE submission with nbgrader, in a process of its own, and write the outcome as JSON.

``course_lib.grading.autograde`` runs ``run(job)`` in a new process for every submission. On Linux and macOS
that process is forked from a multiprocessing *forkserver* that imported nbgrader once (about 2 s of imports
saved per submission); elsewhere it is spawned. Either way it shares no state with other submissions: it
gets the job's environment (COURSE_GRADING_DIR, ..., COURSE_AUTOGRADE=1), working directory and log file.
"""
from __future__ import annotations

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


def grade(assignment: str, student: str) -> dict:
    from traitlets.config import Config

    from course_lib.grading import sandbox, sanitize
    from course_lib.grading.course import Course

    course = Course()
    extra = Config()
    extra.merge(sandbox.kernel_config(course, assignment, student))  # where and how student code runs
    extra.merge(sanitize.autograde_config(course, assignment))        # what is done to the notebook around it
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
