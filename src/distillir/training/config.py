"""Recipe configs: dataclasses filled from YAML plus `--set key=value` overrides, checked before anything runs.

A config is a (possibly nested) dataclass. `load_config` reads the YAML, applies overrides (dotted keys,
values parsed as YAML: `--set trainer.max_steps=100`, `--set eval.ks=[1,5]`), and builds the dataclass,
checking every key and value against the field types. Mistakes are reported as `ConfigError`s that name
the key, where it came from (file and line, or the override) and, for a misspelt key, the closest known
keys, so a typo fails in the first second rather than after an hour of training.

Supported field types: bool, int, float, str, Path, Literal[...], X | None, list[X], tuple[X, ...],
dict[str, X], nested dataclasses (and `Any`, taken as is).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from distillir.errors import ConfigError
from distillir.utils.io import atomic_write

T = TypeVar("T")

CONFIG_FILE = "config.yaml"

# Where each key's value came from ("file.yaml, line 3" or "--set a.b=3"), by key path.
_Origins = dict[tuple[str, ...], str]


# ------------------------------------------------------------------------------------------- public API


def load_config(config_cls: type[T], yaml_path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build a `config_cls` instance from a YAML file (optional) and `key=value` overrides (applied last)."""
    data: dict[str, Any] = {}
    origins: _Origins = {}
    source = "defaults"
    if yaml_path is not None:
        data, origins = _read_yaml(Path(yaml_path))
        source = str(yaml_path)
    for override in overrides:
        _apply_override(data, origins, override)
    return _build(config_cls, data, (), origins, source)


def config_from_dict(config_cls: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """Build and check a config from a plain mapping (e.g. one read back from a run's config.yaml)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    return _build(config_cls, dict(data), (), {}, source)


def config_to_dict(config: Any) -> Any:
    """A config as plain YAML-ready data: dataclasses to dicts (in field order), paths to str, tuples to lists."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically), so a run records exactly what it ran with."""
    path = Path(path)
    with atomic_write(path) as f:
        yaml.safe_dump(config_to_dict(config), f, sort_keys=False, allow_unicode=True)
    return path


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two `config_to_dict` results (for resume warnings)."""
    keys = list(dict.fromkeys([*old, *new]))
    changed = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


# ----------------------------------------------------------------------------------------------- YAML


def _read_yaml(path: Path) -> tuple[dict[str, Any], _Origins]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    origins: _Origins = {}
    if node is not None:
        _collect_marks(node, (), path, origins)
    return data, origins


def _collect_marks(node: yaml.Node, prefix: tuple[str, ...], path: Path, origins: _Origins) -> None:
    """Record the line of every mapping key, refusing duplicates (PyYAML silently keeps the last one)."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        dotted = ".".join((*prefix, key))
        if key in seen:
            raise ConfigError(f"{path}, line {line}: duplicate key {dotted!r} (first given on line {seen[key]})")
        seen[key] = line
        origins[(*prefix, key)] = f"{path}, line {line}"
        _collect_marks(value_node, (*prefix, key), path, origins)


def _apply_override(data: dict[str, Any], origins: _Origins, override: str) -> None:
    where = f"--set {override}"
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{where}: expected KEY=VALUE, e.g. trainer.max_steps=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    parts = tuple(p.strip() for p in key.split("."))
    if any(not p for p in parts):
        raise ConfigError(f"{where}: empty part in key {key!r}")
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            node[part] = {}  # an override inside a section that was null or absent creates it
        node = node[part]
        origins.setdefault(parts[: i + 1], where)
    node[parts[-1]] = value
    # The override wins for this key and for everything under it.
    for k in [k for k in origins if k[: len(parts)] == parts]:
        del origins[k]
    origins[parts] = where
    if isinstance(value, dict):
        _mark_all(value, parts, where, origins)


def _mark_all(value: dict, prefix: tuple[str, ...], where: str, origins: _Origins) -> None:
    for k, v in value.items():
        origins[(*prefix, str(k))] = where
        if isinstance(v, dict):
            _mark_all(v, (*prefix, str(k)), where, origins)


# --------------------------------------------------------------------------------------- checking


def _where(path: tuple[str, ...], origins: _Origins, source: str) -> str:
    """The most precise known origin of a key: its own line, else its section's, else the file."""
    for i in range(len(path), 0, -1):
        if path[:i] in origins:
            return origins[path[:i]]
    return source


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) if path else "<top level>"


def _build(cls: type, data: Mapping[str, Any], path: tuple[str, ...], origins: _Origins, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            key_path = (*path, str(key))
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(_dotted((*path, c))) for c in close)}?" if close else ""
            section = f"{_dotted(path)!r}" if path else "the top level"
            raise ConfigError(
                f"{_where(key_path, origins, source)}: unknown key {_dotted(key_path)!r}{hint} "
                f"(keys of {section}: {', '.join(fields)})"
            )
    kwargs = {}
    for name, f in fields.items():
        key_path = (*path, name)
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key_path, origins, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_where(path, origins, source)}: missing required key {_dotted(key_path)!r}")
    try:
        return cls(**kwargs)
    except (ConfigError, ValueError, TypeError) as e:
        # Checks in __post_init__: where the key the message starts with (bare, or with its section's path:
        # "scale" or "teacher.scale") came from (a --set or its own line), else the section's origin.
        first = str(e).split(" ", 1)[0].rstrip(":")
        named = next((name for name in fields if first in (name, _dotted((*path, name)))), None)
        where = _where((*path, named) if named else path, origins, source)
        raise ConfigError(f"{where}: {_dotted(path)}: {e}") from None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return "mapping" if dataclasses.is_dataclass(tp) else tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: tuple[str, ...], origins: _Origins, source: str) -> Any:
    def fail(expected: str | None = None) -> ConfigError:
        return ConfigError(
            f"{_where(path, origins, source)}: {_dotted(path)}: expected {expected or _type_name(tp)}, "
            f"got {value!r} ({type(value).__name__})"
        )

    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path, origins, source)
            except ConfigError as e:
                errors.append(e)
        # One real alternative (X | None): its own message is the precise one.
        if len(errors) == 1:
            raise errors[0]
        raise fail()
    if origin is typing.Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):  # so True does not pass for 1
                return allowed
        raise fail(f"one of {', '.join(repr(a) for a in args)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _build(tp, value, path, origins, source)
        raise fail(f"a mapping for section {_dotted(path)!r}")
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        item = args[0] if args else Any
        return [_coerce(v, item, (*path[:-1], f"{path[-1]}[{i}]"), origins, source) for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail()
        if len(args) == 2 and args[1] is Ellipsis:
            items = [args[0]] * len(value)
        elif args:
            if len(value) != len(args):
                raise fail(f"a list of {len(args)} values")
            items = list(args)
        else:
            items = [Any] * len(value)
        return tuple(
            _coerce(v, t, (*path[:-1], f"{path[-1]}[{i}]"), origins, source) for i, (v, t) in enumerate(zip(value, items))
        )
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise fail()
        key_t, val_t = args if args else (Any, Any)
        return {
            _coerce(k, key_t, path, origins, source): _coerce(v, val_t, (*path, str(k)), origins, source)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads 2e-5 (no dot) as a string; accept what Python reads as a number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail("a string (quote it in YAML)")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise fail("a path")
    raise ConfigError(f"{_dotted(path)}: unsupported config field type {_type_name(tp)} (a bug in the recipe)")
