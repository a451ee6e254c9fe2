"""Immutable records for the container start path, where importing dataclasses costs ~10 ms.

`flexai-runtime` runs on every container start with a budget of a few tens of milliseconds, and
`import dataclasses` (which imports inspect, ast, dis, ...) plus generating each class's methods
with exec takes about 10 ms of it. `@record` gives the part of @dataclass(frozen=True) these
records use: fields from the class annotations (strings under `from __future__ import
annotations`, so no typing import), defaults from class attributes, keyword or positional
construction, equality, hashing, repr and immutability; `fields`, `asdict` and `replace` mirror
their dataclasses namesakes. Modules off the start path use dataclasses as usual.
"""

from __future__ import annotations

_FIELDS = "__record_fields__"


def record(cls: type) -> type:
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    for n in defaults:
        delattr(cls, n)  # the value lives on each instance, as with dataclasses

    name_set = frozenset(names)
    fresh = {n for n, v in defaults.items() if isinstance(v, (dict, list))}  # copied per instance

    def __init__(self, *args, **kwargs):
        if not args and name_set.issuperset(kwargs):
            # Keywords only, all known (flexaid builds a Reservation per container start): the
            # values go straight into the instance dict, in field order, as below.
            values = self.__dict__
            for name in names:
                if name in kwargs:
                    values[name] = kwargs[name]
                elif name in defaults:
                    default = defaults[name]
                    values[name] = type(default)(default) if name in fresh else default
                else:
                    raise TypeError(f"{cls.__name__}() missing field {name!r}")
            return
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} fields, {len(args)} given")
        values = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"{cls.__name__}() got an unexpected field {key!r}")
            if key in values:
                raise TypeError(f"{cls.__name__}() got field {key!r} twice")
            values[key] = value
        for name in names:
            if name not in values:
                if name not in defaults:
                    raise TypeError(f"{cls.__name__}() missing field {name!r}")
                default = defaults[name]
                # A fresh copy of a mutable default, so instances never share one.
                values[name] = type(default)(default) if isinstance(default, (dict, list)) else default
            object.__setattr__(self, name, values[name])

    def _values(self) -> tuple:
        return tuple(getattr(self, n) for n in names)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _values(self) == _values(other)

    def __hash__(self):
        return hash(tuple(v if not isinstance(v, (dict, list)) else repr(v) for v in _values(self)))

    def __repr__(self):
        return f"{cls.__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"

    def __setattr__(self, name, value):
        raise AttributeError(f"{cls.__name__} is immutable; use record.replace()")

    def __delattr__(self, name):
        raise AttributeError(f"{cls.__name__} is immutable")

    for method in (__init__, __eq__, __hash__, __repr__, __setattr__, __delattr__):
        method.__qualname__ = f"{cls.__qualname__}.{method.__name__}"
        setattr(cls, method.__name__, method)
    setattr(cls, _FIELDS, names)
    return cls


def fields(obj_or_cls) -> tuple[str, ...]:
    return getattr(obj_or_cls, _FIELDS)


def asdict(obj) -> dict:
    values = vars(obj)  # the fields, in field order (__init__ sets nothing else)
    names = fields(obj)
    if len(values) == len(names):
        return dict(values)
    return {n: getattr(obj, n) for n in names}


def replace(obj, **changes):
    return obj.__class__(**{**asdict(obj), **changes})
