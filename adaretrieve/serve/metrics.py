"""Counters and histograms rendered in the Prometheus text format (version 0.0.4), with no dependency.

Every metric is declared once with its help text (and buckets, for a histogram); ``inc`` and
``observe`` then take a label dict. One lock guards all of it: updates are a few dict operations,
far below the cost of the HTTP request that makes them.
"""

from __future__ import annotations

import math
import threading

# Seconds, from a fraction of a millisecond (a shortlist scan) to seconds (a queue under overload).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LAYER_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)  # encoder layers run for one query


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, esc)) + "}"


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Metrics:
    """A registry: ``counter``/``gauge``/``histogram`` declare, ``inc``/``set``/``observe`` update,
    ``render`` gives the text a Prometheus server scrapes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._kinds: dict[str, tuple[str, str, tuple]] = {}  # name -> (type, help, buckets)
        self._values: dict[str, dict[tuple, float | list]] = {}

    def _declare(self, name: str, kind: str, help: str, buckets: tuple = ()) -> None:
        self._kinds[name] = (kind, help, tuple(buckets))
        self._values.setdefault(name, {})

    def counter(self, name: str, help: str) -> None:
        self._declare(name, "counter", help)

    def gauge(self, name: str, help: str) -> None:
        self._declare(name, "gauge", help)

    def histogram(self, name: str, help: str, buckets: tuple = LATENCY_BUCKETS) -> None:
        self._declare(name, "histogram", help, buckets)

    def inc(self, name: str, labels: dict[str, str] | None = None, value: float = 1.0) -> None:
        key = tuple((labels or {}).items())
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, labels: dict[str, str] | None = None, clear: bool = False) -> None:
        """Set a gauge; ``clear`` drops its other label sets first (an info gauge that moves on)."""
        with self._lock:
            if clear:
                self._values[name].clear()
            self._values[name][tuple((labels or {}).items())] = float(value)

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None, count: int = 1) -> None:
        """Add ``count`` observations of ``value`` to a histogram."""
        buckets = self._kinds[name][2]
        key = tuple((labels or {}).items())
        with self._lock:
            series = self._values[name]
            h = series.get(key)
            if h is None:
                h = series[key] = [[0] * len(buckets), 0.0, 0]  # per-bucket counts (not cumulative), sum, count
            for i, b in enumerate(buckets):
                if value <= b:
                    h[0][i] += count
                    break
            h[1] += value * count
            h[2] += count

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A counter's or gauge's value, or a histogram's count (0 when never updated)."""
        with self._lock:
            v = self._values[name].get(tuple((labels or {}).items()), 0.0)
            return float(v[2] if isinstance(v, list) else v)

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            for name, (kind, help, buckets) in self._kinds.items():
                out.append(f"# HELP {name} {help}")
                out.append(f"# TYPE {name} {kind}")
                for key, v in sorted(self._values[name].items()):
                    labels = dict(key)
                    if kind != "histogram":
                        out.append(f"{name}{_labels(labels)} {_num(v)}")
                        continue
                    counts, total, n = v
                    cum = 0
                    for b, c in zip(buckets, counts):
                        cum += c
                        out.append(f"{name}_bucket{_labels({**labels, 'le': _num(b)})} {cum}")
                    out.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {n}")
                    out.append(f"{name}_sum{_labels(labels)} {_num(total)}")
                    out.append(f"{name}_count{_labels(labels)} {n}")
        return "\n".join(out) + "\n"
