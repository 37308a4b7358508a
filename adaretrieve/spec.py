"""What decides the vectors: one frozen value, recorded in the manifest and compared everywhere.

Two encoders make the same vectors only when every field here is equal: the weights (the backbone's
tensors and, for an adapted model, the adaptor's and any Dense head's, all in ``weights_sha256``),
how token states become a vector (pooling, normalisation, max length, lowercasing), the text put
before each query or passage, and how the arithmetic runs (backend: torch / onnx / onnx-int8,
autocast dtype). The build plan, ``IndexReader.check_encoder``, bench's index reuse, serve's
reload and the Ray actors all compare a ``VectorSpec`` with ``differs``, so no caller picks its own
subset of fields.

Queries and documents depend on different fields: a query encoder may deliberately run another
backend or dtype than the one that built the index (``--backend onnx-int8`` queries against an fp32
index), and the passage prefix never touches a query. ``QUERY_FIELDS`` and ``DOCUMENT_FIELDS``
name what each side must match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from adaretrieve.errors import AdaError

BACKENDS = ("torch", "onnx", "onnx-int8")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class VectorSpec:
    weights_sha256: str | None
    pooling: str
    normalize: bool
    max_length: int
    query_prefix: str = ""
    passage_prefix: str = ""
    lowercase: bool = False
    backend: str = "torch"
    dtype: str = "float32"

    def __post_init__(self):
        if self.pooling not in ("mean", "cls"):
            raise AdaError(f"vector spec: pooling {self.pooling!r} is not one of mean, cls")
        if self.backend not in BACKENDS:
            raise AdaError(f"vector spec: backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise AdaError(f"vector spec: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise AdaError(f"vector spec: max_length {self.max_length!r} is not a whole number of at least 1")
        for name in ("normalize", "lowercase"):  # a recorded "false" string must not read as true
            if not isinstance(getattr(self, name), bool):
                raise AdaError(f"vector spec: {name} {getattr(self, name)!r} is not true or false")
        for name in ("query_prefix", "passage_prefix"):
            if not isinstance(getattr(self, name), str):
                raise AdaError(f"vector spec: {name} {getattr(self, name)!r} is not a string")
        if self.weights_sha256 is not None and not isinstance(self.weights_sha256, str):
            raise AdaError(f"vector spec: weights_sha256 {self.weights_sha256!r} is not a string or null")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "vector spec") -> VectorSpec:
        if not isinstance(d, dict):
            raise AdaError(f"{where}: expected an object, got {d!r:.60}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise AdaError(f"{where}: unknown keys {', '.join(map(repr, unknown))}")
        missing = sorted(n for n in ("weights_sha256", "pooling", "normalize", "max_length") if n not in d)
        if missing:
            raise AdaError(f"{where}: lacks {', '.join(map(repr, missing))}")
        try:
            return cls(**d)
        except TypeError as e:
            raise AdaError(f"{where}: {e}") from None

    @classmethod
    def from_model(cls, model: dict, build: dict | None = None) -> VectorSpec:
        """The spec of an index or build plan written before specs were recorded: read from what
        its ``model`` entry has (prefixes and lowercasing were recorded only when set, so absent
        means none) and the backend its build recorded (torch when none; the autocast dtype was not
        recorded and is taken as float32)."""
        build = build or {}
        return cls(weights_sha256=model.get("weights_sha256"), pooling=model.get("pooling", "cls"),
                   normalize=bool(model.get("normalize", False)), max_length=int(model.get("max_length", 512)),
                   query_prefix=model.get("query_prefix") or "", passage_prefix=model.get("passage_prefix") or "",
                   lowercase=bool(model.get("lowercase", False)), backend=build.get("backend") or "torch",
                   dtype=build.get("dtype") or "float32")

    def differs(self, other: VectorSpec, only: tuple[str, ...] | None = None) -> list[str]:
        """Names of the fields (of ``only``, default all) whose values differ, in field order."""
        names = [f.name for f in fields(self)] if only is None else list(only)
        return [n for n in names if getattr(self, n) != getattr(other, n)]

    def explain(self, other: VectorSpec, only: tuple[str, ...] | None = None) -> str:
        """``"pooling mean -> cls; backend torch -> onnx-int8"``: what changes from ``self`` to ``other``."""
        def show(v):
            return f"{v[:12]}..." if isinstance(v, str) and len(v) == 64 else repr(v)

        return "; ".join(f"{n} {show(getattr(self, n))} -> {show(getattr(other, n))}" for n in self.differs(other, only))


# a query encoder must match these of the index; documents of one index must agree on these
QUERY_FIELDS = ("weights_sha256", "pooling", "normalize", "max_length", "query_prefix", "lowercase")
DOCUMENT_FIELDS = ("weights_sha256", "pooling", "normalize", "max_length", "passage_prefix", "lowercase", "backend", "dtype")


def check_same(have: VectorSpec, want: VectorSpec, only: tuple[str, ...], what: str, hint: str) -> None:
    """AdaError naming every field of ``only`` in which ``have`` differs from ``want``."""
    diff = want.differs(have, only)
    if diff:
        raise AdaError(f"{what} differs in {', '.join(diff)} ({want.explain(have, only)}); {hint}")
