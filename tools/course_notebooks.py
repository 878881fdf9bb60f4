"""Point every notebook's Colab badge and setup cell at the course's repository and term tag.

    python tools/course_notebooks.py            # rewrite lectures/, solutions/, assignments/ from [tool.course]
    python tools/course_notebooks.py --check    # list notebooks that differ, exit 1 if any
    python tools/course_notebooks.py --root EXPORT --repository https://github.com/you/your-course

The setting is `[tool.course]` in pyproject.toml (repository, tag, setup_extras). The badge is the first Colab
badge of cell 0 (added under the title if missing), as are other Colab links to lectures/ and assignments/; the
setup cell is the code cell tagged `setup`. A rewritten
notebook with a jupytext pair beside it (same name, .py) is synced with `jupytext --sync`.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BADGE_RE = re.compile(r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
                      r"\(https://colab\.research\.google\.com/github/[^)\s]*\)")
LINK_RE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/[^/\s)]+/"
                     r"((?:lectures|assignments)/[^)\s\"]+)")  # a Colab link to one of the course's notebooks


def setting(root: Path) -> dict:
    course = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["course"]
    return {"repository": course["repository"], "tag": course["tag"], "setup_extras": course.get("setup_extras", {})}


def badge(repository: str, tag: str, path: str) -> str:
    if not repository.startswith("https://github.com/"):
        raise ValueError(f"repository must be a https://github.com/OWNER/NAME URL (Colab opens GitHub notebooks), "
                         f"got {repository!r}")
    slug = repository.removeprefix("https://github.com/").removesuffix(".git").strip("/")
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{slug}/blob/{tag}/{path})")


def setup_source(repository: str, tag: str, extra: str | None) -> str:
    package = f"course_lib[{extra}]" if extra else "course_lib"
    return "\n".join([
        "# Colab: install the course library of this term (Colab's own torch stays); elsewhere nothing happens.",
        "import sys",
        'if "google.colab" in sys.modules:',
        "    from importlib.metadata import version",
        '    torch_pin = "torch==" + version("torch")  # keeps Colab\'s torch: the course never reinstalls it',
        "    # pip's magic shows pip's output, and Colab's restart prompt should an upgraded package need one",
        f'    get_ipython().run_line_magic("pip", f\'install "{package} @ git+{repository}@{tag}" "{{torch_pin}}"\')',
        '    if int(version("ipywidgets").split(".")[0]) >= 8:  # Colab shows ipywidgets 8 through this manager',
        "        from google.colab import output",
        "        output.enable_custom_widget_manager()",
    ])


def notebooks(root: Path) -> list[Path]:
    found = [*root.glob("lectures/*.ipynb"), *root.glob("solutions/*/*.ipynb"), *root.glob("assignments/*/*.ipynb")]
    return sorted(p for p in found if ".ipynb_checkpoints" not in p.parts)


def expected_cells(path: Path, root: Path, course: dict) -> tuple[str, str]:
    """(badge, setup source) this notebook must carry. Solutions' badges open the students' release."""
    rel = path.relative_to(root).as_posix()
    if rel.startswith("solutions/"):
        rel = "assignments/" + rel.removeprefix("solutions/")
    extra = course["setup_extras"].get(path.stem)
    return badge(course["repository"], course["tag"], rel), setup_source(course["repository"], course["tag"], extra)


def rewrite(path: Path, root: Path, course: dict) -> tuple[dict, list[str]]:
    """The notebook with its badge and setup cell as the setting says, and what had to change."""
    nb = json.loads(path.read_text())
    want_badge, want_setup = expected_cells(path, root, course)
    changed, first = [], nb["cells"][0]
    text = "".join(first["source"])
    if first["cell_type"] != "markdown":
        raise ValueError(f"{path}: cell 0 must be the markdown title cell, got a {first['cell_type']} cell")
    new = BADGE_RE.sub(lambda m: want_badge, text, count=1) if BADGE_RE.search(text) else \
        text.replace("\n", f"\n\n{want_badge}\n", 1) if "\n" in text else f"{text}\n\n{want_badge}"
    if new != text:
        first["source"], changed = new.splitlines(keepends=True), ["badge"]
    for cell in nb["cells"]:
        text = "".join(cell["source"]) if cell["cell_type"] == "markdown" else ""
        new = LINK_RE.sub(lambda m: badge(course["repository"], course["tag"], m[1]).rsplit("(", 1)[1][:-1], text)
        if new != text:
            cell["source"], changed = new.splitlines(keepends=True), changed + ["links"]
    setup = [c for c in nb["cells"] if c["cell_type"] == "code" and "setup" in c["metadata"].get("tags", [])]
    if len(setup) != 1:
        raise ValueError(f"{path}: expected one code cell tagged 'setup', found {len(setup)}")
    if "".join(setup[0]["source"]) != want_setup:
        setup[0]["source"], changed = want_setup.splitlines(keepends=True), changed + ["setup cell"]
    return nb, changed


def apply(root: Path, course: dict, check: bool = False) -> dict[Path, list[str]]:
    """Rewrite (or with check=True only list) the notebooks that differ from the setting."""
    differ = {}
    for path in notebooks(root):
        nb, changed = rewrite(path, root, course)
        if changed:
            differ[path] = changed
            if not check:
                path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    pairs = [str(p) for p in differ if p.with_suffix(".py").exists()]
    if pairs and not check:
        subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", *pairs], check=True)
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the course folder (default: this repository)")
    parser.add_argument("--repository", help="override [tool.course] repository, e.g. for the public export")
    parser.add_argument("--tag", help="override [tool.course] tag")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook differs")
    args = parser.parse_args(argv)
    course = setting(args.root)
    course.update({k: v for k, v in [("repository", args.repository), ("tag", args.tag)] if v})
    differ = apply(args.root, course, check=args.check)
    for path, what in differ.items():
        print(f"{'differs' if args.check else 'rewrote'}: {path.relative_to(args.root)} ({', '.join(what)})")
    print(f"{len(differ)} notebook(s) {'differ from' if args.check else 'rewritten to'} "
          f"{course['repository']} @ {course['tag']}")
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
