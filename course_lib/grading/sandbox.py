"""Where student code runs while it is graded: the kernel's isolation and limits.

(Placeholder: ``kernel_config`` adds nothing yet, so kernels run as nbgrader starts them.)
"""
from __future__ import annotations

__all__ = ["kernel_config"]


def kernel_config(course, assignment: str, student: str):
    """A traitlets Config fragment for the autograde API of one submission (kernel name, limits, ...)."""
    from traitlets.config import Config

    return Config()
