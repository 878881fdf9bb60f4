"""``python -m course_lib.grading <command>``: the instructor's grading commands (see --help)."""
from __future__ import annotations

import argparse
import sys
import time

from course_lib.grading import Course, autograde, collect, export_csv, feedback, release
from course_lib.grading.autograde import DEFAULT_SUBMISSION_TIMEOUT
from course_lib.grading.sandbox import GIB, SandboxSettings

EPILOG = """typical term: release all (commit assignments/) -> students submit -> collect submissions.zip ->
autograde -> feedback -> export grades.csv. Everything produced lives in the git-ignored grading/ folder
(or $COURSE_GRADING_DIR / --workspace)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grading",
                                     description="Grade the course's assignments with nbgrader: release, "
                                                 "collect, autograde, feedback, export.",
                                     epilog=EPILOG)
    parser.add_argument("--workspace", help="grading workspace (default: $COURSE_GRADING_DIR or ./grading)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = commands.add_parser("release", help="generate the student release and check that it fails validation",
                            description="Run nbgrader generate_assignment (solutions/<a> -> assignments/<a>), "
                                        "then validate the release with --invert: a blank assignment must pass "
                                        "no test. Exit code 1 if any release is wrong.")
    p.add_argument("assignment", nargs="?", default="all", help="assignment name, or 'all' (default)")

    p = commands.add_parser("collect", help="unpack submissions from a folder or an LMS download (zip)",
                            description="Reads Canvas, Moodle and Blackboard downloads by their file names, "
                                        "nbgrader's <student>/<assignment>/ folders, <student>_<file> files, or "
                                        "your own --pattern. Every student seen gets a row in the export "
                                        "(collected, or failed-<reason>); stray files are listed as ignored.",
                            epilog="layouts: canvas <lastfirst>[_late]_<userid>_<submissionid>_<file>; moodle "
                                   "'<Full Name>_<id>_assignsubmission_file_/<file>'; blackboard "
                                   "<Assignment>_<user>_attempt_<YYYY-MM-DD-HH-MM-SS>_<file> (+ .txt receipt); "
                                   "generic <student>_<file> or <student>/[<assignment>/]<files>. Pattern example: "
                                   "--pattern '(?P<student>[^/]+)/(?P<submitted>[^/]+)/(?P<file>[^/]+)'")
    p.add_argument("path", help="folder or .zip of submissions")
    p.add_argument("--assignment", help="assignment name (default: inferred from the path or file names)")
    p.add_argument("--layout", default="auto", choices=["auto", "canvas", "moodle", "blackboard", "generic"],
                   help="how the download names its files (default: auto, the layout that reads most of it)")
    p.add_argument("--pattern", help="a regular expression matched against each path in the download, with "
                                     "named groups student (required), file, submitted, late, name, lms_id")
    p.add_argument("--time-format", help="strptime format of the pattern's 'submitted' group (default ISO 8601)")
    p.add_argument("--due", help="deadline (ISO 8601, the LMS's clock): later submissions are marked late")
    p.add_argument("--worksheet", help="Moodle's grading worksheet (CSV) for submission times and late status, if "
                                       "it is not inside the download")

    p = commands.add_parser("autograde", help="autograde every collected submission, one process per student",
                            description="Each submission is graded in its own process with COURSE_AUTOGRADE=1 "
                                        "(training cells are skipped), several at once, each kernel in a sandbox "
                                        "(Linux namespaces: it cannot see the solutions, the gradebook or other "
                                        "students' files; memory, CPU, file size and process limits). A broken "
                                        "submission is recorded as failed-<reason> and the others go on.")
    p.add_argument("assignment", nargs="?", help="assignment name (default: every assignment with submissions)")
    p.add_argument("--student", action="append", help="only this student (repeatable)")
    p.add_argument("--timeout", type=float, default=DEFAULT_SUBMISSION_TIMEOUT,
                   help=f"seconds one whole submission may take (default {DEFAULT_SUBMISSION_TIMEOUT:.0f})")
    defaults = SandboxSettings()
    p.add_argument("--jobs", "-j", type=int, help="submissions graded at once (default: number of CPU cores)")
    p.add_argument("--memory", type=float, default=defaults.memory_bytes / GIB,
                   help=f"address-space limit of each kernel in GiB (default {defaults.memory_bytes / GIB:g})")
    p.add_argument("--cpu-seconds", type=int, default=defaults.cpu_seconds,
                   help=f"CPU-time limit of each kernel (default {defaults.cpu_seconds})")
    p.add_argument("--read-only", action="append", default=[], metavar="FOLDER",
                   help="a folder the notebooks read (data), visible read-only in the sandbox (repeatable)")
    p.add_argument("--allow-unsandboxed", action="store_true",
                   help="grade even where namespaces are unavailable (limits only: student code can then read "
                        "solutions, hidden tests and the gradebook)")

    p = commands.add_parser("feedback", help="generate HTML feedback for every autograded submission")
    p.add_argument("assignment", nargs="?", help="assignment name (default: all)")

    p = commands.add_parser("export", help="write grades as CSV: one row per student x assignment with a status",
                            description="Columns: student, assignment, status (graded / failed-<reason> / "
                                        "missing), score (empty unless graded), max_score, submitted_at, late, "
                                        "name, lms_id (from the LMS download), detail. Every student collect "
                                        "saw has a row.")
    p.add_argument("csv", help="output .csv file")
    return parser


def _release(course: Course, args) -> int:
    names = course.assignments() if args.assignment == "all" else [args.assignment]
    ok = True
    for name in names:
        report = release(course, name)
        if not report.generated:
            print(f"{name}: generate_assignment FAILED\n{report.log}")
        for validation in report.validations:
            print(validation.summary())
        ok &= report.ok
    return 0 if ok else 1


def _autograde(course: Course, args) -> int:
    from pathlib import Path

    start = time.perf_counter()
    sandbox = SandboxSettings(allow_unsandboxed=args.allow_unsandboxed, memory_bytes=int(args.memory * GIB),
                              cpu_seconds=args.cpu_seconds,
                              read_only_paths=[str(Path(p).resolve()) for p in args.read_only])
    statuses = autograde(course, args.assignment, args.student, args.timeout, jobs=args.jobs, sandbox=sandbox)
    for s in statuses:
        score = f"{s.score:g}/{s.max_score:g}" if s.status.startswith("graded") else "-"
        print(f"{s.assignment:<22} {s.student:<20} {s.status:<28} {score:>9} {s.seconds:6.1f} s  {s.detail}")
    isolation = sorted({s.isolation for s in statuses if s.isolation})
    print(f"{len(statuses)} submission(s) in {time.perf_counter() - start:.1f} s; kernels: {'; '.join(isolation)}")
    return 0


def _feedback(course: Course, args) -> int:
    results = feedback(course, args.assignment)
    for r in results:
        print(f"{r.assignment:<22} {r.student:<20} {'ok' if r.ok else 'FAILED'}  {r.detail}")
    return 0 if all(r.ok for r in results) else 1


def _export(course: Course, args) -> int:
    rows = export_csv(course, args.csv)
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(f"wrote {len(rows)} row(s) to {args.csv}: {counts}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    course = Course(workspace=args.workspace)
    if args.command == "collect":
        print(collect(course, args.path, args.assignment, layout=args.layout, pattern=args.pattern,
                      time_format=args.time_format, due=args.due, worksheet=args.worksheet).summary())
        return 0
    handler = {"release": _release, "autograde": _autograde, "feedback": _feedback, "export": _export}
    return handler[args.command](course, args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:  # bad input: say what is wrong, without a traceback
        sys.exit(f"error: {err}")
