"""Plain nbgrader and formgrader on this course's nbgrader_config.py.

- `nbgrader autograde` / `nbgrader validate` from the course root stop before anything runs, naming the course
  command; nbgrader's API (what formgrader's buttons call) refuses autograding and notebook execution too.
- Formgrader on a fresh clone (no grading/ folder, `.venv/bin` not on PATH): a real `jupyter server` with the
  formgrader extension creates the gradebook on first request, lists the course's assignments, shows the grades
  course_lib.grading keeps in the gradebook, and its Autograde button answers with the course command.
A submission here writes a marker file when its code runs: it must never appear.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grading import _toy_notebook, empty_gradebook, toy  # noqa: E402,F401  (fixtures)

from course_lib.grading import Course, autograde  # noqa: E402
from course_lib.grading.plain import PLAIN_MESSAGE, TOOL_ENV, plain_command  # noqa: E402
from course_lib.grading.sandbox import SandboxSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m course_lib.grading autograde"


def _plain_env(root: Path) -> dict[str, str]:
    """The environment of an instructor's shell: no course_lib marker, no workspace override, no venv on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in (TOOL_ENV, "COURSE_GRADING_DIR", "COURSE_RELEASE_DIR", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve()) or "/usr/bin:/bin"
    env["HOME"] = str(root.parent / "home")
    env["JUPYTER_CONFIG_DIR"] = str(root.parent / "home" / ".jupyter")
    return env


def _hostile_submission(course: Course, student: str, marker: Path) -> None:
    """The toy solution whose answer cell also writes ``marker``: proof that student code ran."""
    nb = _toy_notebook()
    nb.cells[2].source = f"open({str(marker)!r}, 'w').write('ran')\n" + nb.cells[2].source
    folder = course.submission_dir(student, "toy")
    folder.mkdir(parents=True)
    nbformat.write(nb, str(folder / "toy.ipynb"))


def test_plain_command_detection():
    assert plain_command(["/x/.venv/bin/nbgrader", "autograde", "a1_vae"]) == "autograde"
    assert plain_command(["/x/bin/jupyter-nbgrader", "--debug", "validate", "nb.ipynb"]) == "validate"
    assert plain_command(["/x/site-packages/nbgrader/__main__.py", "autograde"]) == "autograde"
    assert plain_command(["/x/course_lib/grading/__main__.py", "autograde"]) is None
    assert plain_command(["/x/bin/jupyter-lab"]) is None


def test_plain_nbgrader_commands_are_refused(toy, tmp_path):
    marker = tmp_path / "student_code_ran"
    _hostile_submission(toy, "alice", marker)
    nbgrader = str(Path(sys.executable).parent / "nbgrader")
    env = _plain_env(toy.root)
    for argv, message in [([nbgrader, "autograde", "toy", "--force"], PLAIN_MESSAGE["autograde"]),
                          ([nbgrader, "validate", str(toy.submission_dir("alice", "toy") / "toy.ipynb")],
                           PLAIN_MESSAGE["validate"])]:
        result = subprocess.run(argv, cwd=toy.root, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0, result.stdout + result.stderr
        assert message.splitlines()[0] in result.stderr and "python -m course_lib.grading" in result.stderr
    assert not marker.exists(), "student code ran under plain nbgrader"
    assert not (toy.autograded_dir / "alice").exists()


def test_nbgrader_api_refuses_outside_course_lib(toy, tmp_path, monkeypatch):
    """What formgrader does: load nbgrader_config.py from the course root and call NbGraderAPI."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.validator import Validator
    from traitlets.config.loader import PyFileConfigLoader

    marker = tmp_path / "student_code_ran"
    _hostile_submission(toy, "alice", marker)
    monkeypatch.delenv(TOOL_ENV, raising=False)
    config = PyFileConfigLoader("nbgrader_config.py", path=str(toy.root)).load_config()
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    result = api.autograde("toy", "alice")
    assert not result["success"]
    assert COMMAND in (result.get("error") or "") + (result.get("log") or ""), result
    with pytest.raises(Exception, match="course_lib.grading release"):
        Validator(config=config).validate(str(toy.submission_dir("alice", "toy") / "toy.ipynb"))
    assert not marker.exists(), "student code ran under plain nbgrader"
    assert not (toy.autograded_dir / "alice" / "toy").exists()
    # course_lib.grading loads the same file with its marker: nothing is refused there
    assert "pre_convert_hook" not in toy.config().Autograde and "kernel_manager_class" not in toy.config().Execute


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, token: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"},
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


@pytest.fixture
def fresh_clone(tmp_path):
    """The course as a fresh clone has it: solutions/ and nbgrader_config.py, no grading/ folder."""
    root = tmp_path / "clone"
    for name in ("toy", "toy2"):
        (root / "solutions" / name).mkdir(parents=True)
        nbformat.write(_toy_notebook(), str(root / "solutions" / name / f"{name}.ipynb"))
    shutil.copy(ROOT / "nbgrader_config.py", root)
    (tmp_path / "home").mkdir()
    return root


def test_formgrader_on_a_fresh_clone(fresh_clone, tmp_path):
    root, token, port = fresh_clone, "course-test-token", _free_port()
    assert not (root / "grading").exists()
    env = _plain_env(root)
    server = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
                               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                               "--ServerApp.allow_root=True",  # CI containers run as root
                               f"--ServerApp.root_dir={root}"],
                              cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _request(f"{base}/api/status", token)[0] == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"jupyter server did not start:\n{server.communicate()[0][-3000:]}")
            time.sleep(0.5)

        status, body = _request(f"{base}/formgrader/api/assignments", token)
        assert status == 200, body[-2000:]
        assert sorted(a["name"] for a in json.loads(body)) == ["toy", "toy2"]
        with sqlite3.connect(root / "grading" / "gradebook.db") as db:  # made on demand, with alembic's version
            assert db.execute("SELECT version_num FROM alembic_version").fetchone()
        status, body = _request(f"{base}/courses", token)  # the Assignment List tab: no "Error fetching courses!"
        assert status == 200 and json.loads(body)["success"], body[-2000:]

        # the grades course_lib.grading's autograde wrote are the grades formgrader shows (the toy solution
        # without its weights file scores 2 of 3: tests/test_grading.py); isolation is tested elsewhere
        course = Course(root=root)
        solution = course.submission_dir("alice", "toy")
        solution.mkdir(parents=True)
        shutil.copy(root / "solutions" / "toy" / "toy.ipynb", solution)
        graded, = autograde(course, "toy", ["alice"], sandbox=SandboxSettings(allow_unsandboxed=True))
        assert (graded.status, graded.score, graded.max_score) == ("graded", 2.0, 3.0), graded
        status, body = _request(f"{base}/formgrader/api/submissions/toy", token)
        assert status == 200, body[-2000:]
        shown = {s["student"]: (s["score"], s["max_score"], s["autograded"]) for s in json.loads(body)}
        assert shown["alice"] == (2.0, 3.0, True)
        status, body = _request(f"{base}/formgrader/api/students", token)
        assert {s["id"]: s["score"] for s in json.loads(body)}["alice"] == 2.0
        marker = tmp_path / "student_code_ran"
        _hostile_submission(course, "mallory", marker)

        # the Autograde button answers with the course command; the submission's code never runs
        status, body = _request(f"{base}/formgrader/api/submission/toy/mallory/autograde", token, "POST")
        result = json.loads(body)
        assert status == 200 and not result["success"] and COMMAND in result["error"] + (result["log"] or ""), body
        assert not marker.exists(), "formgrader's Autograde ran student code"
    finally:
        server.terminate()
        try:
            output = server.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            output = server.communicate()[0]
    assert "unable to open database file" not in output and "No such file or directory: 'alembic'" not in output
