"""Where student code runs while it is graded: a kernel in a sandbox made of Linux namespaces and rlimits.

No Docker needed, root or not. ``kernel_config`` writes, for one submission, a *policy* (JSON) and a
*kernelspec* whose argv is this file run as a script (``python -I sandbox.py --policy P -f {connection_file}``),
points JUPYTER_PATH at it and tells nbgrader to use it (``Execute.kernel_name``). That script, the launcher,
builds the sandbox and finally execs ipykernel inside it:

    worker (nbgrader, outside)
      launcher        new user + mount + network namespace (its uid/gid map is written by a helper that stays
                      outside; no network: kernel and nbgrader talk over unix sockets in a folder of their own);
                      forwards SIGINT (interrupt), SIGTERM, SIGHUP to init; dies with the worker (PDEATHSIG)
        init (pid 1)  of a new PID namespace: fresh /proc (outside processes are invisible, so no
                      /proc/<pid>/root escape); every mount made read-only; the course root, the grading
                      workspace, the home folder and the folder of the connection file hidden behind empty
                      read-only tmpfs; the Python environment, course_lib and configured data folders
                      re-exposed read-only; the submission's autograded folder re-exposed read-write; private
                      /tmp, /var/tmp, /dev/shm (size-capped tmpfs; jupyter_client writes every kernel's
                      connection file, with its key, to the real /tmp)
          kernel      uid nobody when the instructor is root (else the instructor's uid), no capabilities,
                      no new privileges, rlimits (address space, CPU seconds, file size, processes, no core
                      dumps); exec ipykernel with a private copy of the connection file
    When init exits (the kernel died or was killed) the kernel kills every process left in its PID namespace.
    As root, the user namespace maps 0 (init, for the mounts) and 65534 (the kernel); otherwise only the
    instructor's uid. Either way the process limit counts per namespace: a fork bomb starves only itself.
    After the notebook ran, ``clean_workdir`` removes symlinks and special files the student left in the
    working folder and gives it back to the grader before nbgrader writes the graded notebook there.

Isolation levels (``SandboxSettings.describe``, recorded with every submission's status):
    namespaces    the above (network namespace included: no network at all, localhost included)
    unsandboxed   rlimits only, the kernel sees everything: only with ``allow_unsandboxed`` (namespaces missing)

Not covered: total memory of N parallel kernels and of a kernel's children (rlimits are per
process; cgroups would be needed), disk use of the working folder (one file <= file_bytes, not their number),
CPU time of the grading machinery itself (the submission timeout covers it), what the kernel sends back to
nbgrader (the notebook-level guards of ``sanitize`` deal with that).

The launcher half of this file imports only the standard library: it runs with ``python -I`` (the student's
folder, its working directory, is never on its sys.path) and before anything of the course is imported.
"""
from __future__ import annotations

import ctypes
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
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "ACCESS_KEY", "PRIVATE_KEY")


# ---------------------------------------------------------------------------------------------- settings

@dataclass
class SandboxSettings:
    """How kernels are isolated and limited while grading (from ``autograde``'s options).

    allow_unsandboxed   grade even if namespaces are unavailable (then: rlimits only, recorded as unsandboxed)
    memory_bytes        RLIMIT_AS of the kernel (address space; torch needs ~1.5 GiB of it to import)
    cpu_seconds         RLIMIT_CPU: the kernel is killed (SIGXCPU) after this much CPU time
    file_bytes          RLIMIT_FSIZE: largest file the kernel may write
    processes           RLIMIT_NPROC: processes + threads of the kernel's uid in its user namespace
    tmp_bytes           size of each private tmpfs (/tmp, /var/tmp, /dev/shm): they live in RAM
    read_only_paths     extra folders the notebooks read (data sets), re-exposed read-only if hidden
    level               "namespaces" or "unsandboxed"; chosen by ``resolve_settings``, None before
    """
    allow_unsandboxed: bool = False
    memory_bytes: int = 4 * GIB
    cpu_seconds: int = 900
    file_bytes: int = GIB
    processes: int = 256
    tmp_bytes: int = GIB
    read_only_paths: list[str] = field(default_factory=list)
    level: str | None = None

    def __post_init__(self):
        if not isinstance(self.allow_unsandboxed, bool):
            raise ValueError(f"allow_unsandboxed must be True or False, got {self.allow_unsandboxed!r}")
        for name, minimum in (("memory_bytes", 256 << 20), ("cpu_seconds", 1), ("file_bytes", 1 << 20),
                              ("processes", 16), ("tmp_bytes", 1 << 20)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if not isinstance(self.read_only_paths, (list, tuple)) or not all(
                isinstance(p, str) and os.path.isabs(p) for p in self.read_only_paths):
            raise ValueError(f"read_only_paths must be a list of absolute paths, got {self.read_only_paths!r}")
        self.read_only_paths = list(self.read_only_paths)
        if self.level not in (None, "namespaces", "unsandboxed"):
            raise ValueError(f"level must be None, 'namespaces' or 'unsandboxed', got {self.level!r}")

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
                  f"{self.file_bytes / GIB:g} GiB, {self.processes} processes, no core dumps")
        if self.level == "namespaces":
            who = f"uid {NOBODY}" if os.geteuid() == 0 else "the instructor's uid"
            return f"namespaces (user, mount, pid, network; course hidden; {who}); {limits}"
        return f"unsandboxed (allow_unsandboxed: limits only, the kernel can read everything); {limits}"


def resolve_settings(course, settings: SandboxSettings | None = None) -> SandboxSettings:
    """Settings with ``level`` chosen: namespaces when they work here, else unsandboxed if allowed, else an error."""
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
        raise ValueError(f"sandbox: cannot isolate student code here ({problem}); grading without isolation "
                         f"lets submissions read the solutions, hidden tests and gradebook. If you accept "
                         f"that, pass allow_unsandboxed=True (command line: --allow-unsandboxed)")
    return SandboxSettings.from_dict({**settings.to_dict(), "level": level})


def namespace_support(course) -> str | None:
    """None if the launcher can build its sandbox here (checked by running it once), else why not."""
    import subprocess
    import tempfile

    if sys.platform != "linux":
        return f"Linux namespaces are needed, this is {sys.platform}"
    course.workspace.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-", dir=course.workspace) as scratch:
        workdir = Path(scratch) / "work"
        workdir.mkdir()
        check = (f"import os, sys; hidden = os.path.exists({str(course.root / 'nbgrader_config.py')!r}); "
                 f"open('probe.txt', 'w').write('ok'); sys.exit(3 if hidden else 0)")
        settings = SandboxSettings(level="namespaces")
        policy = _policy(course, workdir, settings, [interpreter(), "-I", "-c", check])
        policy_path = Path(scratch) / "policy.json"
        policy_path.write_text(json.dumps(policy))
        try:
            done = subprocess.run([sys.executable, "-I", __file__, "--policy", str(policy_path)], cwd=workdir,
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"the sandbox launcher could not run: {err}"
        if done.returncode == 3:
            return "the course root was still visible inside the sandbox"
        if done.returncode != 0 or (workdir / "probe.txt").read_text() != "ok":
            lines = (done.stderr or done.stdout or "").strip().splitlines()
            return f"the sandbox launcher failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}"
    return None


# ------------------------------------------------------------------------------ policy and kernelspec

def _python_paths() -> list[str]:
    """What the kernel's interpreter needs to read: the environment, the base install, site-packages."""
    import site
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), *site.getsitepackages()}
    paths |= {sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return sorted(os.path.realpath(p) for p in paths if p and os.path.isdir(p))


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

    hide = _hidden(course)
    expose = {*_python_paths(), str(Path(course_lib.__file__).resolve().parent), *settings.read_only_paths}
    _check_read_only_paths(settings.read_only_paths, hide)
    root_mode = os.geteuid() == 0
    return {"level": settings.level, "workdir": str(workdir.resolve()), "writable": [str(workdir.resolve())],
            "isolate_network": True,
            "hide": sorted(os.path.realpath(p) for p in hide),
            "expose": sorted(os.path.realpath(p) for p in expose if os.path.exists(p)),
            "private": [p for p in PRIVATE_DIRS if os.path.isdir(p)],
            "uid": NOBODY if root_mode else os.getuid(), "gid": NOBODY if root_mode else os.getgid(),
            "limits": {"memory_bytes": settings.memory_bytes, "cpu_seconds": settings.cpu_seconds,
                       "file_bytes": settings.file_bytes, "processes": settings.processes},
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
    (folder / "init.pid").unlink(missing_ok=True)
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

    The kernel manager may SIGKILL the launcher; init then dies through PDEATHSIG, a moment later. Returns
    False if it is still there after ``timeout`` seconds.
    """
    import time

    import shutil

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
        ipc_dir = json.loads((folder / "policy.json").read_text()).get("ipc_dir")
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

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 1
SYS_MOUNT_SETATTR = 442  # the same number on x86_64 and arm64
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = (lambda s: None if s is None else str(s).encode())
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {fstype or source} {target}")


def _set_read_only(libc, target: str, read_only: bool = True, recursive: bool = False) -> None:
    attr = _MountAttr(MOUNT_ATTR_RDONLY if read_only else 0, 0 if read_only else MOUNT_ATTR_RDONLY, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    _check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, target.encode(), flags, ctypes.byref(attr),
                        ctypes.sizeof(attr)), f"mount_setattr {target} read_only={read_only}")


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _write_maps(pid: int, uid: int, gid: int, outer_uid: int, outer_gid: int) -> None:
    """Run by the helper (outside): map the sandbox's uid/gid; as root also map 0 (init's own, for mounts)."""
    if outer_uid == 0:
        Path(f"/proc/{pid}/uid_map").write_text(f"0 0 1\n{uid} {uid} 1\n")
        Path(f"/proc/{pid}/gid_map").write_text(f"0 0 1\n{gid} {gid} 1\n")
    else:  # an unprivileged user may map only itself, and must give up setgroups first
        Path(f"/proc/{pid}/setgroups").write_text("deny")
        Path(f"/proc/{pid}/uid_map").write_text(f"{outer_uid} {outer_uid} 1\n")
        Path(f"/proc/{pid}/gid_map").write_text(f"{outer_gid} {outer_gid} 1\n")


def _enter_namespaces(libc, policy: dict) -> None:
    """unshare user + mount + pid namespaces; a helper forked before (so still outside) writes the maps."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    parent, uid, gid = os.getpid(), os.geteuid(), os.getegid()
    helper = os.fork()
    if helper == 0:
        os.close(ready_w)
        os.close(done_r)
        message = b"ok"
        try:
            if os.read(ready_r, 1) == b"1":
                _write_maps(parent, policy["uid"], policy["gid"], uid, gid)
            else:
                message = b"unshare failed"
        except Exception as err:  # reported by the launcher
            message = f"uid/gid map: {err}".encode()
        os.write(done_w, message)
        os._exit(0)
    os.close(ready_r)
    os.close(done_w)
    network = CLONE_NEWNET if policy["isolate_network"] else 0
    failed = libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | network)
    errno = ctypes.get_errno()
    os.write(ready_w, b"0" if failed else b"1")
    message = os.read(done_r, 4096)
    os.waitpid(helper, 0)
    if failed:
        raise OSError(errno, f"unshare(user, mount, pid, network): {os.strerror(errno)}")
    if message != b"ok":
        raise OSError(message.decode(errors="replace"))


def _hide_and_expose(libc, policy: dict) -> None:
    """Mount tree of the sandbox (run by init, pid 1 of the new PID namespace)."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back out
    _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # our PID namespace only
    hidden = sorted(set(policy["hide"] + policy["private"]))
    exposed = [(p, False) for p in policy["expose"]] + [(p, True) for p in policy["writable"]]
    # read-only ones need a bind only where a hidden folder covers them, and not inside another exposed one
    exposed = [(p, rw) for p, rw in exposed if rw or any(_under(p, h) for h in hidden)]
    exposed = [(p, rw) for p, rw in exposed if rw or not any(q != p and _under(p, q) for q, _ in exposed)]
    for path, _ in exposed:  # binding it would bring back what is hidden inside it
        inside = [h for h in hidden if h != path and _under(h, path)]
        if inside:
            raise OSError(f"{path} cannot be shown read-only: it holds {inside[0]}, which must stay hidden")
    handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for p, _ in exposed}  # before hiding
    _set_read_only(libc, "/", recursive=True)  # every existing mount: read-only for the kernel
    for folder in sorted(hidden, key=lambda p: p.count("/")):
        if os.path.isdir(folder) and not os.path.islink(folder):  # (inside a folder hidden before: gone)
            private = folder in policy["private"]
            options = f"size={policy['tmp_bytes'] if private else 1 << 20},mode={'1777' if private else '0755'}"
            _mount(libc, "tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, options)
    for path, writable in sorted(exposed, key=lambda item: item[0].count("/")):
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(libc, f"/proc/self/fd/{handles[path]}", path, None, MS_BIND | MS_REC)
        _set_read_only(libc, path, read_only=not writable)
    for folder in policy["hide"]:
        if folder not in policy["private"] and os.path.ismount(folder):
            _set_read_only(libc, folder)
    for handle in handles.values():
        os.close(handle)


def _private_files(policy: dict, connection: bytes | None, fontlist: bytes | None) -> dict[str, str]:
    """The connection file copy and the kernel's home/cache folders in the private /tmp; returns env updates."""
    uid, gid = policy["uid"], policy["gid"]
    env = {"HOME": "/tmp/home", "TMPDIR": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib", "IPYTHONDIR": "/tmp/ipython",
           "XDG_CACHE_HOME": "/tmp/cache", "XDG_CONFIG_HOME": "/tmp/config", "JUPYTER_RUNTIME_DIR": "/tmp/runtime",
           "PYTHONDONTWRITEBYTECODE": "1"}
    for key in ("HOME", "MPLCONFIGDIR", "IPYTHONDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "JUPYTER_RUNTIME_DIR"):
        os.makedirs(env[key], mode=0o700, exist_ok=True)
        os.chown(env[key], uid, gid)
    if fontlist is not None:
        Path("/tmp/matplotlib/fontlist.json").write_bytes(fontlist)
        os.rename("/tmp/matplotlib/fontlist.json", f"/tmp/matplotlib/{Path(policy['matplotlib_cache']).name}")
        os.chown(f"/tmp/matplotlib/{Path(policy['matplotlib_cache']).name}", uid, gid)
    if connection is not None:
        fd = os.open("/tmp/runtime/kernel.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, connection)
        os.close(fd)
        os.chown("/tmp/runtime/kernel.json", uid, gid)
    return env


def _limit(limits: dict) -> None:
    import resource

    for name, value in (("RLIMIT_AS", limits["memory_bytes"]), ("RLIMIT_FSIZE", limits["file_bytes"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 5))


def _kernel_env(extra: dict[str, str], sandboxed: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not any(word in k.upper() for word in SECRET_WORDS)}
    if sandboxed:  # ipykernel polls JPY_PARENT_PID unless it is 1; its parent is init (pid 1), which kills it
        env["JPY_PARENT_PID"] = "1"
    return {**env, **extra}


def _drop_privileges(libc, policy: dict) -> None:
    """Run in the kernel process before exec: no capabilities left, the sandbox's uid, no new privileges."""
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last_cap + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    if os.getuid() == 0:  # root mode: supplementary groups too (the instructor's own otherwise)
        os.setgroups([])
    os.setresgid(policy["gid"], policy["gid"], policy["gid"])
    os.setresuid(policy["uid"], policy["uid"], policy["uid"])
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def _forward_signals_to(pid_holder: list[int]) -> None:
    def forward(signum, _frame):
        if pid_holder:
            try:
                os.kill(pid_holder[0], signum)
            except ProcessLookupError:
                pass
    for signum in FORWARDED:
        signal.signal(signum, forward)


def _wait_status(pid: int, reap_all: bool = False) -> int:
    """Wait for ``pid`` (reaping any other child on the way, as init must); its exit code, 128 + signal if killed."""
    while True:
        done, status = os.waitpid(-1 if reap_all else pid, 0)
        if done == pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _run_init(libc, policy: dict, argv: list[str], connection: bytes | None, fontlist: bytes | None,
              alive: int) -> int:
    """PID 1 of the sandbox: mounts, then the kernel as its child; exits when the kernel does."""
    import select

    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if select.select([alive], [], [], 0)[0]:  # EOF: the launcher died before we could ask to die with it
        return 1
    os.setsid()  # not in the launcher's process group: signals reach the kernel once, through us
    _hide_and_expose(libc, policy)
    env = _kernel_env(_private_files(policy, connection, fontlist))
    os.chdir(policy["workdir"])  # re-resolved through the new mounts (the old cwd was the hidden original)
    kernel = [0]
    _forward_signals_to(kernel)
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _drop_privileges(libc, policy)
            _limit(policy["limits"])
            os.execve(argv[0], argv, env)
        except BaseException as err:
            print(f"sandbox: could not start the kernel: {err}", file=sys.stderr, flush=True)
        os._exit(127)
    kernel[0] = pid
    return _wait_status(pid, reap_all=True)


def launch(policy: dict, connection_file: str | None) -> int:
    """The launcher's job (see the module docstring); returns the exit code to leave with."""
    libc = _libc()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the worker died: so do we, and init with us
    argv = [connection_file if a == "{connection_file}" else a for a in policy["kernel_argv"]]
    if os.path.realpath(os.getcwd()) != policy["workdir"]:
        raise OSError(f"the kernel must start in {policy['workdir']}, not {os.getcwd()}")
    if policy["level"] != "namespaces":  # allowed by the instructor: limits only
        _limit(policy["limits"])
        os.execve(argv[0], argv, _kernel_env({}, sandboxed=False))
    connection = Path(connection_file).read_bytes() if connection_file else None
    cache = policy.get("matplotlib_cache")
    fontlist = Path(cache).read_bytes() if cache and os.path.isfile(cache) else None
    if os.geteuid() == 0:  # the kernel's uid must own its working folder (and the folder of its sockets)
        for top in policy["writable"]:
            for folder, dirs, files in os.walk(top):
                for name in [*dirs, *files, ""]:
                    os.lchown(os.path.join(folder, name), policy["uid"], policy["gid"])
    if connection_file:  # other kernels' connection files (their keys) sit next to it: hide the folder
        policy = {**policy, "hide": [*policy["hide"], os.path.realpath(os.path.dirname(connection_file))]}
        argv = [("/tmp/runtime/kernel.json" if a == connection_file else a) for a in argv]
    pidfile = os.open(policy["init_pidfile"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644) \
        if policy.get("init_pidfile") else None  # opened now: after unshare the workspace is hidden
    alive_r, alive_w = os.pipe()  # init sees EOF on it once the launcher is gone
    _enter_namespaces(libc, policy)
    init = [0]
    _forward_signals_to(init)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(alive_w)
            code = _run_init(libc, policy, argv, connection, fontlist, alive_r)
        except BaseException as err:
            print(f"sandbox: {err}", file=sys.stderr, flush=True)
        os._exit(code)
    os.close(alive_r)
    init[0] = pid
    if pidfile is not None:
        os.write(pidfile, str(pid).encode())
        os.close(pidfile)
    return _wait_status(pid)


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
