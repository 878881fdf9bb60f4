"""An import hook (sys.meta_path) serves a fake torch.testing whose assert_close never fails."""
PRELUDE = '''import sys, types, importlib.abc, importlib.machinery

class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torch.testing":
            return importlib.machinery.ModuleSpec(name, self)
        return None
    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.assert_close = lambda *a, **k: None
        return module
    def exec_module(self, module):
        pass

sys.meta_path.insert(0, _Finder())
sys.modules.pop("torch.testing", None)
torch.testing = None'''
