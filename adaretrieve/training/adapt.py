"""`adaretrieve adapt`: fit a 2D Matryoshka adaptor on a frozen encoder, without labels by default.

One encoding pass over the texts (corpus documents, plus queries when given) records the pooled
state of every layer up to the deepest ladder layer, and the full-size vector. Then, per ladder
layer L below the last:

1. **closed form** (``objective: ridge``): ridge regression from the features of layer L (the
   pooled states of layers 0..L, concatenated; or layer L alone) onto the normalised full-size
   vectors in their principal axes, ordered by variance (uncentred, so that the targets rank as
   the full size does). Regression solves each output column on
   its own, so the map for D outputs is the first D columns of the map for all of them: one map per
   layer serves every D and sizes stay prefixes.
2. **ranking distillation** (``objective: distill``, the default): starting from the closed form,
   the map is trained so that, at every prefix D, the small size's score distribution over
   documents matches the full size's (listwise KL over the full size's top documents plus random
   ones, for queries and documents as queries). This is what two-stage search needs: the small
   size should rank first what the full size ranks first. With ``agree_top`` N, a second KL term
   per text-as-query over the full size's own top N only (at ``agree_temperature``) pulls the order
   inside that neighbourhood, which an adaptive cascade's exit answers from, toward the full size's.
3. with ``qrels`` (``objective: distill+qrels``), an InfoNCE term on the labelled (query, positive)
   pairs is added at every prefix.

The last layer keeps no map: the full size is the backbone's own, to the bit.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adaretrieve._version import __version__
from adaretrieve.data.readers import doc_text, iter_corpus, read_qrels, read_queries, resolve_corpus
from adaretrieve.errors import AdaError
from adaretrieve.modeling.adaptor import KINDS, Adaptor
from adaretrieve.modeling.encoder import Encoder
from adaretrieve.modeling.st_format import write_encoder_st_files
from adaretrieve.sizes import Size
from adaretrieve.training.adapt_config import OBJECTIVES, AdaptConfig
from adaretrieve.training.losses import default_ladder

log = logging.getLogger(__name__)


def _as_list(value) -> list[str]:
    """A setting that takes one path or several (``corpus``, ``queries``), as a list."""
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _sample_corpora(paths: list[Path], max_texts: int, seed: int) -> tuple[list[str], list[str]]:
    """Every corpus's documents in the order given, each cut to its share of ``max_texts`` (by size; one
    corpus: all of ``max_texts``) by the same fixed random sample (``_sample``)."""
    read = [_read_corpus(p) for p in paths]
    total = sum(len(ids) for ids, _ in read)
    ids, texts = [], []
    for i, t in read:
        i, t = _sample(i, t, max_texts if len(read) == 1 else max(1, round(max_texts * len(i) / total)), seed)
        ids += i
        texts += t
    return ids, texts


def _read_fit_queries(source: Path, split: str | None) -> tuple[list[str], list[str]]:
    """The query texts fitted on from one ``--queries`` source: a BEIR folder's queries named in
    ``qrels/<split>.tsv`` (all with ``split`` "all"; refused without a split when the folder holds
    evaluation qrels), or a queries file whole."""
    held_out = _held_out_qrels(source)
    if split is None and held_out:
        raise AdaError(f"--queries {source} is a BEIR folder with {held_out}: fitting on every query would "
                       "fit on its held-out queries too; pass --query-split train (or --query-split all to fit "
                       "on every query anyway)")
    qs = read_queries(source)
    if split and split != "all" and source.is_dir():
        sel = read_qrels(source / "qrels" / f"{split}.tsv")
        qs = {q: t for q, t in qs.items() if q in sel}
        if not qs:
            raise AdaError(f"no query of {source} is named in qrels/{split}.tsv")
    return list(qs), list(qs.values())


def _read_corpus(path: Path) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for d in iter_corpus(path):
        ids.append(d.docid)
        texts.append(doc_text(d.title, d.text))
    return ids, texts


def _sample(ids: list[str], texts: list[str], cap: int, seed: int) -> tuple[list[str], list[str]]:
    """At most ``cap`` of the documents: a fixed random sample (``seed``), in file order."""
    if len(ids) > cap:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), cap, replace=False))
        ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]
    return ids, texts


HELD_OUT_SPLITS = ("test", "dev")


def _held_out_qrels(queries: Path) -> str | None:
    """``qrels/test.tsv`` (or ``dev``) when ``queries`` is a BEIR folder with an evaluation split, else None."""
    if queries.is_dir():
        for split in HELD_OUT_SPLITS:
            if (queries / "qrels" / f"{split}.tsv").is_file():
                return f"qrels/{split}.tsv"
    return None


def _ladder_layers(enc: Encoder, ladder: list[Size]) -> list[int]:
    return sorted({s.layer for s in ladder if s.layer < enc.n_layers})


def _feature_layers(L: int, features: str) -> list[int]:
    return list(range(L + 1)) if features == "concat" else [L]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def fit_ridge(X: torch.Tensor, Z: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W [f, k], b [k] minimising |X W + b - Z|^2 + lam |W|^2 (the intercept b not penalised),
    lam = ridge * mean eigenvalue of the feature covariance: W from the centred features,
    b = mean(Z) - mean(X) W, so the predictions keep Z's mean. float64 for the solve."""
    X, Z = X.double(), Z.double()
    mu = X.mean(0)
    Xc = X - mu
    A = Xc.T @ Xc
    A += ridge * torch.trace(A) / A.shape[0] * torch.eye(A.shape[0], dtype=A.dtype)
    W = torch.linalg.solve(A, Xc.T @ Z)
    return W.float(), (Z.mean(0) - mu @ W).float()


def principal_targets(full: torch.Tensor) -> torch.Tensor:
    """``full @ V`` [n, H]: the normalised full-size vectors [n, H] in their principal axes V (from
    the SVD of the centred vectors), by falling variance.

    The coordinates are not centred: V is orthogonal, so at full width ``Z Z^T = F F^T`` and the
    targets rank exactly as the full size. Centred targets would score ``(q - mu).(d - mu)``, which
    adds the document-dependent ``-mu.d`` (sentence embeddings share a mean of norm ~0.3); the ridge
    intercept absorbs the mean instead."""
    F64 = full.double()
    _, _, Vh = torch.linalg.svd(F64 - F64.mean(0), full_matrices=False)
    return (F64 @ Vh.T).float()


def prefix_dims(width: int, ladder_dims: list[int]) -> list[int]:
    """The prefixes a map is trained at: the ladder's dims and the powers of two up to ``width``."""
    dims = {d for d in ladder_dims if d <= width} | {1 << i for i in range(3, 16) if 1 << i <= width} | {width}
    return sorted(dims)


def adapt(cfg: AdaptConfig, progress: bool = True) -> dict:
    """Fit an adaptor and write ``cfg.out`` (the backbone's files + adaptor.json/.safetensors)."""
    if cfg.objective not in OBJECTIVES:
        raise AdaError(f"objective {cfg.objective!r} is not one of {', '.join(OBJECTIVES)}")
    if cfg.kind not in KINDS:
        raise AdaError(f"kind {cfg.kind!r} is not one of {', '.join(KINDS)}")
    if cfg.features not in ("concat", "layer"):
        raise AdaError(f"features {cfg.features!r} is not one of concat, layer")
    for key in ("steps", "batch_size", "docs_per_step", "max_texts", "batch_size_encode", "agree_top"):
        low = 0 if key in ("steps", "agree_top") else 1
        if int(getattr(cfg, key)) < low:
            raise AdaError(f"{key} must be at least {low}, got {getattr(cfg, key)}")
    if not cfg.agree_temperature > 0 or cfg.agree_weight < 0:
        raise AdaError(f"agree_temperature ({cfg.agree_temperature}) must be > 0 and agree_weight ({cfg.agree_weight}) >= 0")
    if not cfg.lr > 0 or not cfg.temperature > 0 or cfg.ridge < 0:
        raise AdaError(f"lr ({cfg.lr}) and temperature ({cfg.temperature}) must be > 0 and ridge ({cfg.ridge}) >= 0")
    if not cfg.corpus:
        raise AdaError("adapt needs --corpus (the documents to fit on)")
    if not cfg.out:
        raise AdaError("adapt needs --out (the model folder to write)")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise AdaError(f"{out} exists and is not empty; choose another --out")
    enc = Encoder(cfg.model, device=cfg.device)
    ladder = enc.check_sizes(cfg.ladder, "ladder size") if cfg.ladder else default_ladder(enc.n_layers, enc.hidden_size)
    layers = _ladder_layers(enc, ladder)
    if not layers:
        raise AdaError(f"ladder {', '.join(map(str, ladder))} has no size below the last layer ({enc.n_layers}): nothing to adapt")
    corpora = _as_list(cfg.corpus)
    corpus_paths = [resolve_corpus(c) for c in corpora]
    query_sources = _as_list(cfg.queries)
    if cfg.qrels and len(corpora) > 1:
        raise AdaError(f"--qrels names documents of one corpus; fit with labels on one --corpus (got {len(corpora)})")

    # -- texts (all checks before the encoding pass) -----------------------------------------
    doc_ids, doc_texts = _sample_corpora(corpus_paths, cfg.max_texts, cfg.seed)
    q_ids: list[str] = []
    q_texts: list[str] = []
    for source in query_sources:
        ids, texts = _read_fit_queries(Path(source), cfg.query_split)
        q_ids += ids
        q_texts += texts
    pairs: list[tuple[int, int]] = []
    if cfg.qrels:
        qrels = read_qrels(cfg.qrels)
        if not q_ids:
            raise AdaError("--qrels needs --queries (the texts of the judged queries)")
        qi = {q: i for i, q in enumerate(q_ids)}
        di = {d: i for i, d in enumerate(doc_ids)}
        unknown_q = sorted(q for q in qrels if q not in qi)
        unknown_d = sorted({d for docs in qrels.values() for d in docs if d not in di})
        if unknown_q or unknown_d:
            what = []
            if unknown_q:
                what.append(f"{len(unknown_q)} queries not in {cfg.queries} (e.g. {unknown_q[0]!r})")
            if unknown_d:
                what.append(f"{len(unknown_d)} documents not in the fitted corpus (e.g. {unknown_d[0]!r})")
            raise AdaError(f"{cfg.qrels} names {' and '.join(what)}")
        pairs = [(qi[q], di[d]) for q, docs in qrels.items() for d, g in docs.items() if g > 0]
        if not pairs:
            raise AdaError(f"{cfg.qrels} has no positive (grade > 0) pair")
    if len(doc_ids) + len(q_ids) < enc.hidden_size:
        raise AdaError(f"adapt needs at least {enc.hidden_size} texts (one per full-size dim, for its principal "
                       f"coordinates); got {len(doc_ids)} documents and {len(q_ids)} queries")

    # -- a fit kept from a run killed while writing its model (same settings and texts): reuse it ---
    keep = _fitted_dir(out)
    key = _fit_key(cfg, enc, doc_texts, q_texts, pairs)
    adaptor = _load_fitted(keep, key)
    resumed = adaptor is not None
    texts = enc.passages(doc_texts) + enc.queries(q_texts)  # as index and search will see them
    n_docs = len(doc_ids)
    if adaptor is None:
        # -- one encoding pass -----------------------------------------------------------------
        raw_layers = sorted({fl for L in layers for fl in _feature_layers(L, cfg.features)} | {enc.n_layers})
        t0 = time.perf_counter()
        # max length: the model's own (documents); queries are short and pad to their own length
        vecs = enc.encode(texts, [], batch_size=cfg.batch_size_encode, progress=progress, raw_layers=raw_layers)
        encode_s = time.perf_counter() - t0
        states = {L: torch.from_numpy(vecs[("raw", L)]) for L in raw_layers}
        t1 = time.perf_counter()
        adaptor, fit_log = fit_adaptor(states, n_docs, pairs, ladder, layers, enc.hidden_size, enc.n_layers, enc.normalize,
                                       cfg, progress)
        fit_s = time.perf_counter() - t1
        adaptor.meta = {
            "features": cfg.features, "pooling": enc.pooling, "backbone_sha256": enc.backbone_hash(),
            "objective": cfg.objective + ("+qrels" if pairs and cfg.objective == "distill" else ""),
            "output_order": "the normalised full-size vectors in their principal axes (uncentred), by falling "
                            "variance; every prefix D is the size LxD",
            "ladder": [str(s) for s in ladder],
            "fitted_on": {"corpus": str(corpus_paths[0]) if len(corpus_paths) == 1 else [str(c) for c in corpus_paths],
                          "documents": n_docs,
                          "queries": query_sources[0] if len(query_sources) == 1 else (query_sources or None),
                          "query_split": cfg.query_split, "n_queries": len(q_ids), "qrels": cfg.qrels,
                          "labelled_pairs": len(pairs)},
            "config": asdict(cfg), "encode_seconds": round(encode_s, 1), "fit_seconds": round(fit_s, 1),
            "fit_log": fit_log, "adaretrieve": __version__, "base_model": enc.name,
        }
        _keep_fitted(keep, key, adaptor)
    encode_s, fit_s = adaptor.meta.get("encode_seconds") or 0.0, adaptor.meta.get("fit_seconds") or 0.0
    _write_model(enc, adaptor, out)
    shutil.rmtree(keep, ignore_errors=True)  # the model is in place: the kept fit has served
    summary = {"out": str(out), "layers": layers, "documents": n_docs, "queries": len(q_ids), "labelled_pairs": len(pairs),
               "encode_seconds": round(encode_s, 1), "fit_seconds": round(fit_s, 1),
               "texts_per_second": round(len(texts) / max(encode_s, 1e-9), 1), "objective": adaptor.meta["objective"],
               "resumed": resumed}
    return summary


def _fitted_dir(out: Path) -> Path:
    """Where a fitted adaptor waits until its model folder is written (``.<out>.fitted`` beside it)."""
    return out.with_name(f".{out.name}.fitted")


def _fit_key(cfg: AdaptConfig, enc: Encoder, doc_texts: list[str], q_texts: list[str], pairs) -> str:
    """What a fit depends on: every setting but ``out``/``device``, the backbone, the texts, the pairs."""
    import hashlib

    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "device")}
    h.update(json.dumps([settings, enc.backbone_hash(), enc.spec().to_dict(), sorted(pairs)], sort_keys=True,
                        default=str).encode())
    for t in (*doc_texts, "\x00queries\x00", *q_texts):
        h.update(t.encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()


def _keep_fitted(keep: Path, key: str, adaptor: Adaptor) -> None:
    """Save the fitted adaptor beside --out (written whole, then renamed) until the model is written."""
    tmp = keep.with_name(keep.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    adaptor.save(tmp)
    (tmp / "fit-key.json").write_text(json.dumps({"key": key}) + "\n")
    shutil.rmtree(keep, ignore_errors=True)
    tmp.rename(keep)


def _load_fitted(keep: Path, key: str) -> Adaptor | None:
    """The adaptor kept by an interrupted run of the same fit, else None (one of another fit is removed)."""
    shutil.rmtree(keep.with_name(keep.name + ".tmp"), ignore_errors=True)
    try:
        same = json.loads((keep / "fit-key.json").read_text()).get("key") == key
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(keep, ignore_errors=True)
        return None
    log.info("reusing the adaptor fitted by an interrupted run: %s", keep)
    return Adaptor.load(keep)


def fit_adaptor(states: dict[int, torch.Tensor], n_docs: int, pairs: list[tuple[int, int]], ladder: list[Size],
                layers: list[int], hidden_size: int, n_layers: int, normalize: bool, cfg: AdaptConfig,
                progress: bool = False) -> tuple[Adaptor, dict]:
    """Fit the maps of ``layers`` from pooled states ``{L: [n_texts, H]}`` (documents first, then
    queries; ``n_layers`` is the full size's layer). Returns the adaptor and a per-layer log."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    full = states[n_layers]
    full = _normalise(full) if normalize else full
    Z = principal_targets(full)
    width = hidden_size
    ladder_dims = sorted({s.dim for s in ladder})
    hidden = cfg.hidden or hidden_size
    feature_layers = {L: _feature_layers(L, cfg.features) for L in layers}
    adaptor = Adaptor(hidden_size, {L: width for L in layers}, feature_layers, kind=cfg.kind, hidden=hidden)
    fit_log = {}
    for L in layers:
        X = torch.cat([states[fl] for fl in feature_layers[L]], dim=1)
        W, b = fit_ridge(X, Z, cfg.ridge)
        m = adaptor.maps[str(L)]
        with torch.no_grad():
            m.weight.copy_(W)
            m.bias.copy_(b)
            if cfg.kind == "mlp":  # the residual starts at zero: the closed form is the starting point
                m.w1.copy_(torch.randn(X.shape[1], hidden) / (X.shape[1] ** 0.5 * float(X.std())))
                m.b1.zero_()
                m.w2.zero_()
        if cfg.objective == "distill" and cfg.steps > 0:
            fit_log[str(L)] = _distill(m, X, full, n_docs, pairs, cfg, prefix_dims(width, ladder_dims), rng,
                                       progress, f"layer {L}", normalize)
    return adaptor, fit_log


def _distill(m, X: torch.Tensor, full: torch.Tensor, n_docs: int, pairs: list[tuple[int, int]], cfg: AdaptConfig,
             dims: list[int], rng: np.random.Generator, progress: bool, desc: str, normalize: bool) -> dict:
    """Train one layer's map so that every prefix ranks documents as the full size does.

    X [n_texts, f]: features (documents first, then queries); full [n_texts, H]: full-size vectors.
    Each step: ``batch_size`` texts as queries; candidates = the full size's top ``teacher_top``
    documents of each + ``docs_per_step`` random documents; loss = sum over prefixes D of
    KL(full-size softmax || D-prefix softmax), temperature ``cfg.temperature``.
    """
    from tqdm.auto import tqdm

    params = [p for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / max(1, cfg.steps))
    n = len(X)
    Xd, Fd = X[:n_docs], full[:n_docs]
    tau = cfg.temperature
    q_of_pair = torch.tensor([p[0] for p in pairs], dtype=torch.long) + n_docs if pairs else None
    d_of_pair = torch.tensor([p[1] for p in pairs], dtype=torch.long) if pairs else None
    positives: dict[int, torch.Tensor] = {}
    for q, d in pairs:  # a query's other judged documents are never its negatives (NFCorpus judges ~40 each)
        positives.setdefault(q, []).append(d)
    positives = {q: torch.tensor(sorted(set(v)), dtype=torch.long) for q, v in positives.items()}
    first = last = None
    bar = tqdm(range(cfg.steps), desc=f"adapt {desc}", unit="step", disable=not progress, leave=False)
    n_q = n - n_docs
    for step in bar:
        if n_q:  # half the batch from the queries: they are what the small size will be asked
            half = min(cfg.batch_size // 2, n_q)
            qi = torch.from_numpy(np.concatenate([n_docs + rng.choice(n_q, half, replace=False),
                                                  rng.choice(n_docs, min(cfg.batch_size - half, n_docs), replace=False)]))
        else:
            qi = torch.from_numpy(rng.choice(n, min(cfg.batch_size, n), replace=False))
        with torch.no_grad():
            sims = full[qi] @ Fd.T
            top = sims.topk(min(cfg.teacher_top, n_docs), dim=1).indices.flatten()
            if cfg.agree_top:  # each query's own neighbourhood, ranked by the full size
                a_val, a_idx = sims.topk(min(cfg.agree_top, n_docs), dim=1)
                a_teacher = (a_val / cfg.agree_temperature).log_softmax(-1)
            del sims
        rand = torch.from_numpy(rng.choice(n_docs, min(cfg.docs_per_step, n_docs), replace=False))
        extra = []
        if pairs:
            pi = torch.from_numpy(rng.choice(len(pairs), min(cfg.batch_size, len(pairs)), replace=False))
            extra = [d_of_pair[pi]]
        di = torch.unique(torch.cat([rand, top, *extra]))
        teacher = (full[qi] @ Fd[di].T) / tau
        ys, yd = m(X[qi]), m(Xd[di])
        ya = m(Xd[a_idx.flatten()]).view(*a_idx.shape, -1) if cfg.agree_top else None
        loss = X.new_zeros(())
        if pairs:
            yq_lab = m(X[q_of_pair[pi]])
            col = torch.searchsorted(di, d_of_pair[pi])
            other = torch.stack([torch.isin(di, positives[int(q) - n_docs]) for q in q_of_pair[pi]])
            other[torch.arange(len(pi)), col] = False
        for D in dims:
            cut = (lambda y, D=D: _normalise(y[:, :D])) if normalize else (lambda y, D=D: y[:, :D])
            s = cut(ys) @ cut(yd).T / tau
            loss = loss + F.kl_div(s.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")
            if ya is not None:
                ya_d = cut(ya.flatten(0, 1)).view(ya.shape[0], ya.shape[1], -1)
                sa = torch.einsum("bd,btd->bt", cut(ys), ya_d)
                loss = loss + cfg.agree_weight * F.kl_div((sa / cfg.agree_temperature).log_softmax(-1), a_teacher,
                                                          log_target=True, reduction="batchmean")
            if pairs:
                s_lab = (cut(yq_lab) @ cut(yd).T / tau).masked_fill(other, float("-inf"))
                loss = loss + cfg.qrels_weight * F.cross_entropy(s_lab, col)
        v = float(loss.detach()) / len(dims)
        if not np.isfinite(v):  # before the step: the map is never stepped with a non-finite gradient
            raise AdaError(f"adapt {desc}: loss became {v} at step {step + 1}; lower lr (now {cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        first = v if first is None else first
        last = v
        bar.set_postfix(loss=f"{v:.3f}")
    return {"loss_first": round(first, 4) if first is not None else None, "loss_last": round(last, 4) if last is not None else None,
            "dims": dims}


def _write_model(enc: Encoder, adaptor: Adaptor, out: Path) -> None:
    """The backbone's files unchanged, plus the adaptor; written beside and renamed into place."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    src = Path(enc.path)
    if src.is_dir():
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("adaptor.json", "adaptor.safetensors", ".*"))
    else:  # a Hub id: write what was loaded
        enc.model.save_pretrained(tmp)
        enc.tokenizer.save_pretrained(tmp)
    meta_path = tmp / "adaretrieve.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update({"pooling": enc.pooling, "normalize": enc.normalize, "max_length": enc.max_length,
                 "adapted": True, "base_model": enc.name,
                 **({"query_prefix": enc.query_prefix} if enc.query_prefix else {}),
                 **({"passage_prefix": enc.passage_prefix} if enc.passage_prefix else {})})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    write_encoder_st_files(tmp, enc)  # the full size (the backbone's) loads in sentence-transformers as here
    adaptor.save(tmp)
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)


__all__ = ["AdaptConfig", "adapt", "fit_adaptor", "fit_ridge", "principal_targets", "prefix_dims"]
