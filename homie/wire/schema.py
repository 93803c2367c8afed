"""Messages as dataclasses: the schema table `homie.wire.messages` validates
against is derived from the classes registered here, so each schema has one copy."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import field
from typing import Any, TypeVar

Schema = dict[str, tuple[tuple[type, ...], bool]]  # field -> (types, required)


def absent_or(default: Any = None) -> Any:
    """A field that may be left out, but when present has exactly its declared type
    (`executor: str | None = absent_or()`: a string or nothing, never null)."""
    return field(default=default, metadata={"not_null": True})


def field_types(hint: Any) -> tuple[type, ...]:
    """The runtime types an annotation allows (an int is a float; bool is neither)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for arg in typing.get_args(hint) for t in field_types(arg))
    if hint is type(None):
        return (type(None),)
    origin = typing.get_origin(hint) or hint
    return (int, float) if origin is float else (origin,)


def schema_of(cls: type) -> Schema:
    """A message dataclass as the table `validate` checks: required fields have no default."""
    hints = typing.get_type_hints(cls)
    out: Schema = {}
    for f in dataclasses.fields(cls):
        allowed = field_types(hints[f.name])
        if f.metadata.get("not_null"):
            allowed = tuple(t for t in allowed if t is not type(None))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[f.name] = (allowed, required)
    return out


_CLASSES: dict[str, type] = {}
_T = TypeVar("_T")


def message(t: str) -> Callable[[type[_T]], type[_T]]:
    """Register a (frozen) dataclass as the message named `t`."""
    def register(cls: type[_T]) -> type[_T]:
        assert dataclasses.is_dataclass(cls) and t not in _CLASSES, t
        _CLASSES[t] = cls
        return cls
    return register


def typed(msg: Any) -> Any:
    """A validated Message (homie.wire.protocol) as its dataclass; fields it does not declare are dropped."""
    cls = _CLASSES[msg.t]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in msg.body.items() if k in names})
