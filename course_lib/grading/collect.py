"""Collecting submissions from a folder or an LMS zip into grading/submitted/<student>/<assignment>/.

Accepted layouts (in a zip or a folder; one wrapping folder around everything is fine):

    flat, as LMS downloads are:     alice_a1_vae.ipynb                 -> alice/a1_vae/a1_vae.ipynb
                                    alice_a1_vae_weights.safetensors   -> alice/a1_vae/a1_vae_weights.safetensors
                                    (<student>_<anything>.ipynb is the notebook; <student>_<name> is any other
                                    file, stored as <name>; the student id is everything before the first "_")
    one folder per student:         bob/a1_vae.ipynb, bob/a1_vae_weights.safetensors
                                    or bob/a1_vae/a1_vae.ipynb (nbgrader's own submitted layout)

A student's single notebook under another name ("a1_vae (1).ipynb") is stored under the assignment's
notebook name. Everything else is ignored with a note: system files (__MACOSX/, .DS_Store, hidden files),
files not named <student>_<file>, flat files of a "student" without any notebook (e.g. grading_notes.txt),
invalid student ids, unsafe zip paths, several candidate notebooks.
Collecting a student again replaces that student's earlier submission of the same assignment.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from course_lib.grading.autograde import forget_status
from course_lib.grading.course import STUDENT_ID_PATTERN, Course

__all__ = ["CollectReport", "collect"]

FLAT_NAME = re.compile(r"^(?P<student>[A-Za-z0-9][A-Za-z0-9.-]*)_(?P<rest>.+)$")
SYSTEM_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints", "__pycache__"}


@dataclass
class CollectReport:
    """What ``collect`` stored (student -> file names) and what it ignored ((path, reason) pairs)."""
    assignment: str
    students: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"collected {len(self.students)} submission(s) of {self.assignment}: "
                 f"{', '.join(sorted(self.students)) or '-'}"]
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  ignored {path}: {reason}" for path, reason in self.ignored]
        return "\n".join(lines)


def _is_system(name: str) -> bool:
    return name in SYSTEM_NAMES or name.startswith(".") or name.startswith("~$")


def _extract_zip(archive: Path, dest: Path, report: CollectReport) -> None:
    """Extract regular files only; absolute paths, '..' and symlinks are skipped (never written outside dest)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = PurePosixPath(info.filename.replace("\\", "/"))
            if info.is_dir():
                continue
            if name.is_absolute() or ".." in name.parts or not name.parts:
                report.ignored.append((info.filename, "unsafe path in zip"))
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                report.ignored.append((info.filename, "symbolic link"))
                continue
            target = dest.joinpath(*name.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def _visible(folder: Path, report: CollectReport, base: Path) -> list[Path]:
    entries = []
    for entry in sorted(folder.iterdir()):
        if _is_system(entry.name):
            report.ignored.append((str(entry.relative_to(base)), "system file"))
        else:
            entries.append(entry)
    return entries


def _is_student_folder(folder: Path, assignment: str) -> bool:
    return (folder / f"{assignment}.ipynb").is_file() or (folder / assignment).is_dir()


def _unwrap(folder: Path, assignment: str, report: CollectReport, base: Path) -> list[Path]:
    """Step into single wrapping folders (a zip of a folder) until the student entries are visible."""
    entries = _visible(folder, report, base)
    while len(entries) == 1 and entries[0].is_dir() and not _is_student_folder(entries[0], assignment):
        entries = _visible(entries[0], report, base)
    return entries


def _files_under(folder: Path, report: CollectReport, base: Path) -> dict[str, Path]:
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in sorted(dirnames) if not _is_system(d)]
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if _is_system(name) or path.is_symlink():
                report.ignored.append((str(path.relative_to(base)), "system file or link"))
            else:
                files[str(path.relative_to(folder))] = path
    return files


def _gather(entries: list[Path], assignment: str, report: CollectReport, base: Path) -> dict[str, dict[str, Path]]:
    """student -> {stored name: file}, from both layouts.

    A name like notes_final.txt fits the flat layout too; "students" whose flat files hold no notebook are
    therefore dropped with a note. A student *folder* without a notebook is kept (it grades as failed-no-notebook).
    """
    found: dict[str, dict[str, Path]] = {}
    folders = set()
    for entry in entries:
        where = str(entry.relative_to(base))
        if entry.is_dir():
            if not STUDENT_ID_PATTERN.match(entry.name):
                report.ignored.append((where, "folder name is not a valid student id"))
                continue
            inner = entry / assignment if (entry / assignment).is_dir() else entry
            found.setdefault(entry.name, {}).update(_files_under(inner, report, base))
            folders.add(entry.name)
            continue
        match = FLAT_NAME.match(entry.name)
        if not match:
            report.ignored.append((where, "not named <student>_<file>"))
            continue
        if not STUDENT_ID_PATTERN.match(match["student"]):
            report.ignored.append((where, "the student id is longer than 64 characters"))
            continue
        found.setdefault(match["student"], {})[match["rest"]] = entry
    for student in sorted(set(found) - folders):
        if not any(name.endswith(".ipynb") for name in found[student]):
            for path in found.pop(student).values():
                report.ignored.append((str(path.relative_to(base)), f"no notebook from a student {student!r}"))
    return found


def _name_notebooks(files: dict[str, Path], expected: list[str], student: str,
                    report: CollectReport) -> dict[str, Path] | None:
    """Store notebooks under the assignment's notebook names; None if that is ambiguous."""
    notebooks = {name: path for name, path in files.items() if name.endswith(".ipynb") and "/" not in name}
    others = {name: path for name, path in files.items() if name not in notebooks}
    if all(name in expected for name in notebooks):
        return files
    if len(expected) == 1 and len(notebooks) == 1:
        (name, path), = notebooks.items()
        report.notes.append(f"{student}: notebook {name!r} stored as {expected[0]!r}")
        return {**others, expected[0]: path}
    matched = {exp: path for exp in expected for name, path in notebooks.items() if name.endswith(exp)}
    if len(matched) == len(notebooks):
        return {**others, **matched}
    report.ignored.append((student, f"several notebooks {sorted(notebooks)}; expected {expected}"))
    return None


def _infer_assignment(course: Course, source: Path) -> str:
    known = course.assignments()
    names = [source.name]
    if source.is_dir():
        names += [str(p.relative_to(source)) for p in source.rglob("*")]
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            names += zf.namelist()
    hits = sorted({a for a in known if any(a in name for name in names)})
    if len(hits) != 1:
        raise ValueError(f"assignment must be given (one of {known}): could not tell it from {str(source)!r}, "
                         f"which mentions {hits or 'none of them'}")
    return hits[0]


def collect(course: Course, path, assignment: str | None = None) -> CollectReport:
    """Unpack the submissions in ``path`` (a folder or a zip) into the workspace; see the module docstring."""
    source = Path(path)
    if not source.exists() or not (source.is_dir() or zipfile.is_zipfile(source)):
        raise ValueError(f"path must be a folder or a zip file of submissions, got {str(path)!r}")
    assignment = _infer_assignment(course, source) if assignment is None else assignment
    course.check_assignment(assignment)
    expected = sorted(p.name for p in (course.source_dir / assignment).glob("*.ipynb"))
    report = CollectReport(assignment)
    with tempfile.TemporaryDirectory(prefix="collect-") as scratch:
        base = source
        if source.is_file():
            base = Path(scratch)
            _extract_zip(source, base, report)
        entries = _unwrap(base, assignment, report, base)
        for student, files in sorted(_gather(entries, assignment, report, base).items()):
            files = _name_notebooks(files, expected, student, report)
            if files is None:
                continue
            dest = course.submission_dir(student, assignment)
            if dest.exists():
                shutil.rmtree(dest)
                report.notes.append(f"{student}: replaced an earlier submission")
            for name, src in sorted(files.items()):
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest / name)
            dest.mkdir(parents=True, exist_ok=True)
            forget_status(course, assignment, student)
            report.students[student] = sorted(files)
            if not any(name in expected for name in files):
                report.notes.append(f"{student}: no notebook in the submission (it will be failed-no-notebook)")
    return report
