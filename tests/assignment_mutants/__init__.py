"""Mutants: deliberately wrong answers that the assignments' tests must catch, and only where expected.

``tests/assignment_mutants/<assignment>.py`` defines

    MUTANTS = [
        {"name": "kl_sign_error",
         "replace": {"<grade_id of an autograded-answer cell>": "<the full new source of that cell>"},
         "expect_fail": ["<grade_id of each test cell that must score 0>"]},
    ]

``tests/test_grading.py`` applies each mutant to the source solution, autogrades it as one more student, and
checks that exactly the ``expect_fail`` test cells score 0 while every other test cell keeps full points.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_mutants(assignment: str) -> list[dict]:
    """The MUTANTS list of ``<assignment>.py`` (empty if there is no such file), checked for its shape."""
    path = HERE / f"{assignment}.py"
    if not path.is_file():
        return []
    spec = importlib.util.spec_from_file_location(f"assignment_mutants_{assignment}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mutants = module.MUTANTS
    names = [m.get("name") for m in mutants]
    if len(set(names)) != len(names):
        raise ValueError(f"mutant names must be unique in {assignment}.py, got {names}")
    for mutant in mutants:
        if set(mutant) != {"name", "replace", "expect_fail"} or not mutant["replace"] or not mutant["expect_fail"]:
            raise ValueError(f"each mutant needs a name, a non-empty replace dict and a non-empty expect_fail "
                             f"list, got {mutant!r}")
    return mutants
