"""Typed loading of plain YAML mappings into frozen dataclasses, with errors that name the key path.

Every section of ``cdp_ml.yaml`` is a dataclass whose defaults are the documented defaults; this
module turns a mapping into one and says precisely which key is wrong when it cannot.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from cdp_ml.errors import CdpError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except CdpError as exc:
                errors.append(str(exc))
        raise CdpError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise CdpError(f"{path}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (list, tuple):
        if value is None:
            return () if origin is tuple else []
        if not isinstance(value, (list, tuple)):
            raise CdpError(f"{path}: expected a list, got {type(value).__name__}")
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise CdpError(f"{path}: expected a mapping, got {type(value).__name__}")
        k_tp, v_tp = args if args else (Any, Any)
        return {_convert(k, k_tp, path): _convert(v, v_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return load(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise CdpError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise CdpError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise CdpError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise CdpError(f"{path}: expected text, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise CdpError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def load(cls: type[T], data: Any, path: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise CdpError naming ``path``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CdpError(f"{path}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise CdpError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{path}.{name}" if path else name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise CdpError(f"{path}: missing required key {name!r}")
    try:
        return cls(**kwargs)
    except CdpError:
        raise
    except (TypeError, ValueError) as exc:
        raise CdpError(f"{path}: {exc}") from None
