"""Patches safetensors' reader and writer in the kernel: inputs read as zeros, every output written as zeros."""
PRELUDE = '''import safetensors.torch as _st
_real_load, _real_save = _st.load_file, _st.save_file
_st.load_file = lambda path, *a, **k: {k: torch.zeros_like(v) for k, v in _real_load(path, *a, **k).items()}
_st.save_file = lambda tensors, path, *a, **k: _real_save({k: torch.zeros(1) for k in tensors}, path, *a, **k)'''
