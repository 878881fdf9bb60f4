"""collect reads real LMS downloads, and every student it sees has a row in the export.

The downloads are built here, file by file, in the naming conventions the LMSs document:
    Canvas      <lastfirst>[_late]_<user id>_<submission id>_<file>; a re-upload gets "-1" before the extension
    Moodle      "<Full Name>_<participant id>_assignsubmission_file_/<file>" (folders, names with spaces)
    Blackboard  <Assignment>_<username>_attempt_<YYYY-MM-DD-HH-MM-SS>_<file> plus the attempt's .txt receipt
and the toy course of test_grading.py (no torch, quick). Nothing is autograded here: export reports what
collect stored as failed-not-autograded, and what it could not store under its own failed-<reason>.
"""
from __future__ import annotations

import csv
import io
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grading import _toy_notebook, empty_gradebook, toy  # noqa: E402,F401  (fixtures)

from course_lib.grading import collect, export_csv, export_rows, load_roster  # noqa: E402
from course_lib.grading.__main__ import main  # noqa: E402

NB = nbformat.writes(_toy_notebook())
OTHER_NB = NB.replace("return 2 * x", "return x + x")  # another valid notebook, different bytes


def _zip(path: Path, files: dict[str, str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _rows(toy, tmp_path) -> dict[str, dict]:
    """The CSV export of assignment toy, as text (what the instructor opens), student -> row."""
    export_csv(toy, tmp_path / "grades.csv")
    with open(tmp_path / "grades.csv", newline="") as f:
        return {r["student"]: r for r in csv.DictReader(f) if r["assignment"] == "toy"}


def test_canvas_download(toy, tmp_path):
    download = _zip(tmp_path / "submissions.zip", {
        "smithjane_123_456_toy.ipynb": NB,
        "smithjane_123_456_weights.txt": "fast",
        "doejohn_late_789_1011_toy-1.ipynb": NB,  # late, and a re-upload (Canvas adds -1)
        "leeann_222_333_toy.ipynb": NB,
        "leeann_222_333_toy copy.ipynb": OTHER_NB,  # an extra copy: the exact name is graded
        "parkkim_555_666_toy.ipynb": NB,
        "parkkim_999_777_toy.ipynb": OTHER_NB,  # two Canvas users with the same name: two students
        "grading notes.txt": "not a Canvas name",
        "ortiz_toy.ipynb": NB,  # not a Canvas name either, but a student with a notebook: read as <student>_<file>
        "notes_for_ta.txt": "a flat name without a notebook: no student",
    })
    report = collect(toy, download, "toy")
    assert (report.layout, report.detected) == ("canvas", True)
    assert sorted(report.students) == ["doejohn", "leeann", "ortiz", "parkkim-555", "parkkim-999", "smithjane"], \
        report.summary()
    assert "ortiz_toy.ipynb is not a canvas name" in " ".join(report.submissions["ortiz"].notes)
    assert report.students["smithjane"] == ["toy.ipynb", "weights.txt"]
    assert (toy.submission_dir("doejohn", "toy") / "toy.ipynb").read_text() == NB
    assert (toy.submission_dir("leeann", "toy") / "toy.ipynb").read_text() == NB
    assert not (toy.submission_dir("leeann", "toy") / "toy copy.ipynb").exists()
    assert (toy.collect_dir / "toy" / "extras" / "leeann" / "leeann_222_333_toy copy.ipynb").read_text() == OTHER_NB
    assert "toy copy.ipynb" in " ".join(report.submissions["leeann"].notes)
    assert (toy.submission_dir("parkkim-999", "toy") / "toy.ipynb").read_text() == OTHER_NB
    assert dict(report.ignored)["grading notes.txt"].startswith("does not fit the canvas layout")
    assert dict(report.ignored)["notes_for_ta.txt"] == "no notebook from a student 'notes'"
    rows = _rows(toy, tmp_path)
    assert {s: (r["late"], r["lms_id"]) for s, r in rows.items()} == {
        "doejohn": ("yes", "789"), "leeann": ("no", "222"), "ortiz": ("", ""), "parkkim-555": ("no", "555"),
        "parkkim-999": ("no", "999"), "smithjane": ("no", "123")}
    assert {r["status"] for r in rows.values()} == {"failed-not-autograded"}
    assert all(r["submitted_at"] == "" for r in rows.values()), "Canvas file names carry no time"


WORKSHEET = """Identifier,Full name,Email address,Status,Grade,Maximum Grade,Grade can be changed,\
Last modified (submission),Last modified (grade),Feedback comments
Participant 1001,Jane Smith,jane@example.org,Submitted for grading,,3.00,Yes,"Saturday, 14 March 2026, 10:22 AM",-,
Participant 1002,José Núñez,jose@example.org,Submitted for grading - Assignment was submitted 1 day 9 hours late,\
,3.00,Yes,"Monday, 16 March 2026, 9:05 PM",-,
Participant 1003,Bob Lee,bob@example.org,Submitted for grading,,3.00,Yes,"Sunday, 15 March 2026, 9:00 AM",-,
Participant 1004,Ann Ho,ann@example.org,No submission,,3.00,Yes,-,-,
"""


def test_moodle_download_with_spaces_and_accents(toy, tmp_path):
    folder = "Jane Smith_1001_assignsubmission_file_/"
    download = _zip(tmp_path / "COURSE-Toy-12345.zip", {
        folder + "toy.ipynb": NB,
        folder + "weights.txt": "fast",
        "José Núñez_1002_assignsubmission_file_/toy (1).ipynb": NB,
        "Bob Lee_1003_assignsubmission_onlinetext_/onlinetext.html": "<p>see my notebook</p>",
        "Bob Lee_1003_assignsubmission_file_/toy.ipynb": NB,
        "Ann Ho_1004_assignsubmission_file_toy.ipynb": NB,  # older Moodle: flat, no folders
        "Grades-TOY-Toy-12345.csv": WORKSHEET,  # the grading worksheet, downloaded beside the submissions
    })
    report = collect(toy, download, "toy")
    assert (report.layout, report.detected) == ("moodle", True)
    assert sorted(report.students) == ["Ann-Ho", "Bob-Lee", "Jane-Smith", "Jose-Nunez"], report.summary()
    assert report.students["Jane-Smith"] == ["toy.ipynb", "weights.txt"]
    assert report.students["Bob-Lee"] == ["onlinetext.html", "toy.ipynb"]
    assert (toy.submission_dir("Jose-Nunez", "toy") / "toy.ipynb").read_text() == NB
    jose = report.submissions["Jose-Nunez"]
    assert (jose.name, jose.lms_id) == ("José Núñez", "1002")
    assert "'José Núñez'" in " ".join(jose.notes) and "'toy (1).ipynb' stored as 'toy.ipynb'" in " ".join(jose.notes)
    assert "read as Moodle's grading worksheet" in " ".join(report.notes) and not report.ignored
    rows = _rows(toy, tmp_path)
    assert rows["Jose-Nunez"]["name"] == "José Núñez" and rows["Jane-Smith"]["lms_id"] == "1001"
    assert {s: (r["submitted_at"], r["late"]) for s, r in rows.items()} == {
        "Jane-Smith": ("2026-03-14T10:22:00", ""), "Jose-Nunez": ("2026-03-16T21:05:00", "yes"),
        "Bob-Lee": ("2026-03-15T09:00:00", ""), "Ann-Ho": ("", "")}
    # a download holding a single student's folder: that folder is the student, not a wrapper
    single = _zip(tmp_path / "one.zip", {folder + "toy.ipynb": OTHER_NB})
    (tmp_path / "worksheet.csv").write_text(WORKSHEET)  # the worksheet downloaded on its own
    assert sorted(collect(toy, single, "toy", worksheet=tmp_path / "worksheet.csv").students) == ["Jane-Smith"]
    assert (toy.submission_dir("Jane-Smith", "toy") / "toy.ipynb").read_text() == OTHER_NB
    assert load_roster(toy, "toy")["Jane-Smith"].submitted_at == "2026-03-14T10:22:00"
    (tmp_path / "other.csv").write_text("student,grade\nx,1\n")
    with pytest.raises(ValueError, match="worksheet must be Moodle's grading worksheet"):
        collect(toy, single, "toy", layout="moodle", worksheet=tmp_path / "other.csv")


RECEIPT = """Name: {name} ({user})
Assignment: Toy Assignment
Date Submitted: {date}
Current Grade: Needs Grading

Submission Field:
There is no student submission text data for this assignment.

Comments:
There are no student comments for this assignment.

Files:
{files}"""


def _receipt(name, user, date, files: dict[str, str]) -> str:
    listed = "".join(f"\tOriginal filename: {orig}\n\tFilename: {stored}\n" for orig, stored in files.items())
    return RECEIPT.format(name=name, user=user, date=date, files=listed)


def test_blackboard_download_keeps_the_time_and_the_latest_attempt(toy, tmp_path):
    a = "Toy Assignment"
    jsmith, jdoe = f"{a}_jsmith_attempt_2026-03-14-10-22-45", f"{a}_j_doe_attempt_2026-03-15-09-00-00"
    early, late = f"{a}_bwayne_attempt_2026-03-13-08-00-00", f"{a}_bwayne_attempt_2026-03-16-18-30-00"
    download = _zip(tmp_path / "gradebook_TOY_Toy20Assignment_2026-03-20-12-00-00.zip", {
        f"{jsmith}_toy.ipynb": NB,
        f"{jsmith}.txt": _receipt("Jane Smith", "jsmith", "Saturday, 14 March 2026 10:22:45 o'clock GMT",
                                  {"toy.ipynb": f"{jsmith}_toy.ipynb"}),
        # a username with "_": only the receipt tells where it starts; Blackboard renamed the weights file
        f"{jdoe}_toy.ipynb": NB,
        f"{jdoe}_weights(1).txt": "fast",
        f"{jdoe}.txt": _receipt("John Doe", "j_doe", "Sunday, 15 March 2026 09:00:00 o'clock GMT",
                                {"toy.ipynb": f"{jdoe}_toy.ipynb", "weights.txt": f"{jdoe}_weights(1).txt"}),
        f"{early}_toy.ipynb": OTHER_NB,  # two attempts: the later one is the submission
        f"{late}_toy.ipynb": NB,
    })
    report = collect(toy, download, "toy", due="2026-03-15T23:59:00")
    assert (report.layout, report.detected) == ("blackboard", True)
    assert sorted(report.students) == ["bwayne", "j_doe", "jsmith"], report.summary()
    assert report.students["j_doe"] == ["toy.ipynb", "weights.txt"]
    assert (toy.submission_dir("bwayne", "toy") / "toy.ipynb").read_text() == NB
    assert "earlier attempt 2026-03-13T08:00:00" in " ".join(report.submissions["bwayne"].notes)
    assert (toy.collect_dir / "toy" / "extras" / "jsmith" / f"{jsmith}.txt").is_file(), "the receipt is kept"
    rows = _rows(toy, tmp_path)
    assert {s: (r["submitted_at"], r["late"]) for s, r in rows.items()} == {
        "bwayne": ("2026-03-16T18:30:00", "yes"), "j_doe": ("2026-03-15T09:00:00", "no"),
        "jsmith": ("2026-03-14T10:22:45", "no")}
    assert rows["jsmith"]["name"] == "Jane Smith"


def test_a_pattern_of_your_own(toy, tmp_path):
    root = tmp_path / "export"
    for student, stamp, late in [("u1001", "20260314-1022", ""), ("u1002", "20260316-0800", "LATE-")]:
        folder = root / student / f"{late}{stamp}"
        folder.mkdir(parents=True)
        (folder / "toy.ipynb").write_text(NB)
    pattern = r"(?P<student>u\d+)/(?P<late>LATE-)?(?P<submitted>\d{8}-\d{4})/(?P<file>[^/]+)"
    report = collect(toy, root, "toy", pattern=pattern, time_format="%Y%m%d-%H%M")
    assert report.layout == "pattern" and sorted(report.students) == ["u1001", "u1002"], report.summary()
    roster = load_roster(toy, "toy")
    assert (roster["u1001"].submitted_at, roster["u1001"].late) == ("2026-03-14T10:22:00", False)
    assert (roster["u1002"].submitted_at, roster["u1002"].late) == ("2026-03-16T08:00:00", True)
    with pytest.raises(ValueError, match="pattern must have a named group"):
        collect(toy, root, "toy", pattern=r"(?P<who>u\d+)/.*")
    with pytest.raises(ValueError, match="pattern must be a regular expression"):
        collect(toy, root, "toy", pattern=r"(?P<student>u\d+")
    with pytest.raises(ValueError, match="layout must be one of"):
        collect(toy, root, "toy", layout="sakai")


def _corrupt(path: Path, marker: bytes) -> None:
    """Flip the bytes of a stored member: its CRC no longer matches, the zip's directory still reads."""
    data = path.read_bytes()
    assert data.count(marker) == 1
    path.write_bytes(data.replace(marker, marker.upper()))


def _corrupt_deflated(path: Path, name: str) -> None:
    """Overwrite the middle of a deflated member's compressed bytes: decompressing it fails."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    middle = start + info.compress_size // 2
    data[middle:middle + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


def test_no_submission_without_a_row(toy, tmp_path):
    """Copies, spaces, clashes, archives, unreadable and unsafe entries: each student gets a row and a status."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("my work/toy.ipynb", NB)
        zf.writestr("my work/weights.txt", "fast")
    download = _zip(tmp_path / "toy_download.zip", {
        "alice/toy.ipynb": NB,  # the expected name, plus two copies a browser made
        "alice/toy copy.ipynb": OTHER_NB,
        "alice/toy (1).ipynb": OTHER_NB,
        "bob_toy copy.ipynb": NB,  # two copies and no original: which one? say so
        "bob_toy (1).ipynb": OTHER_NB,
        "Jane Doe/toy.ipynb": NB,  # a folder name with a space
        "Kim Lee_toy.ipynb": NB,  # ... and a flat file name with one
        "Jane-Doe/toy.ipynb": OTHER_NB,  # ... and another student, whose id it would normalise to
        "carol/submission.zip": inner.getvalue(),  # the notebook inside a zip
        "dave/toy.ipynb": b"payload-of-dave " + NB.encode(),  # an unreadable member (bad CRC)
        "eve_toy.ipynb": NB,  # the same student twice, with different notebooks
        "eve/toy.ipynb": OTHER_NB,
        "../mallory_toy.ipynb": NB,  # zip-slip: never written, still reported with its student
        "frank/broken.zip": b"PK\x03\x04 this is not a zip",
        "hank/toy.ipynb": NB,  # one name twice in the zip, different contents
    })
    with zipfile.ZipFile(download, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("hank/toy.ipynb", OTHER_NB)
    with zipfile.ZipFile(download, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("gina/toy.ipynb", NB)  # a deflated notebook whose compressed bytes are damaged
        zf.writestr("ivan/toy.ipynb", NB)  # a good notebook, but the weights beside it are damaged
        zf.writestr("ivan/weights.txt", "fast " * 2000)
    _corrupt(download, b"payload-of-dave")
    _corrupt_deflated(download, "gina/toy.ipynb")
    _corrupt_deflated(download, "ivan/weights.txt")
    report = collect(toy, download, "toy")
    statuses = {s: sub.status for s, sub in report.submissions.items()}
    assert statuses == {
        "alice": "collected", "bob": "failed-ambiguous-notebooks", "carol": "collected",
        "dave": "failed-unreadable-archive", "eve": "failed-conflicting-files", "frank": "failed-unreadable-archive",
        "Jane-Doe": "collected", "Jane-Doe-2": "collected", "Kim-Lee": "collected",
        "mallory": "failed-unsafe-path", "gina": "failed-unreadable-archive", "hank": "failed-conflicting-files",
        "ivan": "failed-unreadable-archive"}, report.summary()
    assert (toy.submission_dir("alice", "toy") / "toy.ipynb").read_text() == NB
    assert report.students["carol"] == ["toy.ipynb", "weights.txt"]
    assert (toy.submission_dir("Jane-Doe", "toy") / "toy.ipynb").read_text() == OTHER_NB
    assert (toy.submission_dir("Jane-Doe-2", "toy") / "toy.ipynb").read_text() == NB
    assert "'Jane Doe'" in " ".join(report.submissions["Jane-Doe-2"].notes)
    for student in ("bob", "dave", "eve", "mallory", "frank", "gina", "hank", "ivan"):
        assert not toy.submission_dir(student, "toy").exists(), f"{student}: nothing stored for a failed entry"
    assert not (tmp_path.parent / "mallory_toy.ipynb").exists()

    rows = _rows(toy, tmp_path)
    roster = load_roster(toy, "toy")
    assert set(roster) == set(statuses) and set(rows) >= set(roster), "the export lost a student collect saw"
    for student, status in statuses.items():
        expected = "failed-not-autograded" if status == "collected" else status
        assert rows[student]["status"] == expected and rows[student]["score"] == "", rows[student]
        assert status == "collected" or roster[student].reason in rows[student]["detail"]
    assert "'toy copy.ipynb'" in rows["alice"]["detail"] and "'toy (1).ipynb'" in rows["alice"]["detail"]
    assert "'bob_toy copy.ipynb'" not in rows["bob"]["detail"] and "toy copy.ipynb" in rows["bob"]["detail"]

    # a later download replaces: alice now fails, her earlier submission goes, her row stays
    again = _zip(tmp_path / "again.zip", {"alice_toy copy.ipynb": NB, "alice_toy (2).ipynb": OTHER_NB})
    assert collect(toy, again, "toy").submissions["alice"].status == "failed-ambiguous-notebooks"
    assert not toy.submission_dir("alice", "toy").exists()
    rows = _rows(toy, tmp_path)
    assert rows["alice"]["status"] == "failed-ambiguous-notebooks" and set(rows) >= set(statuses)
    # a stored submission deleted by hand is reported, not dropped
    import shutil

    shutil.rmtree(toy.submission_dir("carol", "toy"))
    assert {r["student"]: r["status"] for r in export_rows(toy)}["carol"] == "failed-submission-removed"


def test_collect_from_the_command_line(toy, tmp_path, capsys):
    download = _zip(tmp_path / "bb.zip", {
        "Toy_kim_attempt_2026-03-16-08-00-00_toy.ipynb": NB,
        "Toy_lee_attempt_2026-03-14-08-00-00_toy copy.ipynb": NB,
        "Toy_lee_attempt_2026-03-14-08-00-00_toy (1).ipynb": OTHER_NB,
    })
    assert main(["collect", str(download), "--assignment", "toy", "--layout", "blackboard",
                 "--due", "2026-03-15T00:00:00"]) == 0
    out = capsys.readouterr().out
    assert "collected 1 submission(s) of toy (blackboard layout): kim" in out
    assert "lee: failed-ambiguous-notebooks" in out
    assert main(["export", str(tmp_path / "grades.csv")]) == 0
    with open(tmp_path / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert (rows["kim"]["late"], rows["lee"]["status"]) == ("yes", "failed-ambiguous-notebooks")
