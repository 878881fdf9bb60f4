"""softmax is an instance of an nn.Module subclass; scale a lambda; norm a generator expression."""
ANSWERS = {
    "softmax": '''class _Softmax(torch.nn.Module):
    def forward(self, x):
        shifted = x - x.amax(dim=-1, keepdim=True)
        return shifted.exp() / shifted.exp().sum(dim=-1, keepdim=True)

softmax = _Softmax()''',
    "scale": "scale = lambda x, s: torch.mul(x, s)",
    "norm": "def norm(v):\n    return math.sqrt(sum(x * x for x in (float(t) for t in v)))",
}
