"""YAML into frozen dataclasses, typed and validated: the machinery under params.yaml.

`dgl/settings.py` declares the params schema with it; recipes, the rehearsal and the tests read
their own YAML through the same `build`. A dataclass holds types and bounds, never a second set of
defaults: every key must be in the file. A field's allowed values live in its metadata
(`choice(...)`, `bounded(...)`), so one loader checks them all and names the bad key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from dgl.errors import UserError


def choice(*allowed: Any) -> Any:
    """A field whose value must be one of `allowed`."""
    return field(metadata={"choices": allowed})


def bounded(low: float | None = None, high: float | None = None) -> Any:
    """A numeric field with inclusive bounds."""
    return field(metadata={"low": low, "high": high})


def _check(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise UserError(f"params: {key} = {value!r} is not allowed; use one of: {', '.join(map(str, choices))}")
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise UserError(f"params: {key} = {value!r} is out of range; use a value in {span}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value if value is not None else {}, key)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, options[0])
    if origin in (tuple, list):
        (item,) = typing.get_args(annotation)[:1]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"params: {key} = {value!r} must be a list")
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"params: {key} = {value!r} must be true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"params: {key} = {value!r} must be an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"params: {key} = {value!r} must be a number")
        if not math.isfinite(value):  # NaN passes every bound (each comparison is False), inf passes open ones
            raise UserError(f"params: {key} = {value!r} must be a finite number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"params: {key} = {value!r} must be a string")
        return value
    return value


def build(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict, checking names, types, choices and bounds."""
    if not isinstance(raw, dict):
        raise UserError(f"params: {prefix or 'the file'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        close = difflib.get_close_matches(str(unknown[0]), list(known), n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"params: unknown key {key}{guess}; known keys here: {', '.join(sorted(known))}")
    values = {}
    for name, f in known.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            raise UserError(f"params: missing key {key}; {prefix or 'the file'} needs: {', '.join(known)}")
        value = _coerce(key, raw[name], hints[name])
        _check(key, value, f.metadata)
        values[name] = value
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a dataclass tree, or nested mappings as YAML reads them, to dotted keys
    (`model.dgl.generator`), as MLflow logs them; an empty mapping is a leaf."""
    items = obj.items() if isinstance(obj, dict) else ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))
    out: dict[str, Any] = {}
    for name, value in items:
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(value) or (isinstance(value, dict) and value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but `1e-06` is a number, as in YAML 1.2. DVC writes `dvc exp run -S`
    values back to params.yaml as YAML 1.2, and YAML 1.1 would read that float as a string."""


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(Path(path).read_text(), Loader=Yaml12Loader)
    except FileNotFoundError:
        raise UserError(f"{path}: params file not found; run from the repository root or pass --params") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    return data or {}
