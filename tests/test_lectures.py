"""Every lecture notebook runs headless in fast mode (papermill injects FAST=True), in order, in a fresh folder.

A failure shows the cell that raised. Besides errors, any traceback printed to stderr fails the notebook
(e.g. one caught and printed by a widget callback).
"""
import os
import shutil
from pathlib import Path

import pytest
from _numerics import TEST_THREADS

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parents[1]
LECTURES = sorted((ROOT / "lectures").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_lectures():
    assert LECTURES, "lectures/ holds no numbered notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", LECTURES, ids=[p.stem for p in LECTURES])
def test_lecture_runs_in_fast_mode(notebook, tmp_path):
    work = tmp_path / "lectures"
    shutil.copytree(notebook.parent, work, ignore=shutil.ignore_patterns("*.ipynb_checkpoints", "outputs"))
    out = tmp_path / f"{notebook.stem}.out.ipynb"
    # The kernel gets as many torch threads as the test process (one per xdist worker): with two workers busy, a
    # kernel left at the default of one thread per core spins on a shared core (lecture 13: 20 s alone, 140 s).
    threads = str(TEST_THREADS)
    env = {"MPLBACKEND": "Agg", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nb = papermill.execute_notebook(str(work / notebook.name), str(out), parameters={"FAST": True},
                                        kernel_name="python3", cwd=str(work), progress_bar=False,
                                        execution_timeout=300)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                assert "Traceback" not in output.get("text", ""), f"traceback on stderr in:\n{cell.source}"
