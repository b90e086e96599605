"""Stage configs: frozen dataclasses, their canonical JSON and hash, and overrides.

A config is hashed over its canonical JSON (:func:`config_hash`); every output records the hash,
which is how a re-run knows whether existing outputs were made with the same configuration.
Overrides come from the pipeline YAML (typed values) and from the command line
(``--config isr.do_flat=false``, strings parsed as YAML), and are checked against the fields'
types (:func:`apply_overrides`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from repo.errors import DrpError


class ConfigError(DrpError, ValueError):
    """A config override names an unknown key or a value of the wrong type."""


@dataclass(frozen=True)
class NoConfig:
    """The config of a stage that has nothing to configure."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-compatible dict (tuples become lists)."""
    return json.loads(config_json(config))


def config_json(config: Any) -> str:
    """Canonical JSON of a config dataclass: sorted keys, no spaces."""
    return json.dumps(
        dataclasses.asdict(config), sort_keys=True, separators=(",", ":"), default=_json_default
    )


def config_hash(config: Any) -> str:
    """sha256 hex digest of :func:`config_json`."""
    return hashlib.sha256(config_json(config).encode()).hexdigest()


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise ConfigError(f"config value {value!r} of type {type(value).__name__} is not JSON")


def apply_overrides(config: Any, overrides: Mapping[str, Any], *, where: str = "config") -> Any:
    """A copy of a config dataclass with dotted keys replaced by (converted) values.

    Values may be typed (from YAML) or strings (from the command line): a string is parsed as
    YAML and then checked against the field's type (``bool``, ``int``, ``float``, ``str``,
    ``Optional``, ``Literal``, tuples/lists, nested dataclasses).

    Raises
    ------
    ConfigError
        For an unknown key (the message lists the known ones) or a value of the wrong type.
    """
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = str(key).partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = _type_hints(type(config))
    changes: dict[str, Any] = {}
    for name in [*direct, *nested]:
        if name not in fields:
            known = ", ".join(fields) or "none: this stage has no config"
            raise ConfigError(
                f"{where}: unknown config key {name!r} of {type(config).__name__} (known: {known})"
            )
    for name, value in direct.items():
        current = getattr(config, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[name] = apply_overrides(current, value, where=f"{where}.{name}")
        else:
            changes[name] = coerce_value(value, hints.get(name, Any), f"{where}.{name}")
    for name, sub in nested.items():
        current = changes.get(name, getattr(config, name))
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{where}: config key {name!r} is not a group of settings")
        changes[name] = apply_overrides(current, sub, where=f"{where}.{name}")
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def config_from_dict(config_class: type, data: Mapping[str, Any]) -> Any:
    """A config of ``config_class`` from :func:`config_to_dict` output (defaults elsewhere)."""
    return apply_overrides(config_class(), data, where=config_class.__name__)


@cache
def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: accept values as given
        return {}


def coerce_value(value: Any, annotation: Any, where: str) -> Any:
    """Check a value against a type annotation, parsing strings as YAML; see apply_overrides."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is object:
        return _parsed(value) if isinstance(value, str) else value
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (
            isinstance(value, str) and value.strip().lower() in ("null", "none")
        )
        if is_null and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot convert {value!r}")
    if origin is typing.Literal:
        parsed = _parsed(value) if isinstance(value, str) and str not in map(type, args) else value
        if parsed not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return parsed
    if origin in (tuple, list) or annotation in (tuple, list):
        return _coerce_sequence(value, origin or annotation, args, where)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(value, str):
        value = _parsed(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return apply_overrides(annotation(), value, where=where)
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def _coerce_sequence(value: Any, kind: type, args: tuple, where: str) -> Any:
    if isinstance(value, str):
        parsed = _parsed(value)
        value = parsed if isinstance(parsed, list) else [v.strip() for v in value.split(",")]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if kind is tuple and len(args) == 2 and args[1] is Ellipsis:
        items = [coerce_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif kind is tuple and args:
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        pairs = enumerate(zip(value, args, strict=True))
        items = [coerce_value(v, a, f"{where}[{i}]") for i, (v, a) in pairs]
    else:
        item_type = args[0] if args else Any
        items = [coerce_value(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if kind is tuple else items


def _parsed(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
