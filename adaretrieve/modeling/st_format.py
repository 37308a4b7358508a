"""Sentence-transformers folders, both ways.

Reading (``read_st_config``): a folder's ``modules.json`` says what sentence-transformers computes
after the transformer, and adaretrieve must compute the same or refuse. Honoured: a Transformer at
the folder's root, Pooling by ``mean`` or ``cls`` in every spelling sentence-transformers has used
(``pooling_mode_mean_tokens: true``, ``"pooling_mode": "mean"``, ``["cls"]``, ``"cls_token"``),
Dense modules with no activation or tanh (applied to the last layer's pooled vector: the full size
becomes ``n_layers x out_features``), Normalize last, Dropout (a no-op at inference), the max
length (``sentence_bert_config.json``, else, for sentence-transformers 6 folders, the tokenizer's
``model_max_length``), ``do_lower_case``, and the ``query`` / ``document`` prompts as prefixes.
Anything else (max or weighted pooling, several pooling modes, ``include_prompt: false`` with
prompts, LayerNorm, a custom module, modules out of order) is an AdaError naming the file.

Writing (``write_st_files``): the module files that make a folder adaretrieve wrote (``train``,
``adapt``, ``export``) load in sentence-transformers exactly as adaretrieve encodes it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from adaretrieve.errors import AdaError

log = logging.getLogger(__name__)

LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
MODE_ALIASES = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}
ACTIVATIONS = {"Identity": "identity", "Tanh": "tanh"}
QUERY_PROMPTS = ("query",)
PASSAGE_PROMPTS = ("document", "passage", "corpus")
NORMALIZE_CONFIG = {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}


@dataclass
class DenseLayer:
    """One sentence-transformers Dense module: ``y = act(x @ weight.T + bias)``; weight [out, in]."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: str  # "identity" | "tanh"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.T.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return torch.tanh(y) if self.activation == "tanh" else y


class _Files:
    """Small json files of a local folder or, when reachable, of a Hub repository."""

    def __init__(self, model_dir: str):
        self.root = model_dir
        self.local = Path(model_dir).is_dir()

    def path(self, name: str) -> Path | None:
        if self.local:
            p = Path(self.root) / name
            return p if p.exists() else None
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(self.root, name))
        except Exception:  # offline, or not in the repository
            return None

    def json(self, name: str):
        p = self.path(name)
        if p is None:
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise AdaError(f"{self.root}/{name}: not valid JSON ({e.msg} at line {e.lineno})") from None

    def where(self, name: str) -> str:
        return f"{self.root}/{name}"


def pooling_mode(cfg: dict, where: str) -> str:
    """``mean`` or ``cls`` from a Pooling config in any spelling; AdaError for anything else."""
    if "pooling_mode" in cfg:
        raw = cfg["pooling_mode"]
        modes = [raw] if isinstance(raw, str) else list(raw or [])
    else:
        modes = [mode for key, mode in LEGACY_POOLING.items() if cfg.get(key)] or ["mean"]  # as sentence-transformers
    modes = [MODE_ALIASES.get(str(m), str(m)) for m in modes]
    if len(modes) != 1 or modes[0] not in ("mean", "cls"):
        raise AdaError(f"{where}: pooling {'+'.join(modes) or 'none'}: adaretrieve pools by one of mean, cls "
                       "(every size is a prefix of one pooled vector)")
    return modes[0]


def _kind(module: dict) -> str:
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def read_st_config(model_dir: str) -> dict:
    """What a sentence-transformers folder (or Hub repository) says about encoding: ``pooling``,
    ``normalize``, ``max_length``, ``lowercase``, ``dense`` (list of DenseLayer), ``query_prefix``,
    ``passage_prefix`` (only the keys the folder sets). ``adaretrieve.json`` (written by
    ``adaretrieve train``/``adapt``) overrides pooling, normalisation and max length."""
    files = _Files(model_dir)
    cfg: dict = {}
    modules = files.json("modules.json")
    if modules is not None:
        cfg.update(_read_modules(files, modules))
    sb = files.json("sentence_bert_config.json") or {}
    if sb.get("max_seq_length"):
        cfg["max_length"] = int(sb["max_seq_length"])
    elif modules is not None:  # sentence-transformers 6 keeps the limit in the tokenizer's config
        tok = files.json("tokenizer_config.json") or {}
        limit = tok.get("model_max_length")
        if isinstance(limit, (int, float)) and 0 < limit < 1_000_000:
            cfg["max_length"] = int(limit)
    if sb.get("do_lower_case"):
        cfg["lowercase"] = True
    cst = files.json("config_sentence_transformers.json") or {}
    prompts = cst.get("prompts") or {}
    default = prompts.get(cst.get("default_prompt_name") or "", None)
    query = next((prompts[k] for k in QUERY_PROMPTS if k in prompts), default)
    passage = next((prompts[k] for k in PASSAGE_PROMPTS if k in prompts), default)
    if query:
        cfg["query_prefix"] = query
    if passage:
        cfg["passage_prefix"] = passage
    sim = cst.get("similarity_fn_name")
    if modules is not None and not cfg.get("normalize"):
        if sim == "cosine":  # sentence-transformers scores by cosine: the same ranking as normalised vectors
            cfg["normalize"] = True
        elif sim in ("euclidean", "manhattan"):
            raise AdaError(f"{files.where('config_sentence_transformers.json')}: similarity {sim} on vectors that are "
                           "not normalised: adaretrieve ranks by inner product (or cosine)")
    if cfg.get("pooled_prompt") is False and (query or passage):
        raise AdaError(f"{files.where(cfg.pop('pooling_path'))}: include_prompt false with prompts: adaretrieve pools "
                       "every token, prompt included")
    cfg.pop("pooled_prompt", None)
    cfg.pop("pooling_path", None)
    ada = Path(model_dir) / "adaretrieve.json"
    if ada.exists():  # written by `adaretrieve train` / `adapt`: the encoder settings it used
        meta = json.loads(ada.read_text())
        for key in ("pooling", "normalize", "max_length", "query_prefix", "passage_prefix"):
            if key in meta:
                cfg[key] = meta[key]
    return cfg


def _read_modules(files: _Files, modules: list) -> dict:
    where = files.where("modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise AdaError(f"{where}: expected a list of modules")
    order = {"Transformer": 0, "Pooling": 1, "Dense": 2, "Normalize": 3}
    cfg: dict = {"normalize": False}
    dense: list[DenseLayer] = []
    last = -1
    for m in modules:  # in list order, as sentence-transformers applies them
        kind, path = _kind(m), str(m.get("path", "")).strip("/")
        if kind == "Dropout":
            continue
        if kind not in order:
            raise AdaError(f"{where}: module {m.get('type')!r} is not one adaretrieve can apply "
                           "(it applies Transformer, Pooling, Dense, Normalize)")
        if order[kind] < last or (kind != "Dense" and order[kind] == last):
            raise AdaError(f"{where}: module {kind} out of order: adaretrieve applies Transformer, Pooling, "
                           "Dense..., Normalize in that order")
        last = order[kind]
        if kind == "Transformer" and path not in ("", "."):
            raise AdaError(f"{where}: the transformer lives in {path}/; adaretrieve loads it from the folder itself")
        if kind == "Pooling":
            pool = files.json(f"{path}/config.json") or {}
            cfg["pooling"] = pooling_mode(pool, files.where(f"{path}/config.json"))
            if pool.get("include_prompt") is False:
                cfg["pooled_prompt"], cfg["pooling_path"] = False, f"{path}/config.json"
        if kind == "Dense":
            dense.append(_read_dense(files, path))
        if kind == "Normalize":
            cfg["normalize"] = True
    if "pooling" not in cfg and any(_kind(m) == "Transformer" for m in modules):
        raise AdaError(f"{where}: no Pooling module: adaretrieve needs one vector per text")
    if dense:
        cfg["dense"] = dense
    return cfg


def _read_dense(files: _Files, path: str) -> DenseLayer:
    where = files.where(f"{path}/config.json")
    dc = files.json(f"{path}/config.json") or {}
    act = str(dc.get("activation_function", "torch.nn.modules.activation.Tanh")).rsplit(".", 1)[-1]
    if act not in ACTIVATIONS:
        raise AdaError(f"{where}: Dense activation {act}: adaretrieve applies Identity or Tanh")
    weights = files.path(f"{path}/model.safetensors")
    if weights is not None:
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        weights = files.path(f"{path}/pytorch_model.bin")
        if weights is None:
            raise AdaError(f"{files.where(path)}: Dense module without model.safetensors or pytorch_model.bin")
        state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        w = state["linear.weight"].float()
        b = state["linear.bias"].float() if "linear.bias" in state else None
    except KeyError:
        raise AdaError(f"{files.where(path)}: Dense weights have no linear.weight (found {sorted(state)})") from None
    want = (int(dc.get("out_features", w.shape[0])), int(dc.get("in_features", w.shape[1])))
    if tuple(w.shape) != want:
        raise AdaError(f"{where}: weight shape {tuple(w.shape)} is not out x in {want}")
    return DenseLayer(w, b, ACTIVATIONS[act])


# -- writing -------------------------------------------------------------------------------------


def write_st_files(directory: str | Path, *, pooling: str, normalize: bool, max_length: int, hidden_size: int,
                   query_prefix: str = "", passage_prefix: str = "", dense: list[DenseLayer] = (),
                   before_pooling: list[dict] = (), pooled_width: int | None = None, lowercase: bool = False) -> None:
    """Write modules.json and the module folders beside a Hugging Face model saved in ``directory``
    (the transformer at the root): Pooling, then ``dense`` (as Dense modules), then Normalize when
    ``normalize``; ``sentence_bert_config.json`` with the max length and ``do_lower_case`` =
    ``lowercase`` (the source model's: a cased tokenizer behind it sees other tokens without it);
    prompts from the prefixes.
    ``before_pooling``: extra module entries ({"type", "path"}, already written) between the
    transformer and the pooling, whose output is ``pooled_width`` wide. Module folders the
    previous modules.json named are removed first, so no stale module is left behind."""
    d = Path(directory)
    old = d / "modules.json"
    if old.exists():
        try:
            for m in json.loads(old.read_text()):
                p = str(m.get("path", "")).strip("/")
                keep = {str(x.get("path", "")).strip("/") for x in before_pooling}
                if p and p not in keep and (d / p).is_dir() and (d / p).resolve().parent == d.resolve():
                    shutil.rmtree(d / p)
        except (ValueError, TypeError, AttributeError):
            pass
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    for m in before_pooling:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": m["path"], "type": m["type"]})
    width = pooled_width or hidden_size

    def add(kind: str, type_: str) -> Path:
        i = len(modules)
        path = f"{i}_{kind}"
        modules.append({"idx": i, "name": str(i), "path": path, "type": type_})
        (d / path).mkdir(parents=True, exist_ok=True)
        return d / path

    p = add("Pooling", "sentence_transformers.models.Pooling")
    (p / "config.json").write_text(json.dumps({"embedding_dimension": width, "pooling_mode": pooling,
                                               "include_prompt": True}, indent=2) + "\n")
    for layer in dense:
        from safetensors.torch import save_file

        p = add("Dense", "sentence_transformers.models.Dense")
        out_f, in_f = layer.weight.shape
        act = {"identity": "torch.nn.modules.linear.Identity", "tanh": "torch.nn.modules.activation.Tanh"}[layer.activation]
        (p / "config.json").write_text(json.dumps({"in_features": int(in_f), "out_features": int(out_f),
                                                   "bias": layer.bias is not None, "activation_function": act,
                                                   **NORMALIZE_CONFIG}, indent=2) + "\n")
        state = {"linear.weight": layer.weight.detach().float().contiguous()}
        if layer.bias is not None:
            state["linear.bias"] = layer.bias.detach().float().contiguous()
        save_file(state, str(p / "model.safetensors"))
    if normalize:
        p = add("Normalize", "sentence_transformers.models.Normalize")
        (p / "config.json").write_text(json.dumps(NORMALIZE_CONFIG, indent=2) + "\n")
    (d / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": int(max_length), "do_lower_case": bool(lowercase)},
                                                            indent=2) + "\n")
    prompts = {k: v for k, v in (("query", query_prefix), ("document", passage_prefix)) if v}
    cst_path = d / "config_sentence_transformers.json"
    cst = {}
    if cst_path.exists():
        try:
            cst = json.loads(cst_path.read_text())
        except ValueError:
            cst = {}
    cst.update({"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine" if normalize else "dot",
                "model_type": "SentenceTransformer"})
    cst_path.write_text(json.dumps(cst, indent=2) + "\n")


def write_encoder_st_files(directory: str | Path, enc) -> None:
    """``write_st_files`` with an Encoder's settings: its full size, as adaretrieve encodes it."""
    write_st_files(directory, pooling=enc.pooling, normalize=enc.normalize, max_length=enc.max_length,
                   hidden_size=enc.hidden_size, query_prefix=enc.query_prefix, passage_prefix=enc.passage_prefix,
                   dense=list(enc.dense), lowercase=enc.lowercase)
