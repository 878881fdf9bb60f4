"""Re-execute a lecture with papermill and keep its outputs: `make lecture NB=03_ddpm [FAST=1]`.

    python tools/run_lecture.py 03_ddpm          full mode: rewrites lectures/03_ddpm.ipynb with fresh outputs
    python tools/run_lecture.py 03_ddpm --fast   FAST = True: writes lectures/outputs/03_ddpm.fast.ipynb instead
                                                 (a quick check; the committed notebook keeps full-mode outputs)

A run that fails leaves the lecture untouched (the partial run is in lectures/outputs/<name>.full.ipynb).

The notebook runs in lectures/ (so its files land in lectures/outputs/, git-ignored) with progress bars off.
Afterwards it is tidied for committing (``tidy``): widget views (progress bars, sliders) are live objects that
render as frozen text or "model not found" without a kernel, so they go; so does papermill's run metadata.
The paired .py is brought up to date with ``jupytext --sync``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LECTURES = ROOT / "lectures"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
RUN_METADATA = ("papermill", "execution")


def tidy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop widget views, saved widget state and run metadata; set the kernelspec JupyterLab writes."""
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:
        for key in RUN_METADATA:
            cell.metadata.pop(key, None)
        if cell.metadata.get("tags") == []:  # papermill adds an empty list to every cell
            del cell.metadata["tags"]
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET_VIEW not in o.get("data", {})]
    return nb


def lecture_path(name: str) -> Path:
    """lectures/<name>.ipynb for a stem ('03_ddpm'), a file name or a path; a clear error otherwise."""
    stem = Path(name).name.removesuffix(".ipynb").removesuffix(".py")
    path = LECTURES / f"{stem}.ipynb"
    if not path.is_file():
        known = sorted(p.stem for p in LECTURES.glob("[0-9][0-9]_*.ipynb"))
        raise SystemExit(f"NB must name a lecture, one of {known}; got {name!r}")
    return path


def run(path: Path, fast: bool) -> Path:
    import papermill

    scratch = LECTURES / "outputs" / f"{path.stem}.{'fast' if fast else 'full'}.ipynb"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would only be widget views, dropped by tidy
    # papermill writes as it goes; the lecture itself is replaced only once the whole run has succeeded
    nb = papermill.execute_notebook(str(path), str(scratch), parameters={"FAST": True} if fast else None,
                                    kernel_name="python3", cwd=str(LECTURES), progress_bar=False)
    out = scratch if fast else path
    nbformat.write(tidy(nb), str(out))
    if not fast:
        subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", str(path)], check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lecture", help="e.g. 03_ddpm (a notebook in lectures/)")
    parser.add_argument("--fast", action="store_true", help="run with FAST = True into lectures/outputs/")
    args = parser.parse_args(argv)
    out = run(lecture_path(args.lecture), args.fast)
    size = out.stat().st_size
    print(f"wrote {out.relative_to(ROOT)} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
