"""Point every notebook's Colab badge, Colab links and setup cell at the course's repository and term tag.

    python tools/course_notebooks.py [--check] [--root FOLDER] [--repository URL] [--tag TAG]

The setting is `[tool.course]` in pyproject.toml. The badge is cell 0's (added under the title if missing); the
setup cell is the code cell tagged `setup`. Rewritten notebooks with a .py twin are synced by jupytext.
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
SVG = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_RE = re.compile(r"\[!\[Open In Colab\]\(" + re.escape(SVG) + r"\)\]\(https://colab\.research\.google\.com/github/[^)\s]*\)")
LINK_RE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/[^/\s)]+/"
                     r"((?:lectures|assignments)/[^)\s\"]+)")  # a Colab link to one of the course's notebooks


def setting(root: Path) -> dict:
    course = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["course"]
    return {"repository": course["repository"], "tag": course["tag"], "setup_extras": course.get("setup_extras", {})}


def colab_url(course: dict, path: str) -> str:
    if not course["repository"].startswith("https://github.com/"):
        raise ValueError(f"repository must be a https://github.com/OWNER/NAME URL (Colab opens GitHub notebooks), "
                         f"got {course['repository']!r}")
    slug = course["repository"].removeprefix("https://github.com/").removesuffix(".git").strip("/")
    return f"https://colab.research.google.com/github/{slug}/blob/{course['tag']}/{path}"


def setup_source(course: dict, extra: str | None) -> str:
    package = f"course_lib[{extra}]" if extra else "course_lib"
    return "\n".join([
        "# Colab: install the course library of this term (Colab's own torch stays); elsewhere nothing happens.",
        "import sys",
        'if "google.colab" in sys.modules:',
        "    from importlib.metadata import version",
        '    torch_pin = "torch==" + version("torch")  # keeps Colab\'s torch: the course never reinstalls it',
        "    # pip's magic shows pip's output, and Colab's restart prompt should an upgraded package need one",
        f'    get_ipython().run_line_magic("pip", f\'install "{package} @ git+{course["repository"]}@{course["tag"]}"'
        ' "{torch_pin}"\')',
        '    if int(version("ipywidgets").split(".")[0]) >= 8:  # Colab shows ipywidgets 8 through this manager',
        "        from google.colab import output",
        "        output.enable_custom_widget_manager()",
    ])


def rewrite(path: Path, root: Path, course: dict) -> tuple[dict, list[str]]:
    """The notebook as the setting wants it, and what changed. Solutions' badges open the students' release."""
    nb, changed = json.loads(path.read_text()), []
    rel = re.sub(r"^solutions/", "assignments/", path.relative_to(root).as_posix())
    badge = f"[![Open In Colab]({SVG})]({colab_url(course, rel)})"
    if nb["cells"][0]["cell_type"] != "markdown":
        raise ValueError(f"{path}: cell 0 must be the markdown title cell, got a {nb['cells'][0]['cell_type']} cell")
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "markdown"):
        text = new = "".join(cell["source"])
        if i == 0:
            new = BADGE_RE.sub(lambda m: badge, new, count=1) if BADGE_RE.search(new) else \
                re.sub(r"^(.*)(\n|$)", lambda m: f"{m[1]}\n\n{badge}\n", new, count=1)
        new = LINK_RE.sub(lambda m: colab_url(course, m[1]), new)
        if new != text:
            cell["source"], changed = new.splitlines(keepends=True), changed + [f"markdown cell {i}"]
    setup = [c for c in nb["cells"] if c["cell_type"] == "code" and "setup" in c["metadata"].get("tags", [])]
    if len(setup) != 1:
        raise ValueError(f"{path}: expected one code cell tagged 'setup', found {len(setup)}")
    want = setup_source(course, course["setup_extras"].get(path.stem))
    if "".join(setup[0]["source"]) != want:
        setup[0]["source"], changed = want.splitlines(keepends=True), changed + ["setup cell"]
    return nb, changed


def apply(root: Path, course: dict, check: bool = False) -> dict[Path, list[str]]:
    """Rewrite (with check=True only list) the notebooks that differ from the setting."""
    differ = {}
    for path in sorted([*root.glob("lectures/*.ipynb"), *root.glob("solutions/*/*.ipynb"),
                        *root.glob("assignments/*/*.ipynb")]):
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
    parser.add_argument("--repository", help="override [tool.course] repository")
    parser.add_argument("--tag", help="override [tool.course] tag")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook differs")
    args = parser.parse_args(argv)
    course = setting(args.root) | {k: v for k, v in [("repository", args.repository), ("tag", args.tag)] if v}
    differ = apply(args.root, course, check=args.check)
    for path, what in differ.items():
        print(f"{'differs' if args.check else 'rewrote'}: {path.relative_to(args.root)} ({', '.join(what)})")
    print(f"{len(differ)} notebook(s) {'differ from' if args.check else 'rewritten to'} {course['repository']} "
          f"@ {course['tag']}")
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
