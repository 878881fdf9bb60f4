"""Packaging contracts: pyproject's ranges, the term's constraints, conda's environment.yml, the torch choice, and
what installing the course on Colab changes (resolved offline by pip against a recorded Colab snapshot)."""
from __future__ import annotations

import email.message
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PYPROJECT_PYTHON = Requirement("python" + PYPROJECT["project"]["requires-python"]).specifier
COLAB = json.loads((ROOT / "tests" / "data" / "colab_py313.json").read_text())
# What installing the course on Colab may change. Nothing else: not torch, not ipywidgets (Colab's front end treats
# version 8 as third-party widgets), not pillow or numpy (already imported by Colab: a restart would be needed).
COLAB_ALLOWED_CHANGES = {"course-lib"}
# Colab's Linux x86_64 CPython 3.13, for markers in Requires-Dist.
COLAB_MARKERS = {"python_version": "3.13", "python_full_version": "3.13.9", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def _pyproject_requirements(extras=None) -> list[Requirement]:
    """The course's requirements: the core ones and those of the given extras (all but `dev` if None)."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    names = [e for e in optional if e != "dev"] if extras is None else extras
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return reqs + [Requirement(r) for e in names for r in optional[e]]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin name==version"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_dev_extra_is_every_other_extra():
    optional = PYPROJECT["project"]["optional-dependencies"]
    assert optional["dev"] == [f"course_lib[{','.join(e for e in optional if e != 'dev')}]"]


def test_every_requirement_is_a_range_with_a_lower_bound():
    for req in _pyproject_requirements():
        ops = {spec.operator for spec in req.specifier}
        assert ">=" in ops and "<" in ops and "==" not in ops, f"{req}: give a tested range >=low,<next-major"


def test_constraints_pin_every_requirement_inside_its_range():
    pins = _constraints()
    for req in _pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt has no pin for {req.name} (run `make constraints`)"
        assert req.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]}, outside {req}"


def test_environment_yml_lists_the_same_packages_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    python = [d for d in conda if d.startswith("python=")]
    assert python, "environment.yml must pin python"
    assert Version(python[0].split("=")[1] + ".0") in PYPROJECT_PYTHON, f"{python[0]} vs requires-python"
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {}
    for line in pip_lines:
        if not line.startswith("-"):
            req = Requirement(line)
            listed[canonicalize_name(req.name)] = req
    wanted = {canonicalize_name(r.name): r for r in _pyproject_requirements()}
    assert set(listed) == set(wanted), (f"only in pyproject: {sorted(set(wanted) - set(listed))}, "
                                        f"only in environment.yml: {sorted(set(listed) - set(wanted))}")
    pins = _constraints()
    for name, req in listed.items():
        (spec,) = req.specifier
        assert spec.operator == "==", f"environment.yml: pin {req} exactly (the term's version)"
        assert wanted[name].specifier.contains(spec.version), f"environment.yml {req} is outside pyproject's {wanted[name]}"
        assert spec.version == pins[name], f"environment.yml {req} differs from constraints.txt {pins[name]}"



@pytest.mark.parametrize("gpu, cpu_index_up, system, expected", [
    (False, True, "Linux", ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]),
    (False, False, "Linux", ["torch==2.13.0"]),
    (True, True, "Linux", ["torch==2.13.0"]),
    (False, True, "Darwin", ["torch==2.13.0"]),
])
def test_install_torch_picks_the_build_for_the_machine(monkeypatch, gpu, cpu_index_up, system, expected):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import install_torch
    finally:
        sys.path.remove(str(ROOT / "tools"))
    monkeypatch.delenv("TORCH_INDEX_URL", raising=False)
    monkeypatch.setattr(install_torch, "has_nvidia_gpu", lambda: gpu)
    monkeypatch.setattr(install_torch, "reachable", lambda url, timeout=5.0: cpu_index_up)
    monkeypatch.setattr(install_torch.platform, "system", lambda: system)
    what, args = install_torch.choose("2.13.0")
    assert args == expected
    assert ("CPU build" in what) == (expected[-1].endswith("/cpu")) and ("CUDA" in what) == (gpu and system != "Darwin")
    monkeypatch.setenv("TORCH_INDEX_URL", "https://example.invalid/cu126")
    assert install_torch.choose("2.13.0")[1] == ["torch==2.13.0", "--index-url", "https://example.invalid/cu126"]
    assert install_torch.term_version() == _constraints()["torch"]


# ---- the Colab install, resolved offline ---------------------------------------------------------------------

def _colab_requires(requires: list[str], extras: list[str]) -> list[str]:
    """Requires-Dist as seen on Colab's Python: markers evaluated, extra-only requirements kept per extra."""
    out = []
    for line in requires:
        req = Requirement(line)
        marker, req.marker = req.marker, None
        if marker is None or marker.evaluate({**COLAB_MARKERS, "extra": ""}):
            out.append(str(req))
            continue
        out += [f'{req}; extra == "{e}"' for e in extras if marker.evaluate({**COLAB_MARKERS, "extra": e})]
    return out


def _metadata(name: str, version: str, requires: list[str], extras: list[str]) -> str:
    msg = email.message.Message()
    for key, value in [("Metadata-Version", "2.1"), ("Name", name), ("Version", version)]:
        msg[key] = value
    for extra in extras:
        msg["Provides-Extra"] = extra
    for req in requires:
        msg["Requires-Dist"] = req
    return msg.as_string()


def _stub_wheel(folder: Path, name: str, version: str, requires: list[str], extras: list[str]) -> None:
    """A wheel with metadata and nothing else: enough for pip to resolve, never to import."""
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{stem}.dist-info/METADATA", _metadata(name, version, requires, extras))
        whl.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{stem}.dist-info/RECORD", "")


def _term_closure(roots: list[Requirement]) -> dict[str, md.Distribution]:
    """This environment's distributions (the term's versions) that the course's requirements reach on Colab."""
    found, done, todo = {}, set(), [(r.name, tuple(sorted(r.extras))) for r in roots]
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in done:
            continue
        done.add((canonicalize_name(name), extras))
        try:
            found[canonicalize_name(name)] = dist = md.distribution(name)
        except md.PackageNotFoundError:  # not needed here (e.g. a marker for another Python): Colab's or missing
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({**COLAB_MARKERS, "extra": e}) for e in ("", *extras)):
                todo.append((req.name, tuple(sorted(req.extras))))
    return found


def colab_install_changes(tmp_path: Path, course_requirements: list[Requirement], extra: str = "sd") -> dict:
    """{package: (Colab's version or None, new version)} for the setup cell's install on Colab, computed by pip.

    Colab's packages are stub dist-infos on the path of an empty interpreter; the index is stub wheels of the
    term's versions (this environment's metadata) and of the course itself; pip resolves with --dry-run --report,
    with no index and no config, so the test runs offline. Every marker is evaluated for Colab's Python when the
    stubs are written (and they declare no Requires-Python), so the Python that runs pip does not matter."""
    assert Version(COLAB["python"] + ".0") in PYPROJECT_PYTHON, "the course's requires-python excludes Colab's Python"
    site, wheels, pip_only = tmp_path / "colab-site", tmp_path / "wheels", tmp_path / "pip-only"
    for folder in (site, wheels, pip_only):
        folder.mkdir()
    for name, entry in COLAB["packages"].items():
        info = site / f"{canonicalize_name(name).replace('-', '_')}-{entry['version']}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(_metadata(name, entry["version"], entry.get("requires", []), []))
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    optional = PYPROJECT["project"]["optional-dependencies"]
    for dist in _term_closure(course_requirements + [Requirement(r) for r in optional[extra]]).values():
        extras = dist.metadata.get_all("Provides-Extra") or []
        _stub_wheel(wheels, dist.metadata["Name"], dist.version, _colab_requires(dist.requires or [], extras), extras)
    course = [str(r) for r in course_requirements] + [f'{r}; extra == "{extra}"' for r in optional[extra]]
    _stub_wheel(wheels, "course_lib", PYPROJECT["project"]["version"], course, [extra])
    (pip_only / "pip").symlink_to(Path(__import__("pip").__file__).parent)
    venv.create(tmp_path / "colab-python", with_pip=False)
    python = tmp_path / "colab-python" / "bin" / "python"
    report = tmp_path / "report.json"
    torch_pin = f"torch=={COLAB['packages']['torch']['version']}"  # the setup cell pins Colab's own torch
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": f"{site}{os.pathsep}{pip_only}",
           "PIP_CONFIG_FILE": os.devnull, "PYTHONNOUSERSITE": "1"}
    cmd = [str(python), "-m", "pip", "install", "--dry-run", "--report", str(report), "--quiet", "--no-index",
           "--disable-pip-version-check", "--find-links", str(wheels), "--only-binary=:all:", f"course_lib[{extra}]", torch_pin]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"pip could not resolve the Colab install:\n{run.stdout}\n{run.stderr}"
    colab = {canonicalize_name(n): e["version"] for n, e in COLAB["packages"].items()}
    changes = {}
    for item in json.loads(report.read_text())["install"]:
        name = canonicalize_name(item["metadata"]["name"])
        changes[name] = (colab.get(name), item["metadata"]["version"])
    return changes


def test_colab_snapshot_is_consistent():
    packages = {canonicalize_name(n): e for n, e in COLAB["packages"].items()}
    for name, entry in packages.items():
        for line in entry.get("requires", []):
            req = Requirement(line)
            dep = packages.get(canonicalize_name(req.name))
            assert dep is not None, f"colab_py313.json: {name} requires {req}, which the snapshot lacks"
            assert req.specifier.contains(dep["version"], prereleases=True), f"{name} requires {req}, snapshot has {dep}"


def test_colab_install_changes_only_what_the_course_needs(tmp_path):
    changes = colab_install_changes(tmp_path, _pyproject_requirements([]))
    print("Colab install changes:", {k: f"{a} -> {b}" for k, (a, b) in sorted(changes.items())})
    assert "course-lib" in changes
    unexpected = {k: v for k, v in changes.items() if k not in COLAB_ALLOWED_CHANGES}
    assert not unexpected, f"installing the course on Colab would change {unexpected} (package: (Colab's, new))"


def test_colab_check_sees_a_raised_floor(tmp_path):
    """The harness is not blind: a floor above Colab's transformers is an upgrade it reports."""
    colab = COLAB["packages"]["transformers"]["version"]
    term = _constraints()["transformers"]
    assert Version(term) > Version(colab), "pick another package whose term version is newer than Colab's"
    reqs = [r for r in _pyproject_requirements([]) if r.name != "transformers"] + [Requirement(f"transformers>={term},<6")]
    assert colab_install_changes(tmp_path, reqs)["transformers"] == (colab, term)


# ---- the setup cell ------------------------------------------------------------------------------------------

def _course_notebooks():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import course_notebooks
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return course_notebooks


@pytest.mark.parametrize("ipywidgets, manager", [("7.7.1", False), ("8.1.9", True)])
def test_setup_cell_on_colab_pins_colab_torch_and_enables_widgets_8(monkeypatch, ipywidgets, manager):
    import importlib.metadata
    import shlex
    import types
    tool = _course_notebooks()
    course = tool.setting(ROOT)
    calls, enabled = [], []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: enabled.append(True))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    installed = {"torch": "2.11.0+cu128", "ipywidgets": ipywidgets}
    monkeypatch.setattr(importlib.metadata, "version", lambda name: installed[name])
    shell = types.SimpleNamespace(run_line_magic=lambda magic, line: calls.append((magic, shlex.split(line))))
    exec(tool.setup_source(course, "sd"), {"get_ipython": lambda: shell})
    (magic, args), = calls
    assert magic == "pip" and args[0] == "install" and args[2] == "torch==2.11.0+cu128"
    req = Requirement(args[1])
    assert (req.name, req.extras, req.url) == ("course_lib", {"sd"}, f"git+{course['repository']}@{course['tag']}")
    assert enabled == ([True] if manager else [])


def test_setup_cell_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(_course_notebooks().setup_source(_course_notebooks().setting(ROOT), None), {"get_ipython": None})


def _widget_code():
    """(where, source) of every notebook code cell and course_lib module."""
    for path in sorted([*ROOT.glob("lectures/*.ipynb"), *ROOT.glob("solutions/*/*.ipynb")]):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                yield path, "\n".join(line for line in "".join(cell["source"]).splitlines()
                                      if not line.lstrip().startswith(("%", "!")))
    for path in sorted((ROOT / "course_lib").rglob("*.py")):
        yield path, path.read_text()


def test_widgets_exist_in_colab_ipywidgets_7():
    """Colab has ipywidgets 7: every widget class the notebooks and course_lib use, and every keyword they pass,
    must exist there (and in the installed ipywidgets, 8 for the term)."""
    import ast
    import ipywidgets
    v7 = json.loads((ROOT / "tests" / "data" / "colab_ipywidgets7.json").read_text())["widgets"]
    used = 0
    for path, source in _widget_code():
        for node in ast.walk(ast.parse(source)):
            attr = node if isinstance(node, ast.Attribute) else None
            if not (attr and isinstance(attr.value, ast.Name) and attr.value.id == "widgets" and attr.attr[0].isupper()):
                continue
            used += 1
            where = f"{path.relative_to(ROOT)}: widgets.{attr.attr}"
            assert attr.attr in v7, f"{where} does not exist in ipywidgets 7 (Colab's)"
            assert hasattr(ipywidgets, attr.attr), f"{where} does not exist in ipywidgets {ipywidgets.__version__}"
        for node in ast.walk(ast.parse(source)):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "widgets" \
                    and func.attr in v7:
                where = f"{path.relative_to(ROOT)}: widgets.{func.attr}"
                for kw in node.keywords:
                    assert kw.arg in v7[func.attr], f"{where}({kw.arg}=...) is not a keyword of ipywidgets 7"
                    assert kw.arg in getattr(ipywidgets, func.attr).class_trait_names(), f"{where}({kw.arg}=...)"
    assert used >= 10, f"found only {used} widget constructions: has the notebooks' widget code moved?"


def test_a_missing_optional_extra_names_the_extra(monkeypatch):
    from course_lib.data import load_image_dataset
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"course_lib\[sd\]"):
        load_image_dataset("owner/name")


def test_every_notebook_points_at_the_course_setting():
    tool = _course_notebooks()
    course = tool.setting(ROOT)
    assert course["tag"] not in ("main", "master"), "the setup cells must install a term's tag, not a branch"
    differ = tool.apply(ROOT, course, check=True)
    assert not differ, ("run `.venv/bin/python tools/course_notebooks.py` and commit: "
                        + "; ".join(f"{p.relative_to(ROOT)} ({', '.join(w)})" for p, w in differ.items()))
