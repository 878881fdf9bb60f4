"""nbgrader configuration of the course (nbgrader 0.9.6). nbgrader reads this file from the repo root.

Course directory = this repository:
    solutions/<assignment>/<assignment>.ipynb     nbgrader SOURCE (instructor version, with solutions)
    assignments/<assignment>/                      the generated student RELEASE (committed, outputs cleared)
    grading/                                       git-ignored grading workspace (set COURSE_GRADING_DIR to move it):
        submitted/<student>/<assignment>/          what `python -m course_lib.grading collect` unpacked
        autograded/<student>/<assignment>/         executed and scored copies
        feedback/<student>/<assignment>/           HTML feedback for the students
        gradebook.db                               nbgrader's SQLite gradebook
        status.json                                per-submission autograde status (course_lib.grading)

Use `python -m course_lib.grading <command>` (it sets COURSE_AUTOGRADE=1 while autograding, which makes the
notebooks skip their training cells and grade the weights the student submitted, and runs every submission in a
sandboxed kernel). Plain nbgrader reads this same layout, but `nbgrader autograde`, `nbgrader validate` and
formgrader's Autograde button stop with a message naming the course command (section 5); formgrader's
assignment list, grades, manual grading and feedback work, on a fresh clone too.

Environment variables (read when nbgrader loads this file):
    COURSE_GRADING_DIR   the grading workspace (default: <repo>/grading); tests point it at a temporary folder
    COURSE_RELEASE_DIR   where `generate_assignment` writes the release (default: <repo>/assignments)
    COURSE_CELL_TIMEOUT  seconds one cell may run while validating or autograding (default: 120)
"""
import os
from pathlib import Path

c = get_config()  # noqa: F821  (traitlets provides get_config when it loads this file)

ROOT = Path(__file__).resolve().parent
WORKSPACE = Path(os.environ.get("COURSE_GRADING_DIR") or ROOT / "grading").resolve()
RELEASE = Path(os.environ.get("COURSE_RELEASE_DIR") or ROOT / "assignments").resolve()

# The assignments: every folder solutions/<name>/ holding <name>.ipynb (a1_vae, a2_attention, a3_ddpm, ...).
# nbgrader 0.9 keeps its list in the gradebook, not here: `python -m course_lib.grading release all` registers
# each one (with its cells and points), and autograding registers any it finds missing in a fresh workspace.
ASSIGNMENTS = sorted(p.parent.name for p in ROOT.glob("solutions/*/*.ipynb") if p.stem == p.parent.name)

# 1. Course directory. Absolute paths for everything outside the repo's own folders.
c.CourseDirectory.root = str(ROOT)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = str(RELEASE) if RELEASE != ROOT / "assignments" else "assignments"
c.CourseDirectory.submitted_directory = str(WORKSPACE / "submitted")
c.CourseDirectory.autograded_directory = str(WORKSPACE / "autograded")
c.CourseDirectory.feedback_directory = str(WORKSPACE / "feedback")
c.CourseDirectory.solution_directory = str(WORKSPACE / "solution")
c.CourseDirectory.db_url = f"sqlite:///{WORKSPACE / 'gradebook.db'}"
# Files never copied by nbgrader: caches and notebook outputs anywhere; and, in solutions/ only, weights from an
# instructor's own run of a solution (absolute globs: nbgrader joins each pattern to the folder it scans, so
# these match nothing in a student's submission). Without them, a release could ship the instructor's weights,
# and autograding, which copies the source folder's extra files over each submission, would grade those.
_INSTRUCTOR_ONLY = [str(ROOT / "solutions" / "*" / sub / f"*.{ext}")
                    for sub in ("", "*") for ext in ("safetensors", "pt", "ckpt", "bin")]
# The jupytext script paired with each source notebook (solutions/<a>/<a>.py) holds the solutions too: never
# copied (a bare name: nbgrader scans solutions/./<a>/, which no absolute glob matches).
_INSTRUCTOR_ONLY += [f"{name}.py" for name in ASSIGNMENTS]
_INSTRUCTOR_ONLY += ["checks.py"]  # the grader's own checks of each assignment (course_lib/grading/verdicts.py)
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "outputs", ".DS_Store",
                            "__MACOSX", *_INSTRUCTOR_ONLY]
c.CourseDirectory.max_file_size = 50_000  # kB; a submitted notebook or weight file larger than 50 MB is skipped

# 2. Release: solutions and hidden tests removed, outputs cleared, checksums of read-only cells recorded.
c.ClearOutput.enabled = True
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
c.ClearSolutions.enforce_metadata = True
# ... and each stub names what to write: raise NotImplementedError("write kl_divergence() here")
from course_lib.grading.release import release_preprocessors  # noqa: E402

c.GenerateAssignment.preprocessors = release_preprocessors()

# 3. Execution (validate and autograde): an explicit per-cell timeout; a cell that runs longer is interrupted,
# scores 0 if it is a test cell, and the notebook goes on with the next cell.
c.Execute.timeout = int(os.environ.get("COURSE_CELL_TIMEOUT") or 120)
c.Execute.interrupt_on_timeout = True
c.Execute.execute_retries = 0
c.Execute.kernel_name = "python3"  # release/validate run the instructor's notebooks; autograde replaces it, per
# submission, with a sandboxed kernelspec written in the workspace (course_lib/grading/sandbox.py: namespaces,
# course hidden, rlimits; `python -m course_lib.grading autograde --help` for the limits)
c.ExecutePreprocessor.timeout = c.Execute.timeout

# 4. Autograde: tests and locked cells are always replaced by the gradebook's copy (students cannot edit them).
c.Autograde.create_student = True

# 5. Plain nbgrader and formgrader (course_lib/grading/plain.py): the workspace and an exchange folder are made
# here (formgrader on a fresh clone), `alembic` is found next to this interpreter; and unless course_lib.grading
# is the one loading this file, autograde and validate are refused, naming `python -m course_lib.grading ...`.
from course_lib.grading import plain  # noqa: E402

plain.configure(c, WORKSPACE)
