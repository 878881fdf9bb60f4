"""The "tamper" course of tests/test_grading_tamper.py: four small answers graded by torch tests, and its checks.

SOURCE_CELLS build the nbgrader source notebook (course_lib.grading.cells); CHECKS is the text of its
solutions/tamper/checks.py (course_lib.grading.verdicts). WRONG holds one wrong answer per answer cell: every
hostile submission starts from them, so a submission that scores anything has fooled the grader.
"""

IMPORTS = """import math
import os

import numpy as np
import torch

AUTOGRADE = os.environ.get("COURSE_AUTOGRADE") == "1"
"""

ANSWERS = {
    "scale": '''def scale(x, s):
    """x times the number s."""
    ### BEGIN SOLUTION
    return x * s
    ### END SOLUTION''',
    "norm": '''def norm(v):
    """Euclidean length of a 1-D tensor, as a Python float."""
    ### BEGIN SOLUTION
    return math.sqrt(sum(float(x) ** 2 for x in v))
    ### END SOLUTION''',
    "softmax": '''def softmax(x):
    """Softmax over the last axis."""
    ### BEGIN SOLUTION
    e = (x - x.max(dim=-1, keepdim=True).values).exp()
    return e / e.sum(dim=-1, keepdim=True)
    ### END SOLUTION''',
    "count_positive": '''def count_positive(x):
    """How many entries of x are > 0, as an int."""
    ### BEGIN SOLUTION
    return int((x > 0).sum())
    ### END SOLUTION''',
}

TESTS = {
    "test_scale": ("scale", 2, """_x = torch.tensor([1.0, -2.0, 3.0])
_expected = torch.tensor([2.0, -4.0, 6.0])
assert torch.allclose(scale(_x, 2.0), _expected), "scale(x, 2) doubles x"
### BEGIN HIDDEN TESTS
assert torch.equal(scale(torch.zeros(2), 5.0), torch.zeros(2))
### END HIDDEN TESTS"""),
    "test_norm": ("norm", 2, """_n = norm(torch.tensor([3.0, 4.0]))
assert isinstance(_n, float), f"norm returns a float, got {type(_n).__name__}"
assert math.isclose(_n, 5.0) and np.isclose(_n, 5.0), f"norm([3, 4]) is 5, got {_n}"
### BEGIN HIDDEN TESTS
assert abs(norm(torch.tensor([1.0, 2.0, 2.0])) - 3.0) < 1e-6
### END HIDDEN TESTS"""),
    "test_softmax": ("softmax", 2, """from torch.testing import assert_close
_x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
assert_close(softmax(_x), torch.softmax(_x, dim=-1))
### BEGIN HIDDEN TESTS
assert torch.allclose(softmax(_x * 10).sum(-1), torch.ones(2))
### END HIDDEN TESTS"""),
    "test_count": ("count_positive", 2, """assert count_positive(torch.tensor([1.0, -1.0, 2.0, 0.0])) == 2, "two are > 0"
### BEGIN HIDDEN TESTS
assert count_positive(torch.zeros(3)) == 0
### END HIDDEN TESTS"""),
}

# wrong everywhere except where a test is lenient: only a fooled grader gives them points
WRONG = {
    "scale": "def scale(x, s):\n    return x + s",
    "norm": "def norm(v):\n    return float(sum(abs(float(x)) for x in v))",
    "softmax": "def softmax(x):\n    return x.exp()",
    "count_positive": "def count_positive(x):\n    return int((x >= 0).sum())",
}

CHECKS = '''
import torch

from course_lib.grading.verdicts import Check

# one or two float32 operations on values < ~10: error < 1.2e-7 * 10 * 2 ~ 3e-6
CHECKS = {
    "test_scale": Check(probe="outputs['y'] = scale(inputs['x'], float(inputs['s']))",
                        inputs=lambda g: {"x": torch.randn(4, 5, generator=g) * 3, "s": torch.randn((), generator=g)},
                        expect=lambda x: {"y": (x["x"].double() * float(x["s"])).float()}, rtol=1e-6, atol=3e-6),
    "test_norm": Check(probe="outputs['n'] = norm(inputs['v'])",
                       inputs=lambda g: {"v": torch.randn(7, generator=g) * 3},
                       expect=lambda x: {"n": float(x["v"].double().norm())}, rtol=1e-6, atol=1e-6),
    "test_softmax": Check(probe="outputs['p'] = softmax(inputs['x'])",
                          inputs=lambda g: {"x": torch.randn(3, 6, generator=g) * 3},
                          expect=lambda x: {"p": x["x"].double().softmax(-1).float()}, rtol=1e-5, atol=3e-6),
    "test_count": Check(probe="outputs['c'] = count_positive(inputs['x'])",
                        inputs=lambda g: {"x": torch.randint(-3, 4, (60,), generator=g).float()},
                        expect=lambda x: {"c": int((x["x"] > 0).sum())}),
}
'''


def source_notebook():
    from course_lib.grading.cells import answer_cell, locked_cell, markdown, notebook, test_cell

    cells = [markdown("# Tamper course\n\n8 points."), locked_cell(IMPORTS, "imports", tags=["parameters"])]
    for test, (answer, points, source) in TESTS.items():
        cells += [answer_cell(ANSWERS[answer], answer), test_cell(source, test, points)]
    return notebook(cells)
