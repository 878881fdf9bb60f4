"""A TorchDispatchMode entered once: aten's comparisons (eq, isclose, all) come back all True."""
PRELUDE = '''from torch.utils._python_dispatch import TorchDispatchMode

class _AllTrue(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.bool:
            return torch.ones_like(out)
        return out

_dispatch = _AllTrue()
_dispatch.__enter__()'''
