"""Legitimate patching of the student's own helpers and warnings filters, a tensor subclass used honestly."""
PRELUDE = '''import warnings
warnings.filterwarnings("ignore")

class Labelled(torch.Tensor):
    """A tensor subclass that only carries a label (no comparison is changed)."""
    label = "data"'''
ANSWERS = {
    "scale": "def scale(x, s):\n    y = x.as_subclass(Labelled) * s\n    return y.as_subclass(torch.Tensor)",
    "count_positive": "def count_positive(x):\n    return len([v for v in x.tolist() if v > 0])",
}
