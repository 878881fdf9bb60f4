"""Plain nbgrader in this course: what nbgrader_config.py does when nbgrader runs without course_lib.grading.

``python -m course_lib.grading`` grades each submission in a sandboxed kernel with COURSE_AUTOGRADE=1 (training
cells skipped). nbgrader's own ``nbgrader autograde`` / ``nbgrader validate`` and formgrader's Autograde button
would run student code in a plain kernel, outside the sandbox, with training cells running into the cell
timeout. So, when nbgrader_config.py is loaded by anything but course_lib.grading (which sets
``COURSE_GRADING_TOOL=1`` while it loads the configuration, see ``Course.environment``):

    nbgrader autograde / validate (command line)   stop before touching anything, naming the course command
    autograde from formgrader or NbGraderAPI       refused by nbgrader's ``pre_convert_hook`` (the button shows
                                                   the message), before any notebook is executed
    any other notebook execution by nbgrader        refused by the kernel manager of nbgrader's Execute
    (the Validator, NbGraderAPI.validate)           preprocessor: no kernel starts

Everything else of nbgrader keeps working: formgrader lists the assignments, shows grades and comments, takes
manual grades; feedback and nbgrader's own export read the same gradebook. ``configure`` also makes formgrader
work on a fresh clone: the grading workspace and nbgrader's exchange folder are created when the configuration
is loaded, and the ``alembic`` command nbgrader runs to create a gradebook is found next to the interpreter.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

__all__ = ["TOOL_ENV", "PLAIN_MESSAGE", "PlainNbgraderRefused", "configure", "refuse_plain_autograde",
           "RefusingKernelManager", "plain_command"]

TOOL_ENV = "COURSE_GRADING_TOOL"  # "1" while course_lib.grading loads nbgrader_config.py
REFUSED_COMMANDS = ("autograde", "validate")
PLAIN_MESSAGE = {
    "autograde": "`nbgrader autograde` (and formgrader's Autograde button) is switched off in this course: it would "
                 "run student code outside the grading sandbox and without COURSE_AUTOGRADE=1, so training cells "
                 "would run into the cell timeout and correct submissions would lose points. Grade with\n"
                 "    python -m course_lib.grading autograde <assignment> [--student <id>]\n"
                 "(the same nbgrader pipeline and gradebook, each submission in a sandboxed kernel); formgrader "
                 "then shows the grades and takes manual grading.",
    "validate": "`nbgrader validate` is switched off in this course: it would run the notebook outside the grading "
                "sandbox and without COURSE_AUTOGRADE=1 (training cells would run into the cell timeout). Check a "
                "source and its release with\n    python -m course_lib.grading release <assignment>\nand grade a "
                "student's notebook with `python -m course_lib.grading collect <folder or zip>` then\n"
                "    python -m course_lib.grading autograde <assignment> --student <id>",
}


class PlainNbgraderRefused(RuntimeError):
    """Raised inside nbgrader when it would grade or validate without course_lib.grading."""


def plain_command(argv: list[str]) -> str | None:
    """The nbgrader subcommand of a command line (``nbgrader autograde a1`` -> "autograde"), else None."""
    if not argv:
        return None
    program = Path(argv[0])
    if program.name not in ("nbgrader", "jupyter-nbgrader") and program.parent.name != "nbgrader":
        return None
    return next((arg for arg in argv[1:] if not arg.startswith("-")), None)


def refuse_plain_autograde(**_hook_arguments) -> None:
    """nbgrader's ``Autograde.pre_convert_hook`` outside course_lib.grading: stop before the notebook runs."""
    raise PlainNbgraderRefused(PLAIN_MESSAGE["autograde"])


@functools.lru_cache(maxsize=None)
def _refusing_kernel_manager():
    from jupyter_client.manager import AsyncKernelManager

    class RefusingKernelManager(AsyncKernelManager):
        """The kernel manager of nbgrader's Execute outside course_lib.grading: no kernel starts, no cell runs."""

        def start_kernel(self, **kwargs):
            raise PlainNbgraderRefused(PLAIN_MESSAGE["validate"])

    return RefusingKernelManager


def __getattr__(name: str):
    if name == "RefusingKernelManager":  # built on first use: jupyter_client is imported only where needed
        return _refusing_kernel_manager()
    raise AttributeError(f"module 'course_lib.grading.plain' has no attribute {name!r}")


def _put_scripts_on_path() -> None:
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def configure(c, workspace: Path, argv: list[str] | None = None) -> None:
    """Called by nbgrader_config.py with its config object ``c`` and the grading workspace."""
    workspace = Path(workspace)
    (workspace / "exchange").mkdir(parents=True, exist_ok=True)  # fresh clone: formgrader's gradebook folder
    c.Exchange.root = str(workspace / "exchange")  # the course uses no exchange; this one exists and is writable
    _put_scripts_on_path()  # nbgrader runs `alembic` when it creates a gradebook
    if os.environ.get(TOOL_ENV) == "1":
        return
    command = plain_command(sys.argv if argv is None else argv)
    if command in REFUSED_COMMANDS:
        raise SystemExit(f"error: {PLAIN_MESSAGE[command]}")
    c.Autograde.pre_convert_hook = refuse_plain_autograde
    c.Execute.kernel_manager_class = _refusing_kernel_manager()
