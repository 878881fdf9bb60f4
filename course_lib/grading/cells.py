"""Building nbgrader notebooks from Python: one small function per kind of cell.

nbgrader reads a cell's role from ``cell.metadata.nbgrader``:
    answer cell     solution: true,  grade: false   the student writes code between the solution markers
    test cell       grade: true, points: N, locked  autograded: full points if it runs without error, else 0
    locked cell     locked: true                    students cannot change it (restored when autograding)
Every nbgrader cell needs a unique ``grade_id``. In a source notebook, solutions sit between
``### BEGIN SOLUTION`` / ``### END SOLUTION`` and hidden tests between ``### BEGIN HIDDEN TESTS`` /
``### END HIDDEN TESTS``; ``generate_assignment`` strips both from the student release.
"""
from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

__all__ = ["markdown", "code", "answer_cell", "test_cell", "locked_cell", "notebook", "nbgrader_cells",
           "grade_cells"]

NBGRADER_SCHEMA = 3


def _meta(grade_id: str, *, solution: bool, grade: bool, locked: bool, points: float | None = None) -> dict:
    if not isinstance(grade_id, str) or not grade_id.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"grade_id must be letters, digits, '_' or '-', got {grade_id!r}")
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": NBGRADER_SCHEMA,
            "solution": solution}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def markdown(source: str, **metadata):
    """A plain markdown cell (prose, math, points)."""
    return new_markdown_cell(source.strip("\n"), metadata=metadata)


def code(source: str, **metadata):
    """A plain code cell that students may edit (not graded)."""
    return new_code_cell(source.strip("\n"), metadata=metadata)


def answer_cell(source: str, grade_id: str):
    """An autograded-answer cell: the student's code goes between the solution markers."""
    return new_code_cell(source.strip("\n"), metadata=_meta(grade_id, solution=True, grade=False, locked=False))


def test_cell(source: str, grade_id: str, points: float):
    """An autograded-test cell worth ``points``: visible asserts, then hidden ones between the markers."""
    if isinstance(points, bool) or not isinstance(points, (int, float)) or points <= 0:
        raise ValueError(f"points must be a positive number, got {points!r}")
    return new_code_cell(source.strip("\n"),
                         metadata=_meta(grade_id, solution=False, grade=True, locked=True, points=points))


def locked_cell(source: str, grade_id: str, tags: list[str] | None = None, cell_type: str = "code"):
    """A read-only cell (e.g. the parameters cell with ``FAST``); ``tags`` such as ["parameters"] for papermill."""
    metadata = _meta(grade_id, solution=False, grade=False, locked=True)
    if tags:
        metadata["tags"] = list(tags)
    make = new_code_cell if cell_type == "code" else new_markdown_cell
    return make(source.strip("\n"), metadata=metadata)


def notebook(cells: list) -> nbformat.NotebookNode:
    """A validated nbformat v4 notebook with the course's python3 kernel and stable cell ids."""
    nb = new_notebook(cells=list(cells), metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    for index, cell in enumerate(nb.cells):  # stable ids, so rebuilding a notebook gives the same file
        cell["id"] = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell-{index:02d}"
    nbformat.validate(nb)
    return nb


def nbgrader_cells(nb) -> list:
    """Cells that carry nbgrader metadata, in notebook order."""
    return [cell for cell in nb.cells if "nbgrader" in cell.get("metadata", {})]


def grade_cells(nb) -> dict[str, float]:
    """grade_id -> points of every autograded-test cell."""
    return {cell.metadata.nbgrader["grade_id"]: cell.metadata.nbgrader.get("points", 0)
            for cell in nbgrader_cells(nb) if cell.metadata.nbgrader.get("grade")}
