"""The Hugging Face Hub, asked only when needed and never waited on: a Hub id that cannot be loaded
now (not in the local cache, and offline) fails at once with one line instead of minutes of retries."""

from __future__ import annotations

import os

from adaretrieve.errors import AdaError

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_var(names: tuple[str, ...] = OFFLINE_VARS) -> str | None:
    """The first of ``names`` set to a true value, or None."""
    return next((v for v in names if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")), None)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (HF_ENDPOINT) answers a TCP connection within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id huggingface_hub rejects, or no huggingface_hub: let the loader say so
        return False


def require_hub(what: str, hint: str, offline_names: tuple[str, ...] = OFFLINE_VARS) -> None:
    """``what`` (e.g. "model 'x' is a Hub id that is not in the local cache") needs the Hub now:
    AdaError at once when one of ``offline_names`` is set or the Hub does not answer."""
    var = offline_var(offline_names)
    if var:
        raise AdaError(f"{what}, but {var} is set; {hint}")
    if not hub_reachable():
        raise AdaError(f"{what}, and this machine cannot reach the Hub; {hint} (or set HF_HUB_OFFLINE=1 to fail at once)")


def check_hub_model(repo_id: str) -> None:
    """A model given as a Hub id must be in the local cache or downloadable now; AdaError at once otherwise."""
    if not _cached(repo_id):
        require_hub(f"model {repo_id!r} is no local folder (there is none at {os.path.abspath(repo_id)}), and as a Hub id "
                    "it is not in the local cache",
                    "give a local model folder, or 'minilm' (the packaged all-MiniLM-L6-v2)",
                    ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
