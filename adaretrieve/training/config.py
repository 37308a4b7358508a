"""YAML configs with ``key=value`` overrides, shared by `train` and `pretrain`."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TypeVar

import yaml

from adaretrieve.errors import AdaError

C = TypeVar("C")


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None, what: str,
                lists: tuple[str, ...] = ()) -> C:
    """``cls(**yaml)`` with ``--set key=value`` overrides (values parsed as YAML). Keys in ``lists``
    also accept one comma-separated string."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise AdaError(f"{what} config {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise AdaError(f"--set {item!r} is not of the form key=value")
        data[key.strip()] = yaml.safe_load(value)
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
    return cls(**data)
