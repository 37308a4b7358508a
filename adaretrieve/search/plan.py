"""One search configuration, and the one place its defaults are filled in.

A ``FunnelPlan`` is a value: FAISS top ``k`` at ``shortlist`` (searched with ``nprobe`` /
``ef_search`` when the shortlist is IVF / HNSW), then each ``(size, k_i)`` of ``then`` rescoring
exactly and keeping ``k_i``, then ``rerank`` (if any) rescoring what is left; ``top`` results per
query are returned. ``deep_k`` (with a rerank): the last stage also takes the top ``deep_k`` of the
index's shortlist over the rerank size (e.g. its sign bits or ``pca128`` code) and reranks the union,
so what a small size missed can still be found by the full size's own code. It is frozen and hashable (requests with equal plans are searched as one batch),
needs no reader, and knows its own ``depth`` (results per query), so a run's measures can be named
for what was returned.

``resolve_plan(manifest, ...)`` turns what a user gave (any of it omitted) into a plan; the CLI,
HTTP, ``Retriever``, bench, tune and the Qdrant searcher all call it, so they agree by construction:

- ``shortlist`` omitted: the index's first shortlist size;
- ``rerank`` omitted (``DEFAULT``): the index's rerank size; ``None`` or ``"none"``: no rerank;
- ``k`` omitted: 200; single stage asks the shortlist for ``top`` results, so there ``k`` is ``top``;
- ``top`` omitted: everything the plan ranks (the last stage's ``k``; single stage: ``k``);
- ``nprobe`` omitted: the default recorded for the shortlist at build time, or for indexes from
  before that, one derived from the factory's list count (``default_nprobe``); FAISS's own default
  of 1 probes 1/4096 of an ``IVF4096`` and is never used silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from adaretrieve.errors import AdaError
from adaretrieve.index.format import default_nprobe, ivf_lists
from adaretrieve.sizes import Size, parse_size

DEFAULT_K = 200


class _Default:
    """The marker for "the index's default" (``rerank=DEFAULT``), distinct from ``None`` ("no rerank")."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()


def is_none(value) -> bool:
    """``None`` or the word ``none`` (any case, spaces around): "no such stage"."""
    return value is None or (isinstance(value, str) and value.strip().lower() == "none")


def check_funnel(k: int, then_ks: Sequence[int]) -> None:
    """AdaError unless every k is at least 1 and each stage keeps no more than the one before."""
    if k < 1 or any(kk < 1 for kk in then_ks):
        raise AdaError("every k must be at least 1")
    for k_next, k_prev in zip(then_ks, [k, *then_ks]):
        if k_next > k_prev:
            raise AdaError(f"a funnel narrows: k {k_next} after k {k_prev}")


def _whole(name: str, v, allow_none: bool = True) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int,)) and not (isinstance(v, float) and v.is_integer()):
        raise AdaError(f"{name} {v!r} is not a whole number")
    v = int(v)
    if v < 1:
        raise AdaError(f"{name} {v} must be at least 1")
    return v


@dataclass(frozen=True)
class FunnelPlan:
    """A checked search configuration (see the module docstring). Sizes may be given as strings."""

    shortlist: Size
    k: int = DEFAULT_K
    then: tuple[tuple[Size, int], ...] = ()
    rerank: Size | None = None
    top: int = DEFAULT_K
    nprobe: int | None = None
    ef_search: int | None = None
    deep_k: int | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "shortlist", parse_size(self.shortlist))
        set_(self, "k", _whole("k", self.k, allow_none=False))
        then = tuple((parse_size(s), _whole("k", kk, allow_none=False)) for s, kk in self.then)
        set_(self, "then", then)
        set_(self, "rerank", None if is_none(self.rerank) else parse_size(self.rerank))
        set_(self, "top", _whole("top", self.top, allow_none=False))
        set_(self, "nprobe", _whole("nprobe", self.nprobe))
        set_(self, "ef_search", _whole("ef_search", self.ef_search))
        set_(self, "deep_k", _whole("deep_k", self.deep_k))
        if self.deep_k is not None and self.rerank is None:
            raise AdaError("deep_k adds candidates from the rerank size's shortlist: it needs a rerank size")
        check_funnel(self.k, [kk for _, kk in self.then])
        if self.single:  # a single stage asks the shortlist for top: k is that same number
            set_(self, "k", self.top)

    # -- what a plan implies --------------------------------------------------------------------

    @property
    def single(self) -> bool:
        return not self.then and self.rerank is None

    @property
    def stages(self) -> int:
        return 1 + len(self.then) + (1 if self.rerank else 0)

    def sizes(self) -> list[Size]:
        """Every size whose query vectors the plan needs, shortlist first, without repeats."""
        return list(dict.fromkeys([self.shortlist, *(s for s, _ in self.then), *([self.rerank] if self.rerank else [])]))

    @property
    def layers(self) -> int:
        """How deep the query encoder runs for this plan (its deepest size's layer)."""
        return max(s.layer for s in self.sizes())

    @property
    def depth(self) -> int:
        """Results per query at most (fewer when the corpus is smaller): ``top``, capped by the
        last stage's k. A recall measure cut off deeper than this is named at this depth."""
        if self.single:
            return self.top
        return min(self.top, self.then[-1][1] if self.then else self.k)

    @property
    def name(self) -> str:
        """``single 2x64``, ``2x64 k=200 -> 6x384``, ``2x32 k=1000 -> 4x128 k=100 -> 6x384``, with
        ``nprobe=`` / ``ef_search=`` after the shortlist when set: bench rows are named by it."""
        params = "".join(f" {n}={v}" for n, v in (("nprobe", self.nprobe), ("ef_search", self.ef_search)) if v is not None)
        if self.single:
            return f"single {self.shortlist}{params}"
        steps = [f"{self.shortlist} k={self.k}{params}", *(f"{s} k={kk}" for s, kk in self.then)]
        deep = f" (+{self.rerank} shortlist k={self.deep_k})" if self.deep_k else ""
        return " -> ".join(steps + ([f"{self.rerank}{deep}"] if self.rerank else []))

    def describe(self) -> dict:
        """JSON form, every default filled in (what the HTTP answer's ``config`` says)."""
        return {"shortlist": str(self.shortlist), "k": self.k, "then": [{"size": str(s), "k": k} for s, k in self.then],
                "rerank": str(self.rerank) if self.rerank else None, "top": self.top, "nprobe": self.nprobe,
                "ef_search": self.ef_search, "deep_k": self.deep_k, "depth": self.depth}

    def with_top(self, top: int) -> FunnelPlan:
        return replace(self, top=top)


# -- defaults from the index ---------------------------------------------------------------------

def stored_entry(manifest, size: Size) -> dict | None:
    return next((e for e in manifest.shortlist if parse_size(e["size"]) == size), None)


def shortlist_nprobe_default(manifest, size: Size) -> int | None:
    """The nprobe a search over ``size`` uses by default: recorded at build time, else derived from
    the factory when the stored shortlist of that size is IVF; None for any other shortlist (flat,
    HNSW, a size derived by truncation, which is searched by a flat index)."""
    e = stored_entry(manifest, size)
    if e is None:
        return None
    if e.get("nprobe") is not None:  # recorded at build time
        return int(e["nprobe"])
    n = ivf_lists(e.get("factory"))
    return default_nprobe(n) if n else None


def resolve_plan(manifest, shortlist: str | Size | None = None, k: int | None = None,
                 then: Sequence[tuple[str | Size, int]] | Sequence[dict] = (), rerank=DEFAULT,
                 top: int | None = None, nprobe: int | None = None, ef_search: int | None = None,
                 engine: str = "faiss", deep_k: int | None = None) -> FunnelPlan:
    """The plan for what a caller gave, defaults filled in from ``manifest`` (see the module
    docstring). ``then``: ``[(size, k), ...]`` or ``[{"size": ..., "k": ...}, ...]``. ``engine``:
    ``"qdrant"`` for a Qdrant collection, which has no nprobe (none is filled in; one given is
    refused). AdaError naming the bad value otherwise; sizes are checked against the encoder and
    the store by the searcher that runs the plan."""
    stages = []
    for st in then:
        if isinstance(st, dict):
            if set(st) != {"size", "k"}:
                raise AdaError(f"then stage {st!r:.60} should have exactly 'size' and 'k'")
            st = (st["size"], st["k"])
        s, kk = st
        stages.append((parse_size(s), kk))
    short = parse_size(shortlist) if shortlist is not None else manifest.shortlist_sizes[0]  # "" is no size (h-size-empty)
    rr = manifest.rerank_size if rerank is DEFAULT else (None if is_none(rerank) else parse_size(rerank))
    single = not stages and rr is None
    if k is None:
        k = (top if top is not None else DEFAULT_K) if single else DEFAULT_K
    if top is None:
        top = k if single else (stages[-1][1] if stages else k)
    if engine == "qdrant":
        if nprobe is not None:
            raise AdaError("nprobe applies to FAISS IVF shortlists, not to a Qdrant collection (use ef_search)")
    elif nprobe is None:
        nprobe = shortlist_nprobe_default(manifest, short)
    if deep_k is not None and engine == "qdrant":
        raise AdaError("deep_k searches a folder index's shortlist over the rerank size, not a Qdrant collection")
    return FunnelPlan(short, k, tuple(stages), rr, top, nprobe, ef_search, deep_k)


def resolve_described(manifest, described: dict, top: int | None = None, nprobe: int | None = None,
                      ef_search: int | None = None) -> FunnelPlan:
    """The plan a ``FunnelPlan.describe()`` dict names (a stop rule's, ``search.calibrate``) on this
    index; ``top``, ``nprobe``, ``ef_search`` given replace its own. What `search --adaptive` and
    `serve --adaptive` both run."""
    d = described
    return resolve_plan(manifest, d["shortlist"], d["k"], [(s["size"], s["k"]) for s in d["then"]], d["rerank"] or "none",
                        top or d["top"], nprobe if nprobe is not None else d.get("nprobe"),
                        ef_search if ef_search is not None else d.get("ef_search"), deep_k=d.get("deep_k"))


def check_plan_sizes(encoder, plan: FunnelPlan) -> None:
    """AdaError naming the stage whose size the query ``encoder`` cannot make (``Encoder.check_sizes``)."""
    encoder.check_sizes([plan.shortlist], "shortlist size")
    encoder.check_sizes([s for s, _ in plan.then], "then size")
    if plan.rerank:
        encoder.check_sizes([plan.rerank], "rerank size")
