"""Verdicts decided outside the student's process: the grader's own checks of what the kernel computed.

A test cell runs in the student's kernel, which the student's code controls: values can lie about themselves,
torch can be intercepted, the test's error can be swallowed. So every checked test cell also gets a verdict
from this module, computed in the grading worker (a process the student's code never touches):

    1. before the notebook runs, the worker draws inputs from a secret seed (new for every submission) and
       writes them to ``.grader-<token>-<test>.in.safetensors`` in the kernel's folder;
    2. a probe cell, injected right before the test cell, calls the student's names on those inputs in the
       kernel and writes what they return as plain data (tensors in safetensors, numbers and strings in JSON);
    3. after the kernel is gone, the worker reads those files (no pickle, no live object), computes the
       reference itself from its own copy of the inputs, and compares within a tolerance;
    4. a failed check adds an error to the test cell's outputs before nbgrader scores it, so the test scores 0
       in nbgrader's gradebook (feedback, formgrader and export read it from there as usual).

A test's points = the test passed in the kernel AND its check passed here. A test without a check keeps
nbgrader's verdict. Files a check reads (trained weights) are read from the submission folder, which the kernel
cannot see, not from the kernel's copy.

Spec format: ``solutions/<assignment>/checks.py`` (instructor-only: nbgrader_config.py keeps every ``.py`` of
solutions/<a>/ out of the release and out of the grading folder) defines ``CHECKS``, test grade_id -> Check::

    import torch
    from course_lib.grading.verdicts import Check

    def _kl_inputs(g):                       # g: a torch.Generator seeded from a secret, per submission
        return {"mean": torch.randn(5, 16, generator=g) * 2, "logvar": torch.randn(5, 16, generator=g) * 2}

    def _kl_expected(x):                     # runs in the grader; x: the inputs above (float32 tensors)
        m, lv = x["mean"].double(), x["logvar"].double()
        return {"kl": 0.5 * (m**2 + lv.exp() - 1 - lv).sum(1)}

    CHECKS = {
        "test_kl_divergence": Check(
            probe="outputs['kl'] = kl_divergence(inputs['mean'], inputs['logvar'])",
            inputs=_kl_inputs, expect=_kl_expected, rtol=1e-5, atol=1e-5),
    }

    probe    Python run in the kernel, in a copy of the notebook's namespace, with ``inputs`` (dict of tensors)
             and ``outputs`` (dict to fill: tensors, or ints/floats/bools/strings/lists of them). Keep it short:
             call the student's names, nothing else. "" = nothing runs in the kernel (a judge-only check).
    inputs   (generator) -> dict of tensors; optional (a probe may need none)
    expect   (inputs) -> dict of expected outputs; each is compared with the output of the same name:
             tensors by shape, kind (bool / integer / floating) and |got - want| <= atol + rtol |want|
             (computed in float64), numbers alike, ints, bools and strings exactly, lists element-wise
    rtol, atol  the tolerance; ``tolerances`` overrides it per output name: {"name": (rtol, atol)}
    judge    (Trial) -> failure message or None: a custom verdict instead of ``expect`` (Trial has inputs,
             outputs, submitted: the submission folder, generator: seeded for the judge's own sampling)
    reads    for a deterministic judge-only check (no probe, no use of ``generator``): the submitted files it
             reads; its verdict is then cached by the content of those files, checks.py and course_lib
             (COURSE_GRADER_REMEMBER_VERDICTS=0 in the environment of autograde judges everything again)

Tolerances follow from the arithmetic: a float32 result of depth n and magnitude m carries ~1.2e-7 * m * n of
rounding error; references are computed in float64 from the same float32 inputs.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nbformat import from_dict
from traitlets import Unicode

from nbgrader.preprocessors import NbGraderPreprocessor

__all__ = ["Check", "Trial", "load_checks", "compare", "cached_folder", "tiny_sd_folder", "InjectProbes",
           "ApplyVerdicts", "CHECKS_FILE"]

CHECKS_FILE = "checks.py"
META = "course_grading"          # same key as sanitize.META: metadata the kernel never sees
MAX_OUTPUT_BYTES = 256 * 2**20   # a probe's output file larger than this fails the check unread
PREFIX = ".grader-"


@dataclass(frozen=True)
class Check:
    """One test cell's trusted check (see the module docstring)."""
    probe: str = ""
    inputs: Callable | None = None
    expect: Callable | None = None
    rtol: float = 1e-5
    atol: float = 1e-6
    tolerances: dict = field(default_factory=dict)
    judge: Callable | None = None
    reads: tuple = ()
    origin: str = ""  # set by load_checks: a digest of the checks.py it came from


    def __post_init__(self):
        if not isinstance(self.probe, str):
            raise ValueError(f"probe must be Python source (a str), got {type(self.probe).__name__}")
        if (self.expect is None) == (self.judge is None):
            raise ValueError("a Check needs exactly one of expect= (reference outputs) or judge= (custom verdict)")
        if self.expect is not None and not self.probe:
            raise ValueError("expect= compares the probe's outputs: give a probe too")
        if self.reads and (self.judge is None or self.probe):
            raise ValueError("reads= names the submitted files a judge-only check depends on: give judge= and no "
                             "probe")
        if not isinstance(self.reads, tuple) or not all(isinstance(r, str) and r and "/" not in r and r[0] != "."
                                                        for r in self.reads):
            raise ValueError(f"reads must be a tuple of file names in the submission folder, got {self.reads!r}")
        for name in ("inputs", "expect", "judge"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ValueError(f"{name} must be callable, got {value!r:.60}")
        if not (self.rtol >= 0 and self.atol >= 0):
            raise ValueError(f"rtol and atol must be >= 0, got {self.rtol!r}, {self.atol!r}")


@dataclass
class Trial:
    """What a judge sees: the inputs, what the kernel returned, the submission folder and a seeded generator."""
    inputs: dict
    outputs: dict
    submitted: Path
    generator: Any = None
    error: str | None = None  # why the probe's outputs are missing (its exception in the kernel, ...), if so


def load_checks(path) -> dict[str, Check]:
    """The CHECKS of a checks.py file (instructor code, imported in the grading worker only)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_course_checks_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checks = getattr(module, "CHECKS", None)
    if not isinstance(checks, dict) or not all(isinstance(k, str) and isinstance(v, Check) for k, v in checks.items()):
        raise ValueError(f"{path} must define CHECKS, a dict of test grade_id -> Check")
    origin = hashlib.sha256(path.read_bytes() + _library_digest().encode()).hexdigest()
    return {name: dataclasses.replace(check, origin=origin) for name, check in checks.items()}


@functools.lru_cache(maxsize=1)
def _library_digest() -> str:
    """The course library's own source and torch's version: what a judge's verdict may also depend on."""
    import torch  # the worker has it loaded already

    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def cached_folder(name: str, build: Callable[[Path], None]) -> Path:
    """A folder a checks.py builds once per machine (a trained judge, a tiny model) instead of per submission.

    It lives in the grader's own cache, ``$COURSE_LIB_CACHE/grader/<name>`` (default ``~/.cache/course_lib``),
    which the sandboxed kernels cannot see. ``build(folder)`` writes into an empty staging folder that then
    takes the final name atomically (parallel workers may race; the first one wins). A folder that is not the
    grader's own (another owner, or writable by others) is never trusted: it is built again in a private
    temporary folder for this process. Keep ``name`` versioned (change it when what ``build`` writes changes).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"name must be letters, digits, '.', '_' or '-', got {name!r}")
    root = Path(os.environ.get("COURSE_LIB_CACHE", Path.home() / ".cache" / "course_lib")) / "grader"
    folder = root / name
    if folder.exists() or folder.is_symlink():
        return folder if _owned_and_private(folder) else _build_private(name, build)
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
    except OSError:
        return _build_private(name, build)
    if not _owned_and_private(root):
        return _build_private(name, build)
    staging = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    build(staging / "built")
    os.chmod(staging / "built", 0o700)
    try:
        os.replace(staging / "built", folder)  # atomic; another worker may have won the race
    except OSError:
        pass
    shutil.rmtree(staging, ignore_errors=True)
    return folder if _owned_and_private(folder) else _build_private(name, build)


@functools.lru_cache(maxsize=None)
def tiny_sd_folder(seed: int = 0) -> Path:
    """The course's tiny SD (course_lib.sd.build_tiny_sd) as a diffusers folder in the grader's cache, built once
    per machine: a5's and a9's checks load it instead of importing course_lib.sd and diffusers to build it again
    for every submission."""
    def build(folder):
        from course_lib.sd.tiny import build_tiny_sd
        build_tiny_sd(folder, seed=seed)

    return cached_folder(f"tiny-sd-seed{seed}", build)


def _build_private(name: str, build: Callable[[Path], None]) -> Path:
    """Build in a temporary folder of this process only (used when the shared cache cannot be trusted)."""
    private = Path(tempfile.mkdtemp(prefix=f"{name}-")) / "built"
    build(private)
    return private


def _owned_and_private(path: Path) -> bool:
    info = path.lstat()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


# ------------------------------------------------------------------------------------------- comparison

def _kind(tensor) -> str:
    import torch

    return "bool" if tensor.dtype == torch.bool else ("floating" if tensor.is_floating_point() else "integer")


def _close(got: float, want: float, rtol: float, atol: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return math.isfinite(got) and abs(got - want) <= atol + rtol * abs(want)


def compare(name: str, got, want, rtol: float, atol: float) -> str | None:
    """None if ``got`` (plain data read back from the kernel) matches ``want`` (the grader's), else why not."""
    import torch

    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{name}: expected a tensor, got {type(got).__name__}"
        if tuple(got.shape) != tuple(want.shape):
            return f"{name}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}"
        if _kind(got) != _kind(want):
            return f"{name}: expected a {_kind(want)} tensor, got {got.dtype}"
        if _kind(want) != "floating":
            wrong = int((got.long() != want.long()).sum())
            return f"{name}: {wrong} of {want.numel()} entries differ" if wrong else None
        g, w = got.double(), want.double()
        if not torch.equal(torch.isnan(g), torch.isnan(w)) or torch.isinf(g).ne(torch.isinf(w)).any():
            return f"{name}: NaN or infinite values where the reference has none (or the reverse)"
        finite = torch.isfinite(w)
        if not torch.equal(g[~finite], w[~finite]) and (~finite).any():
            return f"{name}: infinite values differ"
        err = (g - w).abs()[finite]
        bound = (atol + rtol * w.abs())[finite]
        if err.numel() and bool((err > bound).any()):
            return f"{name}: off by up to {err.max().item():.3g} (tolerance {atol:.1g} + {rtol:.1g} x |value|)"
        return None
    if isinstance(want, bool) or isinstance(want, str) or want is None:
        return None if (type(got) is type(want) and got == want) else f"{name}: expected {want!r}, got {got!r:.80}"
    if isinstance(want, int):
        ok = isinstance(got, int) and not isinstance(got, bool) and got == want
        return None if ok else f"{name}: expected {want}, got {got!r:.80}"
    if isinstance(want, float):
        ok = isinstance(got, (int, float)) and not isinstance(got, bool) and _close(float(got), want, rtol, atol)
        return None if ok else f"{name}: expected {want:.6g}, got {got!r:.80}"
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            return f"{name}: expected a list of {len(want)}, got {got!r:.80}"
        for i, (a, b) in enumerate(zip(got, want)):
            problem = compare(f"{name}[{i}]", a, b, rtol, atol)
            if problem:
                return problem
        return None
    raise ValueError(f"expected value of {name!r} must be a tensor, number, bool, str or list, got {type(want)}")


def _judge(check: Check, trial: Trial, test: str = "") -> str | None:
    if check.judge is not None:
        remember = check.reads and os.environ.get("COURSE_GRADER_REMEMBER_VERDICTS", "1") != "0"
        return _remembered_judge(check, trial, test) if remember else check.judge(trial)
    if trial.error:
        return trial.error
    for name, want in check.expect(trial.inputs).items():
        if name not in trial.outputs:
            return f"{name}: no value came back"
        rtol, atol = check.tolerances.get(name, (check.rtol, check.atol))
        problem = compare(name, trial.outputs[name], want, rtol, atol)
        if problem:
            return problem
    return None


def _remembered_judge(check: Check, trial: Trial, test: str) -> str | None:
    """A judge-only check with ``reads=`` is a function of the checks.py, the course library and those files
    (a deterministic judge: it must not use ``trial.generator``). Its verdict is kept in the grader's cache, keyed
    by all of them, so grading the same files again (a re-run, a resubmitted model) costs nothing."""
    digest = hashlib.sha256(f"{check.origin}\n{test}\n{getattr(check.judge, '__qualname__', '')}\n".encode())
    for name in check.reads:
        path = trial.submitted / name
        digest.update(f"{name}\n".encode())
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(2**20), b""):
                    digest.update(block)
        else:
            digest.update(b"<missing>")
    folder = cached_folder("verdicts-v1", lambda built: built.mkdir())
    record = folder / f"{digest.hexdigest()}.json"
    if record.is_file():
        try:
            return json.loads(record.read_text())["problem"]
        except (ValueError, KeyError, OSError):
            pass  # unreadable: judge again
    problem = check.judge(trial)
    staging = folder / f".{record.name}.{os.getpid()}"
    staging.write_text(json.dumps({"problem": problem}))
    os.replace(staging, record)
    return problem


# ------------------------------------------------------------------------------------ in the kernel

# The probe cell: reads the inputs, runs the probe in a copy of the notebook's namespace, writes the outputs.
# Whatever the student's code does to it can only make the outputs wrong or missing, which fails the check.
_PROBE_CELL = '''def _grader_probe(code={code!r}, stem={stem!r}):
    import json
    import torch
    from safetensors.torch import load_file, save_file
    report = {{}}
    try:
        ns = dict(get_ipython().user_ns)
        ns.update(inputs=load_file(stem + ".in.safetensors"), outputs={{}})
        exec(compile(code, "<the grader's check>", "exec"), ns)
        out = ns["outputs"]
        tensors = {{k: v.detach().to("cpu").clone().contiguous() for k, v in out.items()
                   if isinstance(v, torch.Tensor)}}
        report["values"] = {{k: v for k, v in out.items() if not isinstance(v, torch.Tensor)}}
        save_file(tensors, stem + ".out.safetensors")
    except BaseException as err:
        report = {{"error": (type(err).__name__ + ": " + str(err))[:300]}}
    with open(stem + ".out.json", "w") as f:
        json.dump(report, f, default=repr)
_grader_probe()
del _grader_probe
'''

_PENDING: dict[str, dict] = {}  # token -> {test: (check, inputs, stem)}: kept in this (worker) process


def _is_test(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader")
    return cell.cell_type == "code" and isinstance(meta, dict) and bool(meta.get("grade")) and not meta.get("solution")


def _grade_id(cell) -> str:
    return cell.metadata["nbgrader"]["grade_id"]


def _new_code_cell(nb, source: str, cell_id: str, metadata: dict):
    cell = from_dict({"cell_type": "code", "source": source, "metadata": metadata, "outputs": [],
                      "execution_count": None})
    if nb.get("nbformat_minor", 0) >= 5:
        cell.id = cell_id
    return cell


def _seeded_generator():
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))  # like the kernels (torch came preloaded)
    return torch.Generator().manual_seed(secrets.randbits(62))


def _write_inputs(path: Path, inputs: dict) -> None:
    import torch
    from safetensors.torch import save_file

    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in inputs.items()):
        raise ValueError(f"a check's inputs must be a dict of str -> tensor, got {sorted(inputs)!r:.80}")
    save_file({k: v.detach().contiguous().clone() for k, v in inputs.items()}, str(path))
    os.chmod(path, 0o644)


class InjectProbes(NbGraderPreprocessor):
    """Before execution: the inputs of every check are drawn and written, and a probe cell goes right before each
    checked test cell (before the guard cell of ``sanitize.InjectGuard`` if there is one)."""

    checks_file = Unicode("", help="solutions/<a>/checks.py ('' or a missing file: no checks)").tag(config=True)
    autograded_dir = Unicode("", help="nbgrader's autograded folder").tag(config=True)

    def preprocess(self, nb, resources):
        if not self.checks_file or not Path(self.checks_file).is_file():
            return nb, resources
        checks = load_checks(self.checks_file)
        info = resources["nbgrader"]
        folder = Path(self.autograded_dir) / info["student"] / info["assignment"]
        token = secrets.token_hex(6)
        pending, cells = {}, []
        generator = _seeded_generator()
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get(META, {})
            test = meta.get("test") if meta.get("guard") == "before" else (_grade_id(cell) if _is_test(cell) else None)
            if test in checks and test not in pending:
                check = checks[test]
                stem = f"{PREFIX}{token}-{test}"
                inputs = check.inputs(generator) if check.inputs else {}
                if check.probe:
                    _write_inputs(folder / f"{stem}.in.safetensors", inputs)
                    source = _PROBE_CELL.format(code=check.probe, stem=stem)
                    cells.append(_new_code_cell(nb, source, f"grader-probe-{test}-{token}",
                                                {META: {"probe": test}}))
                pending[test] = (check, inputs, stem)
            cells.append(cell)
        nb.cells = cells
        _PENDING[token] = {"tests": pending, "folder": str(folder), "notebook": info["notebook"]}
        nb.metadata.setdefault(META, {})["probes"] = token
        return nb, resources


def _read_outputs(folder: Path, stem: str) -> tuple[dict, str | None]:
    """What a probe wrote: ({name: value}, error or None). Only regular files, never followed links."""
    from safetensors.torch import load

    def read(name: str) -> bytes | None:
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_OUTPUT_BYTES:
                return None
            return f.read()

    raw_json = read(f"{stem}.out.json")
    if raw_json is None:
        return {}, "the check did not run to its end (no outputs came back from the kernel)"
    try:
        report = json.loads(raw_json)
    except ValueError:
        return {}, "its outputs could not be read"
    if not isinstance(report, dict):
        return {}, "its outputs could not be read"
    if "error" in report:
        return {}, f"it raised {str(report['error'])[:300]}"
    values = dict(report.get("values") or {})
    raw = read(f"{stem}.out.safetensors")
    if raw is None:
        return {}, "its tensors could not be read"
    try:
        values.update(load(raw))
    except Exception as err:  # a malformed file: the kernel wrote it
        return {}, f"its tensors could not be read ({type(err).__name__})"
    return values, None


class ApplyVerdicts(NbGraderPreprocessor):
    """After execution, before scoring: probe cells are removed, each check is decided here, and a test whose check
    fails gets an error output (nbgrader then scores it 0) and a note saying why."""

    submitted_dir = Unicode("", help="nbgrader's submitted folder (what the student handed in)").tag(config=True)

    def preprocess(self, nb, resources):
        state = nb.metadata.get(META, {})
        token = state.pop("probes", None)
        nb.cells = [c for c in nb.cells if "probe" not in c.get("metadata", {}).get(META, {})]
        if token is None or token not in _PENDING:
            return nb, resources
        pending = _PENDING.pop(token)
        folder = Path(pending["folder"])
        info = resources["nbgrader"]
        submitted = Path(self.submitted_dir) / info["student"] / info["assignment"]
        notes = state.setdefault("notes", [])
        failures = {}
        for test, (check, inputs, stem) in pending["tests"].items():
            outputs, error = _read_outputs(folder, stem) if check.probe else ({}, None)
            trial = Trial(inputs=inputs, outputs=outputs, submitted=submitted, generator=_seeded_generator(),
                          error=error)
            try:
                problem = _judge(check, trial, test)
            except Exception as err:  # the reference itself failed on what came back: the check fails, said
                problem = f"the comparison failed ({type(err).__name__}: {str(err)[:200]})"
            if problem:
                failures[test] = problem
        for path in folder.glob(f"{PREFIX}{token}-*"):
            path.unlink(missing_ok=True)
        for cell in nb.cells:
            if _is_test(cell) and _grade_id(cell) in failures:
                test, problem = _grade_id(cell), failures[_grade_id(cell)]
                passed = not any(o.get("output_type") == "error" for o in cell.outputs)
                text = f"the grader's own check of {test} on new inputs failed: {problem}"
                cell.outputs.append(from_dict({"output_type": "error", "ename": "GraderCheckFailed",
                                               "evalue": text, "traceback": [f"GraderCheckFailed: {text}"]}))
                notes.append(f"{test}: no credit, {text}" + (" (the test itself passed in the kernel)" * passed))
        resources.setdefault("course_verdicts", {})[pending["notebook"]] = {
            t: failures.get(t, "passed") for t in pending["tests"]}
        return nb, resources

