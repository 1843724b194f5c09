"""Field checks shared by the settings types, and building them from plain mappings.

Each settings type calls ``check_fields`` (types against annotations) and the range helpers in
``__post_init__``; ``build_settings`` turns a parsed TOML/YAML/JSON mapping into nested settings,
refusing unknown keys with the nearest valid one. All errors are one line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, get_type_hints

from hetdiff.errors import HetdiffError


def check_fields(obj: Any) -> None:
    """Refuse values whose type does not match the annotation (bool is not an int; an int is a
    float); one line naming the type, the field and the value."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise HetdiffError(
                f"{type(obj).__name__}.{f.name} must be {_describe(hints[f.name])}, got {value!r}"
            )


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(
            _matches(v, a) for v, a in zip(value, args, strict=True)
        )
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is tuple:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def at_least(obj: Any, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise HetdiffError(f"{type(obj).__name__}.{name} must be >= {minimum:g}, got {value!r}")


def one_of(obj: Any, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise HetdiffError(
            f"{type(obj).__name__}.{name} {value!r} is unknown; use one of {', '.join(allowed)}"
        )


def in_unit(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0.0 <= value <= 1.0:
            raise HetdiffError(f"{type(obj).__name__}.{name} must be in [0, 1], got {value!r}")


def _tuple_of_dataclasses(hint: Any) -> bool:
    args = typing.get_args(hint)
    return typing.get_origin(hint) is tuple and bool(args) and dataclasses.is_dataclass(args[0])


def build_settings(cls: type, values: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into nested settings; unknown keys are
    refused with the nearest valid one, lists become tuples."""
    if not isinstance(values, dict):
        raise HetdiffError(
            f"{where.rstrip('.') or 'config'} must be a table/mapping, got {values!r}"
        )
    names = [f.name for f in dataclasses.fields(cls)]
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise HetdiffError(f"unknown config key {where + str(key)!r}{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = build_settings(hint_type, value, f"{where}{key}.")
        elif _tuple_of_dataclasses(hint_type):
            item = typing.get_args(hint_type)[0]
            if not isinstance(value, list | tuple) or not value:
                raise HetdiffError(f"config key {where + key!r} must be a non-empty list of tables")
            kwargs[key] = tuple(
                build_settings(item, v, f"{where}{key}[{i}].") for i, v in enumerate(value)
            )
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except HetdiffError as err:  # name the key: "RouterSettings.steps ..." -> "router.steps ..."
        message, own = str(err), f"{cls.__name__}."
        if message.startswith(own):
            message = where + message[len(own) :]
        elif where and where.rstrip(".") not in message:
            message = f"{where.rstrip('.')}: {message}"
        raise HetdiffError(message) from None
