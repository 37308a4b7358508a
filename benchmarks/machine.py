"""What benchmark scripts record about the machine beside their figures (shared by the scripts)."""

from __future__ import annotations

import subprocess


def uptime() -> str:
    """`uptime`'s line (load averages), or "" where the command is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
