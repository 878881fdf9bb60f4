"""``JSONConfig``: the JSON round-trip every config dataclass of the course shares.

    @dataclass
    class UNetConfig(JSONConfig):
        block_channels: tuple[int, ...] = (32, 64)
        ...

    UNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config

``to_dict`` writes tuples as lists and nested configs as dicts; ``from_dict`` rejects unknown keys by name,
rebuilds nested configs from their annotations, and leaves the rest (lists back to tuples, ranges) to the
dataclass's own ``__post_init__``, the one place each config validates itself.
"""
from __future__ import annotations

import dataclasses
import typing

__all__ = ["JSONConfig"]


def _to_json(value):
    if isinstance(value, JSONConfig):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_json(item) for item in value]
    return value


class JSONConfig:
    """Mixin for ``@dataclass`` configs: ``to_dict()`` -> JSON-ready dict, ``from_dict(d)`` -> config."""

    def to_dict(self) -> dict:
        return {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict of {cls.__name__} fields, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"d has unknown {cls.__name__} keys {unknown}; allowed keys are {known}")
        hints = typing.get_type_hints(cls)
        nested = {name: hints[name].from_dict(value) for name, value in d.items()
                  if isinstance(value, dict) and isinstance(hints[name], type) and issubclass(hints[name], JSONConfig)}
        return cls(**{**d, **nested})
