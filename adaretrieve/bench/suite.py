"""A bench suite: YAML -> ``Suite`` -> the list of ``FunnelPlan`` it measures.

A suite is a YAML file (see ``benchmarks/*.yaml``): model, data, index, the grid of single-stage
sizes and two-stage entries, metrics, and pinned expectations with tolerances. Relative paths are
read from the suite file's folder. Every dense row is a plan made by ``resolve_plan``, the resolver
the CLI, HTTP, ``Retriever`` and Qdrant use, so a bench row and a ``search`` with the same options
run the same plan. A ``two_stage`` entry is ``{shortlist: [...], k: [...], rerank: [...]}`` with an
optional ``then: [{size, k}, ...]`` (a funnel: the same middle stages for every combination). An
``adaptive`` entry is one cascade with a stop rule calibrated on other queries, one row per target
(``bench.adaptive``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

from adaretrieve.bench.adaptive import AdaptiveEntry
from adaretrieve.errors import AdaError
from adaretrieve.search.plan import FunnelPlan, resolve_plan

# the bench's default depth: single stage asks the shortlist for this many, two-stage rows keep
# what their last stage keeps (their depth, by which their recall is named)
TOP = 1000

# a manifest with nothing in it: plans made before an index exists (to check a suite as it loads)
_NO_INDEX = SimpleNamespace(shortlist=[], shortlist_sizes=[], rerank_size=None)


def _listed(v) -> list:
    return v if isinstance(v, list) else [v]


@dataclass
class Suite:
    name: str
    model: str
    corpus: str
    queries: str
    qrels: str
    index: str
    shortlist: list[str]
    rerank: str | None
    single: list[str] = field(default_factory=list)
    two_stage: list[dict] = field(default_factory=list)
    # cascades with a calibrated stop rule (bench.adaptive): [{shortlist, k, then, rerank, fit_queries, targets, ...}]
    adaptive: list[dict] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["nDCG@10", "RR@10", "R@100", "R@1000"])
    max_length: int | None = None
    batch_size: int = 32
    latency_queries: int = 100
    expected: dict = field(default_factory=dict)
    description: str = ""
    bm25: bool = False  # add BM25 (pyserini, k1 0.9, b 0.4) and the hybrid rows below
    bm25_index: str | None = None  # Lucene index folder (default: <index>-bm25)
    hybrid: list[dict] = field(default_factory=list)  # [{"k": 200, "rerank": "6x384"}]: BM25 top k, dense rerank
    rrf: list[str] = field(default_factory=list)  # dense single-stage sizes fused with BM25 by RRF
    refine: list[float] = field(default_factory=list)  # FAISS IndexRefineFlat(SQ8) at the rerank size, these k factors
    backend: str = "torch"  # encoder backend for the corpus and (unless query_backend) the queries
    factory: str = "Flat"  # FAISS factory of the stored shortlist indexes when the suite builds its index
    nprobe: list[int] = field(default_factory=list)  # every configuration over an IVF shortlist, once per value
    ef_search: list[int] = field(default_factory=list)  # every configuration over an HNSW shortlist, once per value
    # results per query asked of every dense row (a two-stage row returns at most its k); None: the
    # resolver's default (what the plan ranks: single stage 200, else the last stage's k)
    top: int | None = TOP
    # the vector spec of an index the suite builds (None: the model folder's own); an existing index
    # is compared with it field by field (spec.DOCUMENT_FIELDS) and queried with its own spec
    pooling: str | None = None
    normalize: bool | None = None
    query_prefix: str | None = None
    passage_prefix: str | None = None
    lowercase: bool | None = None
    dtype: str | None = None  # autocast dtype of the corpus encoder (None: float32 on CPU)
    query_backend: str | None = None  # the queries' backend, when it differs from the corpus's (tune --backend)

    @classmethod
    def load(cls, path: str | Path) -> Suite:
        p = Path(path)
        if not p.exists():
            raise AdaError(f"bench config {p} does not exist")
        from adaretrieve.training.config import read_yaml, resolve_config_paths

        data = read_yaml(p, "bench")
        if isinstance(data, dict):  # paths in the suite are read from the suite file's folder
            data = resolve_config_paths(data, p.parent, {"model": False, "corpus": True, "queries": True, "qrels": True,
                                                         "index": True, "bm25_index": True})
        if isinstance(data, dict) and isinstance(data.get("adaptive"), list):  # their fit queries, from there too
            data["adaptive"] = [resolve_config_paths(e, p.parent, {"fit_queries": True}) if isinstance(e, dict) else e
                                for e in data["adaptive"]]
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise AdaError(f"{p}: unknown keys {sorted(unknown)}; known keys are {sorted(known)}")
        try:
            suite = cls(**data)
        except TypeError as e:
            raise AdaError(f"{p}: {e}") from None
        try:
            suite.check()
        except AdaError as e:
            raise AdaError(f"{p}: {e}") from None
        return suite

    def check(self) -> None:
        """AdaError naming the first bad value: every size and k parsed now, before an index is built."""
        self.plans()
        from adaretrieve.index.codes import parse_shortlist

        parse_shortlist(self.shortlist, default=self.factory)  # SIZE or SIZE:KIND (6x384:sign), as `index --shortlist`
        if self.batch_size < 1 or self.latency_queries < 1:
            raise AdaError(f"batch_size ({self.batch_size}) and latency_queries ({self.latency_queries}) must be at least 1")
        self.check_search_params()
        for i, entry in enumerate(self.adaptive_entries()):
            try:
                entry.plan(_NO_INDEX)
            except AdaError as e:
                raise AdaError(f"adaptive[{i}]: {e}") from None
        backend = self.query_backend or self.backend
        if self.adaptive and backend != "torch":
            raise AdaError(f"adaptive rows resume their query encoding between stages, which runs on the torch backend, "
                           f"not {backend!r}")

    def adaptive_entries(self) -> list[AdaptiveEntry]:
        """The ``adaptive`` entries checked (``AdaptiveEntry.parse``); AdaError naming the entry and the bad value."""
        if not isinstance(self.adaptive, list):
            raise AdaError(f"adaptive {self.adaptive!r:.60} should be a list of entries")
        out = []
        for i, e in enumerate(self.adaptive):
            try:
                out.append(AdaptiveEntry.parse(e))
            except AdaError as err:
                raise AdaError(f"adaptive[{i}]: {err}") from None
        return out

    def check_search_params(self) -> None:
        """``nprobe`` and ``ef_search`` are lists of whole numbers of at least 1 (a single number is
        taken as a list of one)."""
        for name in ("nprobe", "ef_search"):
            v = getattr(self, name)
            v = [v] if isinstance(v, int) and not isinstance(v, bool) else v
            if not isinstance(v, list) or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in v):
                raise AdaError(f"{name} {v!r} should be a list of whole numbers of at least 1")
            setattr(self, name, v)

    def grid(self) -> list[dict]:
        """Every dense configuration as ``resolve_plan`` arguments: single stage first, then the
        two-stage grid (shortlist x k x rerank, each with the entry's ``then``)."""
        out = [dict(shortlist=s, rerank=None, top=self.top) for s in self.single]
        for entry in self.two_stage:
            if not isinstance(entry, dict) or not {"shortlist", "k", "rerank"} <= set(entry) \
                    or not set(entry) <= {"shortlist", "k", "rerank", "then"}:
                raise AdaError(f"two_stage entry {entry!r:.80} should be a mapping with shortlist, k and rerank "
                               "(and optionally then: [{size, k}, ...])")
            then = entry.get("then") or []
            if not isinstance(then, list):
                raise AdaError(f"two_stage then {then!r:.60} should be a list of {{size, k}}")
            for s in _listed(entry["shortlist"]):
                for k in _listed(entry["k"]):
                    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                        raise AdaError(f"two_stage k {k!r} is not a whole number of at least 1")
                    for r in _listed(entry["rerank"]):
                        out.append(dict(shortlist=s, k=k, then=then, rerank=r, top=self.top))
        return out

    def plans(self, manifest=None) -> list[FunnelPlan]:
        """The plans of ``grid()``, defaults (an IVF shortlist's nprobe) from ``manifest`` when given."""
        return [resolve_plan(manifest or _NO_INDEX, **g) for g in self.grid()]


def plan_of(row: dict) -> FunnelPlan:
    """The plan a dense result row (as results.json stores it) was measured with."""
    return FunnelPlan(row["shortlist"], row.get("k") or TOP, tuple((s, k) for s, k in row.get("then") or ()),
                      row.get("rerank"), top=row.get("top") or TOP, nprobe=row.get("nprobe"), ef_search=row.get("ef_search"),
                      deep_k=row.get("deep_k"))


def search_args(plan: FunnelPlan) -> list[str]:
    """`adaretrieve search` options that resolve to ``plan`` (resolve_plan): shortlist, k, each
    ``--then SIZE --k K`` stage, rerank (or none), top, and the shortlist's nprobe / ef_search
    when set."""
    args = ["--shortlist", str(plan.shortlist)]
    if not plan.single:
        args += ["--k", str(plan.k)]
        for s, k in plan.then:
            args += ["--then", str(s), "--k", str(k)]
    args += ["--rerank", str(plan.rerank) if plan.rerank else "none", "--top", str(plan.top)]
    if plan.nprobe is not None:
        args += ["--nprobe", str(plan.nprobe)]
    if plan.ef_search is not None:
        args += ["--ef-search", str(plan.ef_search)]
    return args


def config_name(c: FunnelPlan | dict) -> str:
    """The name of a plan, or of a result row (as loaded from results.json)."""
    if isinstance(c, FunnelPlan):
        return c.name
    if c.get("config"):
        return c["config"]
    return plan_of(c).name


def with_search_params(plans: list[FunnelPlan], reader, nprobe: list[int], ef_search: list[int]) -> list[FunnelPlan]:
    """Each plan whose shortlist index is IVF once per ``nprobe``, HNSW once per ``ef_search``; the
    others as they are. AdaError when a setting is given and no shortlist of the suite takes it (it
    would otherwise be silently ignored)."""
    from adaretrieve.search.twostage import shortlist_kind

    if not nprobe and not ef_search:
        return plans
    kinds = {p.shortlist: shortlist_kind(reader.shortlist_index(p.shortlist)) for p in plans}
    for name, values, tag, hint in (("nprobe", nprobe, "IVF", "IVF..."), ("ef_search", ef_search, "HNSW", "HNSW32")):
        if values and not any(tag in k for k in kinds.values()):
            have = ", ".join(f"{s} {k}" for s, k in kinds.items())
            raise AdaError(f"{name} applies to {tag} shortlists; the suite's are {have} (build one with --factory {hint})")
    out = []
    for p in plans:
        kind = kinds[p.shortlist]
        if "IVF" in kind and nprobe:
            out += [replace(p, nprobe=v) for v in nprobe]
        elif "HNSW" in kind and ef_search:
            out += [replace(p, ef_search=v) for v in ef_search]
        else:
            out.append(p)
    return out
