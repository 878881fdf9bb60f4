"""Collecting submissions from a folder or an LMS download into grading/submitted/<student>/<assignment>/.

Every student collect sees gets an entry in the assignment's *roster* (grading/collect/<assignment>.json),
whether their submission could be stored or not, and ``export`` writes a row for every roster entry: no
submission ever disappears between the download and the grade sheet.

How a download is read (``course_lib.grading.lms``): Canvas, Moodle and Blackboard file names, nbgrader's own
folders, ``<student>_<file>`` files, or a regular expression of your own; ``--layout auto`` picks the one that
reads most of it. One wrapping folder around everything is fine. Per student:

    notebook    the assignment's notebook name is graded; extra copies ("a2_attention copy.ipynb",
                "a2_attention (1).ipynb", Canvas' "a2_attention-1.ipynb") are kept aside and noted; without the
                exact name, the one notebook (or the one copy of the expected name) is stored under it
    archive     a student's .zip without a notebook beside it is unpacked (safely) into the submission
    student id  names outside [A-Za-z0-9._-] (spaces, accents) are normalised ("Jane Smith" -> "Jane-Smith")
                and the original is noted; two different names that normalise alike get distinct ids
    time        the submission time and late flag the LMS gives (see lms.py), late also from ``due``

Statuses of a roster entry: ``collected``, or ``failed-<reason>`` with the reason spelled out:
    failed-ambiguous-notebooks   several notebooks, none with the expected name or a copy of it
    failed-conflicting-files     the download holds two different files under one name for the student
    failed-unreadable-archive    the student's .zip, or one of their entries in the download, could not be read
    failed-unsafe-path           the student's only files had unsafe paths (absolute, '..', links): not written
    failed-no-notebook           the student's files hold no notebook at all
A failed entry has no folder in grading/submitted/ (an earlier submission of that student is removed, as
collecting again always replaces it). Stray files that name no student (system files, names that fit no
layout) are listed as ignored. Nothing is dropped without a line in the summary.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from course_lib.grading.autograde import forget_status
from course_lib.grading.course import STUDENT_ID_PATTERN, Course
from course_lib.grading.lms import Entry, Generic, Layout, Moodle, make_layout, parse_time
from course_lib.grading.roster import Submission, load_roster, save_roster

__all__ = ["CollectReport", "Submission", "collect", "load_roster", "normalise_student_id"]

FATAL_PROBLEMS = ("unreadable-archive", "conflicting-files")  # unsafe paths are noted, the rest is graded
SYSTEM_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints", "__pycache__"}
COPY_MARKS = [re.compile(p, re.I) for p in (r"^copy of (.+)$", r"^(.+?) - copy(?: \(\d+\))?$", r"^(.+?) copy(?: \d+)?$",
                                             r"^(.+?) ?\(\d+\)$", r"^(.+?)-\d+$")]


@dataclass
class CollectReport:
    """What ``collect`` did: ``submissions`` (student -> Submission, failed ones included), ``students``
    (student -> stored file names, collected ones only) and ``ignored`` ((path, reason) that name no student)."""
    assignment: str
    layout: str = ""
    detected: bool = False
    students: dict[str, list[str]] = field(default_factory=dict)
    submissions: dict[str, Submission] = field(default_factory=dict)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        failed = {s: sub for s, sub in self.submissions.items() if sub.status != "collected"}
        lines = [f"collected {len(self.students)} submission(s) of {self.assignment} ({self.layout} layout"
                 f"{', detected' if self.detected else ''}): "
                 f"{', '.join(sorted(self.students)) or '-'}"]
        lines += [f"  {s}: {sub.status}: {sub.reason}" for s, sub in sorted(failed.items())]
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  ignored {path}: {reason}" for path, reason in self.ignored]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the download

def _is_system(name: str) -> bool:
    return name in SYSTEM_NAMES or name.startswith(".") or name.startswith("~$")


def _safe_parts(name: str) -> tuple[list[str], bool]:
    """The parts of a zip entry name that can be written under a folder, and whether the name was safe."""
    raw = name.replace("\\", "/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    safe = not raw.startswith("/") and ".." not in parts and not re.match(r"^[A-Za-z]:", raw)
    return [p for p in parts if p != ".." and not re.match(r"^[A-Za-z]:$", p)], safe


def _extract_zip(archive: Path, dest: Path, items: dict, problems: dict, ignored: list, prefix: str = "") -> None:
    """Regular files of the zip into dest; unsafe names, links and unreadable members only in ``problems``."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts, safe = _safe_parts(info.filename)
            if not parts:
                ignored.append((info.filename, "empty name in zip"))
                continue
            if any(_is_system(p) for p in parts):
                top = next(p for p in parts if _is_system(p))
                where = prefix + "/".join(parts[:parts.index(top) + 1])
                if (where, "system file") not in ignored:
                    ignored.append((where, "system file"))
                continue
            rel = prefix + "/".join(parts)
            if not safe:
                problems[rel] = ("unsafe-path", f"unsafe path in zip {info.filename!r}: not written")
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                problems[rel] = ("unsafe-path", f"symbolic link {info.filename!r} in zip: not written")
                continue
            target = dest.joinpath(*parts)
            if rel in items or rel in problems:  # the same name twice in one zip
                target = target.with_name(target.name + ".duplicate")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as err:
                target.unlink(missing_ok=True)
                problems[rel] = ("unreadable-archive", f"{info.filename!r} could not be read from the zip: {err}")
                items.pop(rel, None)
                continue
            if rel in items:
                same = items[rel].read_bytes() == target.read_bytes()
                target.unlink()
                if not same:
                    problems[rel] = ("conflicting-files", f"the zip holds two different entries {info.filename!r}")
                    del items[rel]
                continue
            if rel not in problems:
                items[rel] = target


def _walk_folder(folder: Path, items: dict, problems: dict, ignored: list) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for name in sorted(dirnames):
            if _is_system(name) or (base / name).is_symlink():
                ignored.append((str((base / name).relative_to(folder)), "system file or link"))
        dirnames[:] = [d for d in sorted(dirnames) if not _is_system(d) and not (base / d).is_symlink()]
        for name in sorted(filenames):
            path = base / name
            rel = str(path.relative_to(folder).as_posix())
            if _is_system(name):
                ignored.append((rel, "system file"))
            elif path.is_symlink() or not path.is_file():
                problems[rel] = ("unsafe-path", f"{rel!r} is a link or special file: not copied")
            else:
                items[rel] = path


def _unwrap(items: dict, problems: dict, is_student_folder) -> tuple[dict, dict, str]:
    """Strip folders that wrap everything (a zip of a folder), unless that folder is a student's."""
    prefix = ""
    while items:
        firsts = {rel.split("/", 1)[0] for rel in items}
        if len(firsts) != 1 or any("/" not in rel for rel in items):
            break
        top = firsts.pop()
        if is_student_folder(top, items):
            break
        prefix += top + "/"
        items = {rel[len(top) + 1:]: path for rel, path in items.items()}
        problems = {rel[len(top) + 1:] if rel.startswith(top + "/") else rel: p for rel, p in problems.items()}
    return items, problems, prefix


# ------------------------------------------------------------------------------------------ student ids

def normalise_student_id(raw: str) -> str:
    """A valid student id for ``raw`` (letters, digits, '.', '_', '-'; at most 64): accents dropped, every run of
    other characters (spaces included) becomes '-'. Names with no Latin letter get a stable hash id."""
    if STUDENT_ID_PATTERN.match(raw):
        return raw
    ascii_name = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_name).strip("-._")[:64].rstrip("-._")
    if not slug:
        slug = "student-" + hashlib.sha1(raw.encode()).hexdigest()[:10]
    return slug


def _assign_ids(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(raw name, LMS id) -> student id. Distinct keys never share an id: where names collide, the LMS ids tell
    them apart (-<LMS id>), else a name that already was a valid id keeps it and the others get -2, -3, ..."""
    by_id: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(set(keys)):
        by_id.setdefault(normalise_student_id(key[0]), []).append(key)
    ids = {}
    for student, owners in by_id.items():
        if len(owners) > 1 and all(lms_id for _, lms_id in owners):
            ids.update({key: normalise_student_id(f"{student}-{key[1]}") for key in owners})
            continue
        owners = sorted(owners, key=lambda key: key[0] != student)  # the exact name first
        ids[owners[0]] = student
        ids.update({key: f"{student[:60]}-{n}" for n, key in enumerate(owners[1:], start=2)})
    return ids


# ------------------------------------------------------------------------------------------ one student

def _copy_of(name: str, expected: str) -> bool:
    """Is the notebook ``name`` a renamed copy of ``expected`` ("x copy.ipynb", "x (1).ipynb", "x-1.ipynb")?"""
    stem, want = PurePosixPath(name).stem, PurePosixPath(expected).stem
    for _ in range(3):  # "x (1) copy" takes two steps
        for mark in COPY_MARKS:
            match = mark.match(stem)
            if match:
                stem = match.group(1)
                break
        if stem == want:
            return True
    return False


def _choose_notebooks(files: dict, expected: list[str], sub: Submission) -> dict | None:
    """Keep the expected notebook names (renaming the one candidate); extra notebooks go aside (key None)."""
    notebooks = sorted(n for n in files if n.endswith(".ipynb") and "/" not in n)
    chosen, extras = {}, []
    for want in expected:
        if want in notebooks:
            chosen[want] = want
            continue
        copies = [n for n in notebooks if _copy_of(n, want)]
        others = [n for n in notebooks if n not in expected and not any(_copy_of(n, w) for w in expected)]
        pick = copies if copies else (others if len(expected) == 1 else [])
        if len(pick) == 1:
            chosen[pick[0]] = want
            sub.notes.append(f"notebook {pick[0]!r} stored as {want!r}")
        elif len(pick) > 1:
            sub.status, sub.reason = "failed-ambiguous-notebooks", (
                f"several notebooks {pick} and none named {want!r}: collect again with only the one to grade")
            return None
    for name in notebooks:
        if name not in chosen:
            extras.append(name)
            graded = ", ".join(sorted(set(chosen.values()))) or "none"
            sub.notes.append(f"extra notebook {name!r} not graded (graded: {graded}); kept in grading/collect/")
    stored = {chosen.get(n, n): path for n, path in files.items() if n not in extras}
    return {**stored, **{None: [files[n] for n in extras]}}


def _open_archives(files: dict, sub: Submission, scratch: Path) -> dict:
    """A student's .zip without a notebook beside it: its files join the submission (safely extracted)."""
    if any(n.endswith(".ipynb") and "/" not in n for n in files):
        return files
    for name in [n for n in files if n.lower().endswith(".zip")]:
        dest = Path(tempfile.mkdtemp(prefix="student-zip-", dir=scratch))
        inner, problems, ignored = {}, {}, []
        try:
            _extract_zip(files[name], dest, inner, problems, ignored)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
            sub.status, sub.reason = "failed-unreadable-archive", f"{name!r} could not be opened: {err}"
            return files
        inner, problems, _ = _unwrap(inner, problems, lambda top, items: False)
        for rel, (kind, why) in problems.items():
            sub.notes.append(f"in {name}: {why}")
            if kind in FATAL_PROBLEMS:
                sub.status, sub.reason = f"failed-{kind}", f"in {name}: {why}"
        files = {**{k: v for k, v in files.items() if k != name}, **inner}
        sub.notes.append(f"unpacked {name!r}: {', '.join(sorted(inner)) or 'nothing readable'}")
    others = [n for n in files if n.lower().endswith((".rar", ".7z", ".tar", ".tgz", ".gz"))]
    if others and not any(n.endswith(".ipynb") for n in files):
        sub.notes.append(f"archive(s) {others} not opened (only .zip is): hand in the notebook itself")
    return files


def _gather(items: dict, problems: dict, layout: Layout, report: CollectReport, prefix: str,
            fallback: Layout | None = None) -> dict[str, tuple[Submission, dict]]:
    """student id -> (Submission, {stored name: file}) from every item the layout reads, or else ``fallback``
    reads (paths in the report are those of the download: ``prefix`` is the wrapping folder)."""
    entries: list[tuple[str, Entry | None, Path | None, tuple | None]] = []
    for rel, path in sorted(items.items()):
        entry = layout.parse(rel)
        if entry is None and rel not in layout.used and fallback is not None:
            entry = fallback.parse(rel)
        if rel in layout.used:
            report.notes.append(f"{prefix + rel}: {layout.used[rel]}")
        elif entry is None:
            report.ignored.append((prefix + rel, f"does not fit the {layout.name} layout ({layout.description})"))
        else:
            entries.append((rel, entry, path, None))
    for rel, problem in sorted(problems.items()):  # attributed by the name alone; never written
        readers = [layout] + ([fallback] if fallback is not None else [])
        entry = next((e for r in readers for e in (r.parse(rel), r.parse(PurePosixPath(rel).name)) if e), None)
        if entry is None:
            report.ignored.append((prefix + rel, problem[1]))
        else:
            entries.append((rel, entry, None, problem))
    latest: dict[tuple[str, str], str] = {}  # Blackboard: a student's latest attempt is the submission
    for _, entry, _, _ in entries:
        key = (entry.student, entry.lms_id)
        latest[key] = max(latest.get(key, ""), entry.attempt)
    ids = _assign_ids([(e.student, e.lms_id) for _, e, _, _ in entries])
    found: dict[str, tuple[Submission, dict]] = {}
    for rel, entry, path, problem in entries:
        key = (entry.student, entry.lms_id)
        student = ids[key]
        sub, files = found.setdefault(student, (Submission(student, lms=entry.lms), {}))
        sub.sources.append(prefix + rel)
        sub.lms_id, sub.name = sub.lms_id or entry.lms_id, sub.name or entry.name
        if student != entry.student and not any(n.startswith("student id") for n in sub.notes):
            sub.notes.append(f"student id {student!r} made from {entry.student!r}")
        if entry.lms != layout.name:
            sub.notes.append(f"{prefix + rel} is not a {layout.name} name: read as {fallback.description}")
        if entry.attempt and entry.attempt != latest[key]:
            sub.notes.append(f"earlier attempt {entry.attempt} not collected ({rel})")
            continue
        sub.submitted_at = entry.submitted_at or sub.submitted_at
        if entry.late is not None:
            sub.late = bool(sub.late) or entry.late
        if problem is not None:
            files.setdefault(("problem", rel), problem)
        elif entry.extra:
            files.setdefault(("extra", rel), path)
        elif entry.file in files and files[entry.file].read_bytes() != path.read_bytes():
            sub.status, sub.reason = "failed-conflicting-files", (
                f"two different files for {entry.file!r} ({', '.join(s for s in sub.sources if s != prefix + rel)} "
                f"and {prefix + rel}): collect again with the one to grade")
        else:
            if entry.file in files:
                sub.notes.append(f"{rel} is a duplicate of a file already collected")
            files[entry.file] = path
    for student, (sub, files) in list(found.items()):  # generic flat names without a notebook: not a student
        if sub.lms == "generic" and not any("/" in s[len(prefix):] or s.endswith(".ipynb") for s in sub.sources):
            del found[student]
            report.ignored += [(s, f"no notebook from a student {student!r}") for s in sub.sources]
    return found


def _later(when: str, due: str) -> bool:
    """Is ``when`` after ``due``? (A time without a zone is read on the clock of the other one.)"""
    a, b = datetime.fromisoformat(when), datetime.fromisoformat(due)
    if (a.tzinfo is None) != (b.tzinfo is None):
        a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    return a > b


def _settle(sub: Submission, files: dict, expected: list[str], scratch: Path, due: str | None) -> tuple[dict, list]:
    """Decide the status of one student; returns (stored name -> file, files kept aside)."""
    problems = {k: v for k, v in files.items() if isinstance(k, tuple) and k[0] == "problem"}
    aside = [v for k, v in files.items() if isinstance(k, tuple) and k[0] == "extra"]
    files = {k: v for k, v in files.items() if isinstance(k, str)}
    if due is not None and sub.late is None and sub.submitted_at:
        sub.late = _later(sub.submitted_at, due)
    fatal = {rel: why for rel, (kind, why) in problems.items() if kind in FATAL_PROBLEMS}
    if fatal and sub.status == "collected":  # grading without a file the student handed in would cost points
        kind = problems[min(fatal)][0]
        sub.status, sub.reason = f"failed-{kind}", "; ".join(fatal.values())
    if sub.status != "collected":
        return {}, aside
    files = _open_archives(files, sub, scratch)
    if sub.status != "collected":
        return {}, aside
    if not any(n.endswith(".ipynb") for n in files):
        kinds = sorted({kind for kind, _ in problems.values()})
        if kinds:
            sub.status, sub.reason = f"failed-{kinds[0]}", "; ".join(why for _, why in problems.values())
        elif not files:
            sub.status, sub.reason = "failed-no-notebook", "no files at all"
        return ({}, aside) if kinds or not files else (files, aside)
    sub.notes += [why for _, why in problems.values()]  # graded anyway: say what was left out
    chosen = _choose_notebooks(files, expected, sub)
    if chosen is None:
        return {}, aside
    aside += chosen.pop(None)
    return chosen, aside


# ------------------------------------------------------------------------------------------ the roster

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


def _store(course: Course, assignment: str, sub: Submission, files: dict, aside: list) -> None:
    dest = course.submission_dir(sub.student, assignment)
    if dest.exists():
        shutil.rmtree(dest)
        sub.notes.append("replaced an earlier submission" if sub.status == "collected"
                         else "an earlier submission was removed")
    forget_status(course, assignment, sub.student)
    shutil.rmtree(course.autograded_dir / sub.student / assignment, ignore_errors=True)  # graded the old one
    extras = course.collect_dir / assignment / "extras" / sub.student
    shutil.rmtree(extras, ignore_errors=True)
    for path in aside:
        extras.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, extras / path.name)
    if sub.status != "collected":
        return
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in sorted(files.items()):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / name)
    sub.files = sorted(files)
    if not any(name in course_expected(course, assignment) for name in files):
        sub.notes.append("no notebook in the submission (it will be failed-no-notebook)")


def course_expected(course: Course, assignment: str) -> list[str]:
    return sorted(p.name for p in (course.source_dir / assignment).glob("*.ipynb"))


def collect(course: Course, path, assignment: str | None = None, layout: str = "auto", pattern: str | None = None,
            time_format: str | None = None, due: str | None = None, worksheet=None) -> CollectReport:
    """Unpack the submissions in ``path`` (a folder or a zip) into the workspace; see the module docstring.

    layout       auto, canvas, moodle, blackboard or generic (see ``course_lib.grading.lms``)
    pattern      a regular expression with named groups (student, file, submitted, late, name, lms_id), matched
                 against each path in the download; replaces ``layout``
    time_format  strptime format of the pattern's ``submitted`` group (default: ISO 8601)
    due          the deadline (ISO 8601, the LMS's clock): a submission with a later time is marked late
    worksheet    Moodle's grading worksheet (CSV), if it is not in the download: submission times, late status
    """
    source = Path(path)
    if not source.exists() or not (source.is_dir() or zipfile.is_zipfile(source)):
        raise ValueError(f"path must be a folder or a zip file of submissions, got {str(path)!r}")
    assignment = _infer_assignment(course, source) if assignment is None else assignment
    course.check_assignment(assignment)
    due = parse_time(due) if due is not None else None
    if worksheet is not None and not Path(worksheet).is_file():
        raise ValueError(f"worksheet must be Moodle's grading worksheet (a .csv file), got {str(worksheet)!r}")
    expected = course_expected(course, assignment)
    report = CollectReport(assignment)
    with tempfile.TemporaryDirectory(prefix="collect-") as scratch:
        items, problems = {}, {}
        if source.is_file():
            try:
                _extract_zip(source, Path(scratch) / "download", items, problems, report.ignored)
            except (zipfile.BadZipFile, OSError) as err:
                raise ValueError(f"path must be a readable zip file, got {str(path)!r}: {err}") from None
        else:
            _walk_folder(source, items, problems, report.ignored)
        probe = make_layout("generic", assignment, {}, pattern, time_format)
        items, problems, prefix = _unwrap(items, problems,
                                          lambda top, now: _is_student_folder(top, now, probe, assignment))
        chosen = make_layout(layout, assignment, items, pattern, time_format, worksheet)
        report.layout, report.detected = chosen.name, layout == "auto" and pattern is None
        seen = {}
        fallback = Generic(assignment) if chosen.name in ("canvas", "moodle", "blackboard") else None
        for student, (sub, files) in sorted(_gather(items, problems, chosen, report, prefix, fallback).items()):
            files, aside = _settle(sub, files, expected, Path(scratch), due)
            _store(course, assignment, sub, files, aside)
            seen[student] = sub
            if sub.status == "collected":
                report.students[student] = sub.files
            report.notes += [f"{student}: {note}" for note in sub.notes]
        report.submissions = seen
        save_roster(course, assignment, seen)
    return report


def _is_student_folder(top: str, items: dict, layout: Layout, assignment: str) -> bool:
    """Is the single top folder of the download a student's (then it is not unwrapped)?"""
    inner = {rel.split("/", 1)[1] for rel in items if rel.startswith(top + "/")}
    return (f"{assignment}.ipynb" in inner or any(r.startswith(assignment + "/") for r in inner)
            or Moodle.PREFIX.match(top) is not None
            or layout.name == "pattern" and any(layout.parse(rel) for rel in items))
