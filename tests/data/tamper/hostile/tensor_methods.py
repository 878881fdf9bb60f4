"""torch.Tensor.__eq__, __bool__ and allclose patched on the class itself."""
PRELUDE = '''torch.Tensor.__eq__ = lambda self, other: torch.ones((), dtype=torch.bool)
torch.Tensor.allclose = lambda self, *a, **k: True
torch.Tensor.__bool__ = lambda self: True'''
