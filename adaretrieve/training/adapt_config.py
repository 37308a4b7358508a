"""`adaretrieve adapt`'s settings, with no torch import: the CLI reads its help defaults from here."""

from __future__ import annotations

from dataclasses import dataclass

OBJECTIVES = ("distill", "ridge")


@dataclass
class AdaptConfig:
    """Every `adapt` setting; YAML keys and `--set` names are these field names."""

    model: str = "minilm"
    corpus: str | list[str] = ""  # BEIR folder or corpus file (or a list: their union): the documents fitted on
    queries: str | list[str] | None = None  # queries file or BEIR folder, or a list (texts only, unless qrels are given)
    # with a BEIR folder: only the queries named in qrels/<split>.tsv (ids only), or "all"; required when
    # the folder has qrels/test.tsv or dev.tsv, so held-out queries are never fitted on by default
    query_split: str | None = None
    qrels: str | None = None  # labelled pairs for the supervised term
    ladder: list[str] | None = None  # sizes the adaptor must serve (default: the model's ladder)
    out: str = ""
    objective: str = "distill"  # distill | ridge
    kind: str = "linear"  # linear | mlp
    hidden: int = 0  # mlp hidden width (default: the model's hidden size)
    features: str = "concat"  # concat (layers 0..L) | layer (layer L alone)
    ridge: float = 1e-2  # ridge strength, relative to the mean eigenvalue of the feature covariance
    steps: int = 200
    batch_size: int = 256  # texts used as queries per distillation step (half of them queries, when given)
    docs_per_step: int = 1024  # random documents per step, beside the full size's top ones
    teacher_top: int = 16  # the full size's top documents per query put in every step's candidates
    temperature: float = 0.05
    # top-list agreement (issue 25 item 0): per text-as-query, KL over the full size's own top ``agree_top``
    # documents only (the neighbourhood a cascade's exit reranks), weighted ``agree_weight``; 0: off
    agree_top: int = 0
    agree_weight: float = 1.0
    agree_temperature: float = 0.02
    lr: float = 1e-3
    qrels_weight: float = 1.0
    max_texts: int = 100_000  # documents encoded for fitting (a fixed random sample beyond this)
    batch_size_encode: int = 32
    seed: int = 0
    device: str | None = None
