"""Every course_lib module imports on its own, in a fresh interpreter (no hidden import-order dependencies).

One child process per module would pay torch's import (~2.5 s) 24 times. Instead one helper process imports
the third-party libraries course_lib builds on, and *no* course_lib module, then forks once per module: each
child starts from that state and imports its one module, so an import-order dependency between course_lib
modules still shows (the child sees no other course_lib module in ``sys.modules``).
"""
import json
import os
import pkgutil
import subprocess
import sys

import pytest

import course_lib

MODULES = sorted(
    f"course_lib.{m.name}" for m in pkgutil.iter_modules(course_lib.__path__) if not m.name.startswith("_")
)

# Imported before forking: libraries only. The check below fails if any of them pulled in course_lib.
_FORKING_IMPORTER = """
import json, os, sys, traceback
import numpy, torch, torch.nn.functional, safetensors.torch, tqdm, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
assert not any(name == "course_lib" or name.startswith("course_lib.") for name in sys.modules)
results = {}
for module in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: import one module, report, leave without running the parent's cleanup
        os.close(read)
        try:
            __import__(module)
            message = ""
        except BaseException:
            message = traceback.format_exc() or "failed"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode()
    results[module] = message if os.waitstatus_to_exitcode(status) == 0 else f"child died: status {status}"
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def import_results() -> dict[str, str]:
    """{module: "" if it imported, else the traceback}, from one forking helper process."""
    if not hasattr(os, "fork"):  # Windows: one interpreter per module
        return {m: _import_alone(m) for m in MODULES}
    run = subprocess.run([sys.executable, "-c", _FORKING_IMPORTER, json.dumps(MODULES)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _import_alone(module: str) -> str:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    return "" if result.returncode == 0 else result.stderr or f"exit code {result.returncode}"


def test_core_modules_exist():
    required = {"attention", "schedulers", "vae", "guidance", "text", "unet", "lora", "train", "viz", "data"}
    assert required <= {m.split(".")[1] for m in MODULES}


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_in_fresh_interpreter(module, import_results):
    assert import_results[module] == "", import_results[module]


def test_the_forking_importer_reports_a_broken_module(tmp_path):
    """The helper is not a test that cannot fail: a module that raises on import, or one that kills its
    process, is reported with its error, and the modules after it are still checked."""
    (tmp_path / "broken_mod.py").write_text("raise ImportError('this module is broken on purpose')\n")
    (tmp_path / "dying_mod.py").write_text("import os\nos._exit(3)\n")
    run = subprocess.run([sys.executable, "-c", _FORKING_IMPORTER, json.dumps(["broken_mod", "dying_mod", "json"])],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert "this module is broken on purpose" in results["broken_mod"]
    assert results["dying_mod"].startswith("child died")
    assert results["json"] == ""


def test_package_import_is_light():
    code = "import sys, course_lib; print('diffusers' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "False"]
