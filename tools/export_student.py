"""Export the student-facing course into a folder ready to push as the public repository.

    python tools/export_student.py ../public-course [--repository https://github.com/OWNER/NAME] [--tag TAG]

Copies course_lib (without grading/), the lecture notebooks, the assignments release, the install files and a
README of this README's student parts; never solutions/, tests/, docs/, bench/ or grading files. Badges and setup
cells then point at --repository. A clone of the public repository keeps its .git/; the rest is replaced.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course_notebooks  # noqa: E402

ROOT = course_notebooks.ROOT
FILES = ["pyproject.toml", "constraints.txt", "environment.yml", "tools/install_torch.py", "tools/course_notebooks.py"]
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "grading", "outputs", "*.py")
STUDENT_PART = re.compile(r"<!-- student-readme -->\n(.*?)<!-- /student-readme -->", re.S)


def student_readme(readme: str) -> str:
    title = readme.splitlines()[0]
    parts = STUDENT_PART.findall(readme)
    if not parts:
        raise ValueError("README.md has no <!-- student-readme --> ... <!-- /student-readme --> part to export")
    return "\n".join([title, "", *parts]).rstrip() + "\n"


def export(dest: Path, repository: str | None = None, tag: str | None = None) -> list[Path]:
    """Write the student repository into dest; returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        if old.name != ".git":
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    shutil.copytree(ROOT / "course_lib", dest / "course_lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "grading"))
    shutil.copytree(ROOT / "lectures", dest / "lectures", ignore=SKIP)  # notebooks only, not their .py pairs
    shutil.copytree(ROOT / "assignments", dest / "assignments", ignore=SKIP)
    for name in FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    (dest / "README.md").write_text(student_readme((ROOT / "README.md").read_text()))
    (dest / ".gitignore").write_text(".venv/\n__pycache__/\n*.egg-info/\n.ipynb_checkpoints/\noutputs/\n")
    course = course_notebooks.setting(dest)
    course.update({k: v for k, v in [("repository", repository), ("tag", tag)] if v})
    pyproject = dest / "pyproject.toml"  # the export's own setting names itself
    text = re.sub(r'(?m)^repository = ".*"$', f'repository = "{course["repository"]}"', pyproject.read_text())
    pyproject.write_text(re.sub(r'(?m)^tag = ".*"$', f'tag = "{course["tag"]}"', text))
    course_notebooks.apply(dest, course)
    return sorted(p for p in dest.rglob("*") if p.is_file() and ".git" not in p.relative_to(dest).parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="the folder of the public repository (created if missing)")
    parser.add_argument("--repository", help="its GitHub URL (default: [tool.course] repository)")
    parser.add_argument("--tag", help="the tag students install (default: [tool.course] tag)")
    args = parser.parse_args(argv)
    if args.dest.resolve() == ROOT or ROOT in args.dest.resolve().parents:
        parser.error(f"dest must be outside this repository, got {args.dest}")
    files = export(args.dest, args.repository, args.tag)
    print(f"{len(files)} files in {args.dest}; review, then commit, tag and push it as the public repository")
    return 0


if __name__ == "__main__":
    sys.exit(main())
