"""Where adaretrieve keeps what it can rebuild (exported ONNX graphs, folder indexes built before a Qdrant upload)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$ADARETRIEVE_CACHE, else $XDG_CACHE_HOME/adaretrieve, else ~/.cache/adaretrieve."""
    env = os.environ.get("ADARETRIEVE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "adaretrieve"
