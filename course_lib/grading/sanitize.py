"""What the grader does to a submitted notebook around the student's code (repairs, guards, limits).

(Placeholder: ``autograde_config`` adds nothing yet; nbgrader's own sanitising applies.)
"""
from __future__ import annotations

__all__ = ["autograde_config", "findings"]


def autograde_config(course, assignment: str):
    """A traitlets Config fragment for the autograde API (extra sanitize/autograde preprocessors)."""
    from traitlets.config import Config

    return Config()


def findings(course, assignment: str, student: str) -> list[str]:
    """Short notes on what the sanitiser found in this submission (empty when nothing was wrong)."""
    return []
