"""How LMS downloads name their files: one parser per layout, each reading a path of the download as
(student, file name inside the submission, what the LMS says about the submission).

Layouts (``collect --layout``; ``auto`` picks the LMS layout that reads most of the download, else generic):

    canvas      <lastfirst>[_late]_<user id>_<submission id>_<file>           flat files; "_late" marks a late
                submission; a re-upload gets "-1", "-2" before the extension (a2_attention-1.ipynb)
    moodle      <Full Name>_<participant id>_assignsubmission_file_/<file>      one folder per student
                ("Download submissions in folders"), or flat <Full Name>_<id>_assignsubmission_file_<file>;
                online text comes as ..._assignsubmission_onlinetext_/onlinetext.html
    blackboard  <Assignment>_<username>_attempt_<YYYY-MM-DD-HH-MM-SS>_<file> plus a receipt
                <Assignment>_<username>_attempt_<...>.txt ("Name: Full Name (username)", "Date Submitted: ...",
                "Original filename: ..." / "Filename: ..."); the latest attempt of a student is collected
    generic     <student>_<file> flat, or <student>/<files>, or <student>/<assignment>/<files> (nbgrader's own)
    pattern     a regular expression (``collect --pattern``) matched against the whole path in the download,
                with named groups: student (required), file, submitted, late, name, lms_id

What each carries: Canvas the late flag (no time); Blackboard the time of the attempt (late if ``--due`` is given);
Moodle nothing in its file names, but its grading worksheet (CSV, in the download or ``--worksheet``) gives the
time ("Last modified (submission)") and a late status; a pattern whatever its groups capture.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from types import MappingProxyType

__all__ = ["Entry", "LAYOUTS", "make_layout", "parse_time"]

LAYOUTS = ("auto", "canvas", "moodle", "blackboard", "generic")


@dataclass
class Entry:
    """One file of the download, read by a layout."""
    student: str                     # as written in the download (normalised later into a student id)
    file: str                        # its name inside the submission ("a2_attention.ipynb", "data/x.npy")
    lms: str                         # the layout that read it
    lms_id: str = ""                 # Canvas user id, Moodle participant id, Blackboard username
    name: str = ""                   # the student's name as the LMS wrote it
    submitted_at: str | None = None  # ISO 8601, as the LMS wrote it (no time zone conversion)
    late: bool | None = None         # None: the LMS did not say
    attempt: str = ""                # Blackboard: the attempt's time stamp (the latest attempt wins)
    extra: bool = False              # a file of the LMS, not of the student (Blackboard receipt)


def parse_time(text: str, time_format: str | None = None) -> str:
    """``text`` as an ISO 8601 string: with ``time_format`` (strptime) if given, else ISO 8601 or
    YYYY-MM-DD-HH-MM-SS; raises ValueError naming what it got."""
    text = text.strip()
    try:
        if time_format:
            return datetime.strptime(text, time_format).isoformat()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}", text):
            return datetime.strptime(text, "%Y-%m-%d-%H-%M-%S").isoformat()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        raise ValueError(f"submission time must be ISO 8601 (2026-03-14T10:22:45) or match the time format "
                         f"{time_format!r}, got {text!r}") from None


class Layout:
    name = "?"
    description = ""
    used: Mapping[str, str] = MappingProxyType({})  # paths the layout read itself (receipts, worksheets) -> what

    def prepare(self, items: dict[str, Path | None]) -> None:
        """Look at the whole download first (Blackboard reads its receipts here)."""

    def parse(self, rel: str) -> Entry | None:
        raise NotImplementedError("Layout.parse: a layout reads one path of the download")


class Canvas(Layout):
    name = "canvas"
    description = "<lastfirst>[_late]_<user id>_<submission id>_<file>"
    NAME = re.compile(r"^(?P<name>[A-Za-z0-9-]+?)(?P<late>_(?i:late))?_(?P<user>\d+)_(?P<sub>\d+)_(?P<file>.+)$")

    def parse(self, rel):
        match = self.NAME.match(rel) if "/" not in rel else None
        if not match:
            return None
        return Entry(match["name"], match["file"], self.name, lms_id=match["user"], name=match["name"],
                     late=bool(match["late"]))


class Moodle(Layout):
    name = "moodle"
    description = "<Full Name>_<participant id>_assignsubmission_<plugin>_/<file> or ..._<plugin>_<file>"
    PREFIX = re.compile(r"^(?P<name>.+?)_(?P<id>\d+)_assignsubmission_(?P<plugin>[a-z]+)_(?P<rest>.*)$")
    TIME_FORMATS = ("%A, %d %B %Y, %I:%M %p", "%A, %d %B %Y, %H:%M", "%d %B %Y, %I:%M %p", "%d %B %Y, %H:%M")

    def __init__(self, worksheet: Path | None = None):
        self.times: dict[str, tuple[str | None, bool | None]] = {}  # participant id -> (time, late)
        self.used = {}
        if worksheet is not None:
            self._read_worksheet(Path(worksheet), strict=True)

    def prepare(self, items):
        for rel, path in items.items():
            if rel.lower().endswith(".csv") and path is not None and self._read_worksheet(path):
                self.used[rel] = "read as Moodle's grading worksheet (submission times)"

    def _read_worksheet(self, path: Path, strict: bool = False) -> bool:
        """Moodle's grading worksheet: Identifier "Participant 1001", "Last modified (submission)", Status."""
        import csv

        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            rows = list(csv.DictReader(f))
        columns = set(rows[0]) if rows else set()
        if not {"Identifier", "Last modified (submission)"} <= columns:
            if strict:
                raise ValueError(f"worksheet must be Moodle's grading worksheet (columns 'Identifier', 'Last "
                                 f"modified (submission)'), got columns {sorted(columns)} in {str(path)!r}")
            return False
        for row in rows:
            participant = re.sub(r"\D", "", row["Identifier"] or "")
            status = (row.get("Status") or "").lower()
            self.times[participant] = (self._time(row["Last modified (submission)"]),
                                       True if "late" in status else None)
        return True

    def _time(self, text: str) -> str | None:
        for time_format in self.TIME_FORMATS:
            try:
                return datetime.strptime((text or "").strip(), time_format).isoformat()
            except ValueError:
                continue
        return None  # "-" (no submission) or a format of another locale

    def parse(self, rel):
        first, _, inner = rel.partition("/")
        match = self.PREFIX.match(first)
        if not match:
            return None
        file = inner if inner else match["rest"]  # folder form, or flat form (the rest is the file name)
        if not file or (inner and match["rest"]):
            return None
        submitted, late = self.times.get(match["id"], (None, None))
        return Entry(match["name"], file, self.name, lms_id=match["id"], name=match["name"], submitted_at=submitted,
                     late=late)


class Blackboard(Layout):
    name = "blackboard"
    description = "<Assignment>_<username>_attempt_<YYYY-MM-DD-HH-MM-SS>_<file> (+ the attempt's .txt receipt)"
    FILE = re.compile(r"^(?P<prefix>.+_attempt_(?P<when>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}))"
                      r"(?:_(?P<file>.+)|(?P<receipt>\.txt))$")
    USER = re.compile(r"^.+_(?P<user>[^_]+)_attempt_")

    def __init__(self):
        self.receipts: dict[str, dict] = {}  # prefix -> {"user", "name", "files": {stored name: original}}
        self.used = {}

    def prepare(self, items):
        for rel, path in items.items():
            match = self.FILE.match(rel)
            if match and match["receipt"] and path is not None:
                self.receipts[match["prefix"]] = _read_receipt(path.read_text(errors="replace"))

    def parse(self, rel):
        match = self.FILE.match(rel) if "/" not in rel else None
        if not match:
            return None
        receipt = self.receipts.get(match["prefix"], {})
        user = receipt.get("user") or self.USER.match(match["prefix"])["user"]
        when = parse_time(match["when"])
        if match["receipt"]:
            file, extra = "blackboard_receipt.txt", True
        else:
            file, extra = receipt.get("files", {}).get(rel, match["file"]), False  # the name the student gave
        return Entry(user, file, self.name, lms_id=user, name=receipt.get("name", ""), submitted_at=when,
                     attempt=when, extra=extra)


def _read_receipt(text: str) -> dict:
    """Blackboard's attempt receipt: 'Name: Full Name (username)' and Original filename / Filename pairs."""
    found: dict = {"files": {}}
    name = re.search(r"^Name:\s*(?P<name>.*?)\s*\((?P<user>[^()\n]+)\)\s*$", text, re.M)
    if name:
        found["name"], found["user"] = name["name"], name["user"].strip()
    for original, stored in re.findall(r"Original filename:\s*(.+?)\s*\n\s*Filename:\s*(.+?)\s*$", text, re.M):
        found["files"][stored] = original
    return found


class Generic(Layout):
    name = "generic"
    description = "<student>_<file>, <student>/<files> or <student>/<assignment>/<files>"
    FLAT = re.compile(r"^(?P<student>[^_/]*[A-Za-z0-9][^_/]*)_(?P<file>.+)$")  # the student: up to the first "_"

    def __init__(self, assignment: str):
        self.assignment = assignment

    def parse(self, rel):
        parts = PurePosixPath(rel).parts
        if len(parts) > 1:
            inner = parts[2:] if len(parts) > 2 and parts[1] == self.assignment else parts[1:]
            return Entry(parts[0], "/".join(inner), self.name)
        match = self.FLAT.match(rel)
        return Entry(match["student"], match["file"], self.name) if match else None


class Pattern(Layout):
    name = "pattern"
    GROUPS = {"student", "file", "submitted", "late", "name", "lms_id"}

    def __init__(self, pattern: str, time_format: str | None = None):
        try:
            self.regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pattern must be a regular expression, got {pattern!r}: {err}") from None
        groups = set(self.regex.groupindex)
        if "student" not in groups or groups - self.GROUPS:
            raise ValueError(f"pattern must have a named group (?P<student>...) and only the groups "
                             f"{sorted(self.GROUPS)}, got {sorted(groups) or 'no named groups'} in {pattern!r}")
        self.description = pattern
        self.time_format = time_format

    def parse(self, rel):
        match = self.regex.fullmatch(rel)
        if not match or not match["student"]:
            return None
        groups = match.groupdict()
        submitted = parse_time(groups["submitted"], self.time_format) if groups.get("submitted") else None
        late = bool(groups["late"]) if "late" in groups else None
        return Entry(match["student"], groups.get("file") or PurePosixPath(rel).name, self.name,
                     lms_id=groups.get("lms_id") or "", name=groups.get("name") or "", submitted_at=submitted,
                     late=late)


def make_layout(layout: str, assignment: str, items: dict[str, Path | None], pattern: str | None = None,
                time_format: str | None = None, worksheet: Path | None = None) -> Layout:
    """The layout to read ``items`` (path in the download -> file) with; ``auto`` detects it.
    ``worksheet``: Moodle's grading worksheet (CSV) downloaded beside the submissions (times, late)."""
    if pattern is not None:
        chosen = Pattern(pattern, time_format)
    elif layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    elif layout == "auto":
        chosen, best = Generic(assignment), 0
        for candidate in (Canvas(), Moodle(worksheet), Blackboard()):
            read = sum(candidate.parse(rel) is not None for rel in items)
            if read > best:
                chosen, best = candidate, read
    else:
        chosen = {"canvas": Canvas, "moodle": Moodle, "blackboard": Blackboard}.get(layout, Generic)
        chosen = chosen(assignment) if chosen is Generic else Moodle(worksheet) if chosen is Moodle else chosen()
    chosen.prepare(items)
    return chosen
