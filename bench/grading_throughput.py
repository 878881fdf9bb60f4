"""Autograding throughput: submissions per minute with 1 and with 2 parallel jobs, kernels sandboxed.

Courses, each graded in a temporary workspace (nothing in grading/ is touched):
    toy      a notebook without torch (course_lib.grading.cells): the fixed cost of one submission
             (worker process, nbgrader, sandbox, kernel start) with almost no student code
    a1_vae   the real assignment: its source notebook plus the weights of a FAST training run, handed in by
             every student (torch import, data loading, held-out reconstruction test)
    a2_attention ... a5_lora   the same for every other assignment in solutions/
Every student hands in the same correct notebook; each run grades all of them again (force) and checks that
each one got full marks. Wall-clock time of ``autograde(course, assignment, jobs=J)`` is what is reported.

    .venv/bin/python bench/grading_throughput.py                         # toy and a1_vae, 6 students, jobs 1 and 2
    .venv/bin/python bench/grading_throughput.py --courses toy --students 10 --jobs 1 2 4
    .venv/bin/python bench/grading_throughput.py --courses a1_vae a2_attention a3_ddpm a4_latent_diffusion a5_lora \
        --students 4 --jobs 2                                             # the figure quoted for issue 13
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: the figures are printed at the end
# Every student hands in the same weights here: remembered verdicts (verdicts.Check(reads=...)) would let all but
# the first skip their judge, where real students hand in different files. Per-machine caches (a4's judge CNN)
# stay on: they are built once per machine in real use too.
os.environ["COURSE_GRADER_REMEMBER_VERDICTS"] = "0"

import nbformat  # noqa: E402

from course_lib.grading import Course, autograde, validate_source  # noqa: E402
from course_lib.grading.cells import answer_cell, code, locked_cell, markdown, notebook, test_cell  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if (p / f"{p.name}.ipynb").is_file())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--courses", nargs="+", choices=["toy", *ASSIGNMENTS], default=["toy", "a1_vae"])
    p.add_argument("--students", type=int, default=6, help="submissions per course")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="parallel jobs to compare")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed first grading of each course")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="keep each assignment's FAST run (the handed-in weights) here and reuse it next time")
    return p.parse_args()


def toy_notebook():
    return notebook([
        markdown("# Toy assignment\n\n3 points in total."),
        locked_cell("import os\nFAST = False\nAUTOGRADE = os.environ.get('COURSE_AUTOGRADE') == '1'", "parameters",
                    tags=["parameters"]),
        answer_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION", "double"),
        test_cell("assert double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(-3) == -6\n### END HIDDEN TESTS",
                  "test_double", 2),
        code("if not AUTOGRADE:\n    open('weights.txt', 'w').write('fast' if FAST else 'slow')"),
        test_cell("assert open('weights.txt').read() in ('fast', 'slow')", "test_weights", 1),
    ])


def toy_course(folder: Path, students: int) -> tuple[Course, str]:
    root = folder / "course"
    (root / "solutions" / "toy").mkdir(parents=True)
    nbformat.write(toy_notebook(), str(root / "solutions" / "toy" / "toy.ipynb"))
    shutil.copy(ROOT / "nbgrader_config.py", root)
    course = Course(root=root, workspace=root / "grading")
    for i in range(students):
        target = course.submission_dir(f"s{i:02d}", "toy")
        target.mkdir(parents=True)
        shutil.copy(root / "solutions" / "toy" / "toy.ipynb", target)
        (target / "weights.txt").write_text("fast")
    return course, "toy"


def assignment_course(folder: Path, students: int, assignment: str, runs_dir: Path | None = None
                      ) -> tuple[Course, str]:
    """A real assignment: its source notebook and what its FAST run wrote (weights), handed in by every student."""
    course = Course(root=ROOT, workspace=folder / "grading")
    run = (runs_dir or folder) / "source_run"
    if not (run / assignment / ".validated").is_file():
        start = time.perf_counter()
        reports = validate_source(course, assignment, run, fast=True)
        if not all(r.ok for r in reports):
            raise SystemExit(f"the {assignment} source does not validate:\n" + "\n".join(r.summary() for r in reports))
        print(f"{assignment}: FAST run for the weights: {time.perf_counter() - start:.1f} s")
        (run / assignment / ".validated").write_text("the FAST run passed validation\n")
    handed_in = [p for p in (run / assignment).iterdir()
                 if p.is_file() and (p.suffix in (".ipynb", ".safetensors"))]
    for i in range(students):
        target = course.submission_dir(f"s{i:02d}", assignment)
        target.mkdir(parents=True)
        for path in handed_in:
            shutil.copy(path, target)
    return course, assignment


def measure(course: Course, assignment: str, jobs: int) -> tuple[float, list]:
    os.chdir(course.root)
    start = time.perf_counter()
    statuses = autograde(course, assignment, jobs=jobs)
    seconds = time.perf_counter() - start
    wrong = [s for s in statuses if s.status != "graded" or s.score != s.max_score]
    if wrong:
        raise SystemExit(f"{assignment}: not every submission got full marks: {wrong}")
    return seconds, statuses


def sandbox_overhead(course: Course, repeats: int = 5) -> tuple[float, float]:
    """Median seconds to start `python -I -c ...` inside a full sandbox (the probe) and plainly."""
    import statistics
    import subprocess
    import sys

    from course_lib.grading import sandbox

    boxed, plain = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        problem = sandbox.namespace_support(course)
        boxed.append(time.perf_counter() - start)
        if problem:
            raise SystemExit(f"no sandbox here: {problem}")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
        plain.append(time.perf_counter() - start)
    return statistics.median(boxed), statistics.median(plain)


def main() -> None:
    args = parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="grading-bench-") as scratch:
        for name in args.courses:
            folder = Path(scratch) / name
            folder.mkdir()
            if name == "toy":
                course, assignment = toy_course(folder, args.students)
            else:
                course, assignment = assignment_course(folder, args.students, name, args.runs_dir)
            if name == args.courses[0]:
                boxed, plain = sandbox_overhead(course)
            if not args.no_warmup:
                measure(course, assignment, max(args.jobs))  # warm-up: gradebook entries, caches, forkserver
            for jobs in args.jobs:
                seconds, statuses = measure(course, assignment, jobs)
                per_student = sorted(s.seconds for s in statuses)
                rows.append((assignment, jobs, len(statuses), seconds, 60 * len(statuses) / seconds,
                             per_student[len(per_student) // 2], per_student[-1]))
                print(f"{assignment}: jobs={jobs}: {len(statuses)} submissions in {seconds:.1f} s")
            isolation = statuses[0].isolation
    print(f"\nkernels: {isolation}")
    print(f"sandbox set-up: a probe (namespaces, mounts, python -I -c pass) takes {boxed * 1000:.0f} ms, "
          f"the same python without the sandbox {plain * 1000:.0f} ms (medians of 5)")
    print(f"machine: {os.cpu_count()} CPU cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(at the end)\n")
    total = sum(row[2] for row in rows if row[1] == max(args.jobs))
    seconds_all = sum(row[3] for row in rows if row[1] == max(args.jobs))
    print(f"all courses, jobs={max(args.jobs)}: {total} submissions in {seconds_all:.1f} s = "
          f"{60 * total / seconds_all:.1f} per minute\n")
    print(f"{'assignment':<10} {'jobs':>4} {'submissions':>11} {'seconds':>8} {'per minute':>10} "
          f"{'median s/submission':>20} {'slowest':>8}")
    for assignment, jobs, count, seconds, rate, median, slowest in rows:
        print(f"{assignment:<10} {jobs:>4} {count:>11} {seconds:>8.1f} {rate:>10.1f} {median:>20.1f} {slowest:>8.1f}")


if __name__ == "__main__":
    main()
