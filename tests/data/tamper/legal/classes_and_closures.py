"""Answers built by a factory (closures), a callable class instance, numpy inside, functools.partial."""
ANSWERS = {
    "scale": '''import functools

def _times(x, s, *, out_dtype=None):
    return (x * s).to(out_dtype or x.dtype)

scale = functools.partial(_times)''',
    "norm": '''class _Norm:
    def __call__(self, v):
        return float(np.sqrt(np.sum(np.square(v.numpy().astype(np.float64)))))

norm = _Norm()''',
    "softmax": '''def _make_softmax(dim):
    def softmax(x):
        return torch.nn.functional.softmax(x, dim=dim)
    return softmax

softmax = _make_softmax(-1)''',
}
