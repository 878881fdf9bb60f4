"""Releasing an assignment and validating notebooks (nbgrader's generate_assignment and validate).

A release is right when it *fails* validation: a blank assignment must score nothing, so ``release`` runs
``nbgrader validate --invert`` on it (every test cell must fail). The source must pass plain validation;
``validate_source`` runs it on a copy with ``FAST = True`` so that training cells finish quickly and leave
their weights next to the copy (the generic tests grade those weights).

Validation executes a notebook in its own folder, so both functions execute copies in a scratch folder:
running a release never leaves files in assignments/.

The release's stubs say what to write: nbgrader's ``raise NotImplementedError()`` becomes
``raise NotImplementedError("write kl_divergence() here")`` (``ClearSolutionsNamingStubs``, which
nbgrader_config.py puts in place of nbgrader's ClearSolutions through ``release_preprocessors``).
"""
from __future__ import annotations

import ast
import re
import shutil
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from nbgrader import utils as nbgrader_utils
from nbgrader.preprocessors import ClearSolutions

from course_lib.grading.course import Course, kernel_environment, patched_environ

__all__ = ["ValidationReport", "ReleaseReport", "validate_notebook", "release", "validate_source",
           "copy_assignment_folder", "set_fast", "name_stubs", "ClearSolutionsNamingStubs", "release_preprocessors"]

FAST_LINE = re.compile(r"^FAST\s*=\s*False\b", flags=re.MULTILINE)
BARE_STUB = "raise NotImplementedError()"


def _stub_owners(tree: ast.AST, owners: tuple[str, ...] = ()):
    """(line, names of the enclosing classes and functions) of every bare ``raise NotImplementedError()``."""
    for node in ast.iter_child_nodes(tree):
        inner = owners
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = owners + (node.name,)
        elif (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and not node.exc.args
              and not node.exc.keywords and isinstance(node.exc.func, ast.Name)
              and node.exc.func.id == "NotImplementedError"):
            yield node.lineno, owners
        yield from _stub_owners(node, inner)


def name_stubs(source: str, top_level: str = "your code") -> str:
    """Each bare ``raise NotImplementedError()`` in ``source`` names what to write in its place:
    ``"write kl_divergence() here"``, ``"write TinyVAE.encode() here"``, or ``f"write {top_level} here"`` outside
    any function. Source that does not parse is returned unchanged."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    lines = source.split("\n")
    for lineno, owners in _stub_owners(tree):
        what = f"{'.'.join(owners)}()" if owners else top_level
        lines[lineno - 1] = lines[lineno - 1].replace(BARE_STUB, f'raise NotImplementedError("write {what} here")', 1)
    return "\n".join(lines)


def _names_defined(solution: str) -> list[str]:
    """The top-level names a solution region assigns or defines (what a stub outside a function stands for)."""
    try:
        tree = ast.parse(textwrap.dedent(solution))
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        for target in getattr(node, "targets", [getattr(node, "target", None)]):
            names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)] if target is not None else []
    return list(dict.fromkeys(names))


class ClearSolutionsNamingStubs(ClearSolutions):
    """nbgrader's ClearSolutions (same configuration), then ``name_stubs`` on every answer cell; a stub outside
    any function names the variables its solution set (``"write SD15_UNET_PARAMS, SD15_LORA_PARAMS here"``)."""

    def preprocess_cell(self, cell, resources, cell_index):
        region = re.search(rf"{re.escape(self.begin_solution_delimeter)}[^\n]*\n(.*?)^[ \t]*[^\n]*"
                           rf"{re.escape(self.end_solution_delimeter)}", cell.source, flags=re.S | re.M)
        defined = _names_defined(region.group(1)) if region else []
        cell, resources = super().preprocess_cell(cell, resources, cell_index)
        if cell.cell_type == "code" and nbgrader_utils.is_solution(cell):
            cell.source = name_stubs(cell.source, ", ".join(defined) or "your code")
        return cell, resources


def release_preprocessors() -> list:
    """nbgrader's GenerateAssignment preprocessors with ClearSolutions replaced by ClearSolutionsNamingStubs."""
    from nbgrader.converters import GenerateAssignment

    default = GenerateAssignment.class_traits()["preprocessors"].make_dynamic_default()
    assert ClearSolutions in default, "nbgrader's release no longer uses ClearSolutions"
    return [ClearSolutionsNamingStubs if step is ClearSolutions else step for step in default]


@dataclass
class ValidationReport:
    """Outcome of ``nbgrader validate`` on one notebook; test cells are named by grade_id."""
    notebook: Path
    invert: bool
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # grade_id -> last line of its error
    changed: int = 0  # locked cells whose checksum changed (someone edited a read-only cell)

    @property
    def ok(self) -> bool:
        """validate passes (no failing test cell), or with invert: no test cell passes."""
        if self.changed:
            return False
        return not self.passed if self.invert else not self.failed

    def summary(self) -> str:
        what = "passing test cells (a blank release must pass none)" if self.invert else "failing test cells"
        names = self.passed if self.invert else self.failed
        lines = [f"{self.notebook.name}: {'OK' if self.ok else 'FAILED'}"
                 f"{'' if self.ok else f' - {what}: {names}'}"]
        if self.changed:
            lines.append(f"  {self.changed} locked cell(s) were edited")
        lines += [f"  {gid}: {err}" for gid, err in self.errors.items() if not self.invert]
        return "\n".join(lines)


@dataclass
class ReleaseReport:
    assignment: str
    release_dir: Path
    generated: bool
    log: str
    validations: list[ValidationReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.generated and bool(self.validations) and all(v.ok for v in self.validations)


def _last_error_line(cell) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"[:300]
    return ""


def validate_notebook(course: Course, path, invert: bool = False,
                      env: dict[str, str | None] | None = None) -> ValidationReport:
    """Run nbgrader's Validator on the notebook at ``path`` (executed in its folder, with ``env`` patched in)."""
    from nbgrader.validator import Validator

    path = Path(path)
    if not path.is_file() or path.suffix != ".ipynb":
        raise ValueError(f"path must be an existing .ipynb file, got {str(path)!r}")

    class _KeepingValidator(Validator):  # nbgrader's Validator, keeping the executed notebook for per-cell results
        def _preprocess(self, nb):
            self.executed = super()._preprocess(nb)
            return self.executed

    validator = _KeepingValidator(config=course.config())
    validator.invert = bool(invert)
    with patched_environ({**kernel_environment(), **(env or {})}):
        results = validator.validate(str(path))
    report = ValidationReport(notebook=path, invert=bool(invert), changed=len(results.get("changed", [])))
    executed = getattr(validator, "executed", None)  # None when cell types changed: nothing was run
    for cell in executed.cells if executed is not None else []:
        if not nbgrader_utils.is_grade(cell) or cell.cell_type != "code":
            continue
        grade_id = cell.metadata.nbgrader["grade_id"]
        score, max_score = nbgrader_utils.determine_grade(cell, validator.log)
        if score is not None and score >= max_score:
            report.passed.append(grade_id)
        else:
            report.failed.append(grade_id)
            report.errors[grade_id] = _last_error_line(cell)
    if "type_changed" in results:
        report.changed += len(results["type_changed"])
    return report


def copy_assignment_folder(src, dest, ignore=(".ipynb_checkpoints", "__pycache__", "outputs", "*.safetensors",
                                              "*.pt", "*.ckpt", "*.py")) -> Path:
    """Copy an assignment folder without caches, outputs or weights (those come from a run, not the source), nor
    scripts (in solutions/: the notebook's jupytext pair and the grader's checks.py, instructor files that no run
    of the notebook reads and no submission may carry)."""
    dest = Path(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*ignore))
    return dest


def set_fast(notebook_path, fast: bool = True) -> bool:
    """Rewrite the line ``FAST = False`` of the parameters cell; returns whether there was one."""
    import nbformat

    nb = nbformat.read(str(notebook_path), as_version=4)
    found = False
    for cell in nb.cells:
        if cell.cell_type == "code" and FAST_LINE.search(cell.source):
            cell.source = FAST_LINE.sub(f"FAST = {bool(fast)}", cell.source, count=1)
            found = True
            break
    nbformat.write(nb, str(notebook_path))
    return found


def release(course: Course, assignment: str) -> ReleaseReport:
    """generate_assignment into ``course.release_dir/<assignment>``, then check the release fails validation.

    Validation runs with COURSE_AUTOGRADE=1 (no training, as when grading a blank submission) on a scratch copy.
    """
    course.check_assignment(assignment)
    result = course.api().generate_assignment(assignment, force=True, create=True)
    report = ReleaseReport(assignment, course.release_dir / assignment, bool(result.get("success")),
                           (result.get("log") or "") + (result.get("error") or ""))
    if not report.generated:
        return report
    with tempfile.TemporaryDirectory(prefix=f"release-{assignment}-") as scratch:
        copy = copy_assignment_folder(report.release_dir, Path(scratch) / assignment)
        for nb_path in sorted(copy.glob("*.ipynb")):
            validation = validate_notebook(course, nb_path, invert=True, env={"COURSE_AUTOGRADE": "1"})
            validation.notebook = report.release_dir / nb_path.name
            report.validations.append(validation)
    return report


def validate_source(course: Course, assignment: str, workdir, fast: bool = True) -> list[ValidationReport]:
    """Validate the source notebook(s) of ``assignment`` on a copy in ``workdir/<assignment>``.

    Training cells run (COURSE_AUTOGRADE is unset), shrunk by ``FAST = True`` if ``fast``; whatever they
    write (e.g. weights) stays in ``workdir/<assignment>``.
    """
    course.check_assignment(assignment)
    copy = copy_assignment_folder(course.source_dir / assignment, Path(workdir) / assignment)
    reports = []
    for nb_path in sorted(copy.glob("*.ipynb")):
        if fast:
            set_fast(nb_path, True)
        reports.append(validate_notebook(course, nb_path, invert=False, env={"COURSE_AUTOGRADE": None}))
    return reports
