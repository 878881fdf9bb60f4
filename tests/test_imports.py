"""Every course_lib module imports on its own, in a fresh interpreter (no hidden import-order dependencies)."""
import pkgutil
import subprocess
import sys

import pytest

import course_lib

MODULES = sorted(
    f"course_lib.{m.name}" for m in pkgutil.iter_modules(course_lib.__path__) if not m.name.startswith("_")
)


def test_core_modules_exist():
    required = {"attention", "schedulers", "vae", "guidance", "text", "unet", "lora", "train", "viz", "data"}
    assert required <= {m.split(".")[1] for m in MODULES}


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_in_fresh_interpreter(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_package_import_is_light():
    code = "import sys, course_lib; print('diffusers' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "False"]
