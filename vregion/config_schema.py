"""Generic schema machinery for typed configs: fields with help and bounds, strict dict -> dataclass loading
(unknown keys name the valid ones), and dotted overrides (`stages.1.optim.lr=1e-4`).

Nothing here knows vregion's sections; `config.py` declares them with `setting` and loads them with `from_dict`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import field
from typing import Any, Literal

import yaml

class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def setting(default: Any, help: str, **bounds: Any) -> Any:
    """A dataclass field with a help string and optional numeric bounds (ge / gt / le / lt), checked on load.

    Mutable defaults are copied per instance.
    """
    metadata = {"help": help, **bounds}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=metadata)
    return field(default=default, metadata=metadata)


def _check_bounds(value: Any, metadata: Any, where: str) -> None:
    """Refuse a number outside the field's declared range, naming the key and the range."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    rules = [(op, test, metadata[name]) for name, (op, test) in _BOUNDS.items() if name in metadata]
    if rules and not all(test(value, bound) for _, test, bound in rules):
        allowed = " and ".join(f"{op} {bound}" for op, _, bound in rules)
        raise ConfigError(f"{where}: {value!r} is out of range; valid: {allowed}")


# ------------------------------------------------------------------------------------------- machinery
def join_key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def deep_merge(base: dict, over: dict) -> dict:
    """`base` with `over` merged in, recursively for nested dicts (copies; neither argument is changed)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is loose (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if not any(value == c and type(value) is type(c) for c in choices):  # True is not 1, "2" is not 2
            raise ConfigError(f"{where}: {value!r} is not valid; valid: {' | '.join(map(str, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp in (bool, str, list, dict):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys with the list of valid ones."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    valid = list(fields)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            section = where or "the top level"
            raise ConfigError(
                f"unknown config key '{path}'{hint}; valid keys in {section}: {', '.join(valid)}"
            )
        kwargs[key] = _coerce(hints[key], value, path)
        _check_bounds(kwargs[key], fields[key].metadata, path)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:  # cross-field rules of the section
        check(where)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain nested dict of a config dataclass (YAML-serialisable)."""
    return copy.deepcopy(dataclasses.asdict(obj)) if dataclasses.is_dataclass(obj) else copy.deepcopy(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as YAML so numbers/bools/lists keep their type)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def _list_index(node: list, key: str, where: str) -> int:
    """The list position `key` names, or a ConfigError saying which indices exist."""
    have = f"{len(node)} entries" + (f" ({where}.0 .. {where}.{len(node) - 1})" if node else "")
    if not key.isdigit():
        raise ConfigError(f"{join_key(where, key)}: {where} is a list, so '{key}' must be an index; it has {have}")
    if int(key) >= len(node):
        raise ConfigError(f"{join_key(where, key)}: index out of range; {where} has {have}")
    return int(key)


def apply_override(data: dict, keys: list[str], value: Any) -> None:
    """Set a dotted key in a nested dict; list entries are addressed by index (stages.1.optim.lr).

    Raises:
        ConfigError: a list index that is not a number or not in the list (naming how many entries exist),
            or a key below a plain value (`optim.lr.x`).
    """
    node: Any = data
    where = ""
    for pos, k in enumerate(keys):
        last = pos == len(keys) - 1
        if isinstance(node, list):
            k = _list_index(node, k, where)
        elif not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(keys)}: {where} is a value ({node!r}), not a section with keys")
        elif not last and node.get(k) is None:
            if keys[pos + 1].isdigit():  # e.g. stages.0.x in a config without stages
                raise ConfigError(f"{join_key(join_key(where, k), keys[pos + 1])}: index out of range; "
                                  f"{join_key(where, k)} has 0 entries")
            node[k] = {}
        if last:
            node[k] = value
        else:
            node = node[k]
            where = join_key(where, str(k))
