"""YAML configs with ``key=value`` overrides, shared by `train` and `pretrain`."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

import yaml

from adaretrieve.errors import AdaError

C = TypeVar("C")


def read_yaml(path: Path, what: str) -> dict:
    """A YAML mapping from ``path``; a syntax error or another top level is an AdaError naming the file."""
    if path.is_dir():
        raise AdaError(f"{what} config {path} is a folder, not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise AdaError(f"{path}: not valid YAML ({getattr(e, 'problem', None) or e}{at})") from None
    except UnicodeDecodeError as e:
        raise AdaError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AdaError(f"{path}: expected a mapping of setting: value at the top level, got a {type(data).__name__}")
    return data


_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,), "None": (type(None),)}


def _kinds(annotation: str) -> tuple[list[tuple], str]:
    """``"list[str] | None"`` -> ([(list, str), (NoneType,)], the annotation)."""
    out = []
    for part in annotation.split("|"):
        part = part.strip()
        if part.startswith("list["):
            out.append((list, _KINDS[part[5:-1]][0]))
        else:
            out.append(_KINDS[part])
    return out, annotation


def check_types(obj, what: str) -> None:
    """Every field of the dataclass ``obj`` holds a value of its annotated type (ints pass as floats;
    bools are not numbers); AdaError naming the key, the expected type and the value otherwise."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        kinds, ann = _kinds(str(f.type))
        ok = False
        for kind in kinds:
            if kind[0] is list and len(kind) == 2:
                ok = isinstance(value, list) and all(isinstance(v, kind[1]) for v in value)
            else:
                ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in kind)
            if ok:
                break
        if not ok:
            raise AdaError(f"{what} setting {f.name} should be {ann.replace('None', 'null')}, got {value!r:.80}")


def check_at_least(obj, what: str, limits: dict[str, float], above: tuple[str, ...] = ()) -> None:
    """``limits``: key -> smallest allowed value; keys in ``above`` must exceed it instead."""
    for key, low in limits.items():
        value = getattr(obj, key)
        if value is None:
            continue
        if value < low or (key in above and value <= low):
            rule = f"greater than {low}" if key in above else f"at least {low}"
            raise AdaError(f"{what} setting {key}={value!r} must be {rule}")


def resolve_config_paths(data: dict, base: Path, paths: dict[str, bool]) -> dict:
    """Relative paths written in a config file, read from the file's folder (so a config runs the same
    from any directory). ``paths``: key -> True for a path (always resolved), False for a value that
    may also be an alias or a Hub id (``minilm``, ``org/name``: resolved only when the path exists)."""
    def one(value, always: bool):
        if not isinstance(value, str) or not value or value.startswith("~") or Path(value).is_absolute():
            return value
        candidate = base / value
        return os.path.normpath(candidate) if always or candidate.exists() else value

    out = dict(data)
    for key, always in paths.items():
        if key in out:
            v = out[key]
            out[key] = [one(x, always) for x in v] if isinstance(v, list) else one(v, always)
    return out


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None, what: str,
                lists: tuple[str, ...] = (), paths: dict[str, bool] | None = None) -> C:
    """``cls(**yaml)`` with ``--set key=value`` overrides (values parsed as YAML). Keys in ``lists``
    also accept one comma-separated string. Keys in ``paths`` written in the file are read from the
    file's folder (see ``resolve_config_paths``); ``--set`` values stay relative to the current directory."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise AdaError(f"{what} config {p} does not exist")
        data = read_yaml(p, what)
        if isinstance(data, dict) and paths:
            data = resolve_config_paths(data, p.parent, paths)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise AdaError(f"--set {item!r} is not of the form key=value")
        try:
            data[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise AdaError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    known = {f.name for f in fields(cls)}
    bad = sorted(set(data) - known)
    if bad:
        raise AdaError(f"unknown {what} settings {bad}; known: {sorted(known)}")
    for key in lists:
        if isinstance(data.get(key), str):
            data[key] = [s.strip() for s in data[key].split(",") if s.strip()]
    types = {f.name: str(f.type) for f in fields(cls)}
    for key, value in data.items():
        # YAML 1.1 reads 5e-5 (no dot) as a string; numbers are what the setting means
        kind = types[key].split("|")[0].strip()
        if isinstance(value, str) and kind in ("float", "int"):
            try:
                data[key] = float(value) if kind == "float" else int(value)
            except ValueError:
                raise AdaError(f"{what} setting {key}={value!r} is not a number") from None
        elif kind == "list[str]" and isinstance(data[key], list):
            data[key] = [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in data[key]]
    return cls(**data)
