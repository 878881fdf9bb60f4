"""gc.get_objects finds the guard's snapshot dicts and poisons them, so its "restore" installs the fakes."""
PRELUDE = '''import gc
_fake_allclose = lambda *a, **k: True
_fake_isclose = lambda *a, **k: True
_real_allclose, _real_isclose = torch.allclose, math.isclose
for _obj in gc.get_objects():
    if isinstance(_obj, dict):
        for _key, _value in list(_obj.items()):
            if _value is _real_allclose:
                _obj[_key] = _fake_allclose
            elif _value is _real_isclose:
                _obj[_key] = _fake_isclose
torch.allclose, math.isclose = _fake_allclose, _fake_isclose'''
