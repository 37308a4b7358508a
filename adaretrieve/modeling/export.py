"""Export one size ``LxD`` of a model as a sentence-transformers folder (and, optionally, the ONNX
graph of its transformer).

The folder holds the backbone cut to its first L layers, then the modules that turn its output
into adaretrieve's ``LxD`` vector:

- not adapted at L: Pooling (the model's), a Dense that keeps the first D dims when D is smaller
  than the layer's width (an identity slice: exact), the model's own Dense modules when L is its
  last layer, Normalize when the model normalises (after the slice, as adaretrieve renormalises a
  truncated vector);
- adapted at L (``adaptor.json``): the adaptor's map reads the pooled states of layers
  ``feature_layers[L]`` concatenated. Pooling is linear per dimension, so pooling the tokens' layer
  states concatenated equals concatenating the pooled states: a small module ``LayerConcat``
  (``adaretrieve_st.py`` in the folder, torch only) puts those layers' token states side by side
  before the Pooling, and the map's first D outputs are a Dense module. Loading it needs
  ``SentenceTransformer(DIR, trust_remote_code=True)``: sentence-transformers 6 imports no module of
  a folder without it. An adaptor reading layer L alone needs no such module.

``SentenceTransformer(DIR).encode(texts)`` then equals ``Encoder(model).encode(texts, [LxD])``;
``export`` checks it on sample texts when sentence-transformers is installed and refuses to leave a
folder that differs by more than ``tolerance``. The prefixes become the folder's ``query`` and
``document`` prompts (``encode_query`` / ``encode_document`` apply them).

ONNX (``onnx=True``): ``onnx/model.onnx`` takes ``input_ids``, ``attention_mask``
(, ``token_type_ids``) and returns ``last_hidden_state`` [batch, seq, width]: the cut transformer's
last hidden state, or the feature layers' states concatenated for an adapted size (then
``LayerConcat`` passes it through). That is the layout sentence-transformers' onnx backend loads;
the graph is checked with onnxruntime against adaretrieve's vectors.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adaretrieve._version import __version__
from adaretrieve.errors import AdaError
from adaretrieve.modeling.encoder import Encoder
from adaretrieve.modeling.st_format import DenseLayer, write_st_files
from adaretrieve.sizes import Size

log = logging.getLogger(__name__)

CUSTOM_FILE = "adaretrieve_st.py"
CUSTOM_TYPE = "adaretrieve_st.LayerConcat"
SAMPLE_TEXTS = [
    "statins reduce the risk of cancer",
    "a",
    "The mitochondria is the powerhouse of the cell; ATP synthesis depends on the proton gradient across its inner "
    "membrane, which the electron transport chain builds.",
    "What is the capital of France?",
    " ".join(["long text beyond the token limit"] * 120),
]

_CUSTOM_SOURCE = '''"""Written by `adaretrieve export`: puts the token states of several transformer layers side by
side, so that the Pooling after it yields the pooled states of those layers concatenated (the input
of an adaretrieve adaptor's map). Needs the transformer to return its hidden states
(``output_hidden_states`` in config.json). Under the onnx backend the graph already returns the
concatenation as its last hidden state, and this module passes it through."""

import json
import os

import torch


class LayerConcat(torch.nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = [int(x) for x in layers]

    def forward(self, features):
        states = features.get("all_layer_embeddings")
        if states is not None:
            features["token_embeddings"] = torch.cat([states[i] for i in self.layers], dim=-1)
        return features

    def save(self, output_path, *args, **kwargs):
        os.makedirs(output_path, exist_ok=True)
        with open(os.path.join(output_path, "config.json"), "w") as f:
            json.dump({"layers": self.layers}, f)

    @staticmethod
    def load(input_path):
        with open(os.path.join(input_path, "config.json")) as f:
            return LayerConcat(**json.load(f))
'''


def _cut_model(enc: Encoder, layer: int, hidden_states: bool) -> nn.Module:
    """A copy of the backbone with only its first ``layer`` transformer layers (no hooks)."""
    cfg = copy.deepcopy(enc.model.config)
    model = type(enc.model)(cfg)
    model.load_state_dict(enc.model.state_dict())
    path, _, attr = enc.layer_path.rpartition(".")
    new_parent = model.get_submodule(path) if path else model
    setattr(new_parent, attr, nn.ModuleList(list(getattr(new_parent, attr))[:layer]))
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if hasattr(model.config, key) and isinstance(getattr(model.config, key), int):
            setattr(model.config, key, layer)
    model.config.output_hidden_states = bool(hidden_states)
    return model.eval()


def export_size(model: str | Encoder, size: str | Size, out: str | Path, onnx: bool = False, overwrite: bool = False,
                query_prefix: str | None = None, passage_prefix: str | None = None, verify: bool = True,
                tolerance: float = 1e-5) -> dict:
    """Write ``out``, a sentence-transformers folder for ``size`` of ``model``; returns a summary
    (modules, whether trust_remote_code is needed, the measured max abs difference to adaretrieve's
    vectors on sample texts for the torch and onnx paths)."""
    enc = model if isinstance(model, Encoder) else Encoder(model, device="cpu", query_prefix=query_prefix,
                                                           passage_prefix=passage_prefix)
    if isinstance(model, Encoder) and (query_prefix is not None or passage_prefix is not None):
        enc.query_prefix = enc.query_prefix if query_prefix is None else query_prefix
        enc.passage_prefix = enc.passage_prefix if passage_prefix is None else passage_prefix
    s = enc.check_sizes([size], "export size")[0]
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise AdaError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    adapted = enc.adapted(s.layer)
    features = enc.adaptor.inputs(s.layer) if adapted else [s.layer]
    if adapted and enc.adaptor.kind != "linear":
        raise AdaError(f"export {s}: the adaptor at layer {s.layer} is of kind {enc.adaptor.kind!r}; "
                       "only a linear map has a sentence-transformers Dense module")
    concat = adapted and features != [s.layer]
    tmp = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        cut = _cut_model(enc, s.layer, hidden_states=concat)
        cut.save_pretrained(tmp)
        enc.tokenizer.save_pretrained(tmp)
        dense: list[DenseLayer] = []
        before: list[dict] = []
        width = enc.hidden_size
        if adapted:
            m = enc.adaptor.maps[str(s.layer)]
            dense.append(DenseLayer(m.weight.detach()[:, : s.dim].T.contiguous().float(),
                                    m.bias.detach()[: s.dim].float().clone(), "identity"))
            width = len(features) * enc.hidden_size
            if concat:
                (tmp / CUSTOM_FILE).write_text(_CUSTOM_SOURCE)
                (tmp / "1_LayerConcat").mkdir()
                (tmp / "1_LayerConcat" / "config.json").write_text(json.dumps({"layers": features}) + "\n")
                before.append({"type": CUSTOM_TYPE, "path": "1_LayerConcat"})
        else:
            if s.layer == enc.n_layers:
                dense.extend(enc.dense)
            have = enc.width(s.layer)
            if s.dim < have:  # keep the first D dims: an identity slice, exact in floating point
                dense.append(DenseLayer(torch.eye(have)[: s.dim].contiguous(), None, "identity"))
        write_st_files(tmp, pooling=enc.pooling, normalize=enc.normalize, max_length=enc.max_length,
                       hidden_size=enc.hidden_size, query_prefix=enc.query_prefix, passage_prefix=enc.passage_prefix,
                       dense=dense, before_pooling=before, pooled_width=width, lowercase=enc.lowercase)
        summary = {
            "model": enc.name, "model_path": enc.path, "weights_sha256": enc.weights_hash(), "size": str(s),
            "out": str(out), "layers_kept": s.layer, "adapted": adapted, "feature_layers": features,
            "pooling": enc.pooling, "normalize": enc.normalize, "max_length": enc.max_length,
            "query_prefix": enc.query_prefix, "passage_prefix": enc.passage_prefix,
            "modules": [m["type"].rsplit(".", 1)[-1] for m in json.loads((tmp / "modules.json").read_text())],
            "trust_remote_code": concat, "adaretrieve": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        want = enc.encode(SAMPLE_TEXTS, [s], sort_by_length=False)[s]
        if onnx:
            summary["onnx"] = _export_onnx(tmp, s, features if concat else None, enc, want, tolerance)
        if verify:
            summary["check"] = _check_st(tmp, concat, want, tolerance)
        (tmp / "adaretrieve-export.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _check_st(folder: Path, trust: bool, want: np.ndarray, tolerance: float) -> dict:
    """sentence-transformers' vectors of the sample texts against adaretrieve's; AdaError beyond
    ``tolerance``. Skipped (and said so) when sentence-transformers is not installed."""
    try:
        import sentence_transformers
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return {"checked": False, "why": "sentence-transformers is not installed"}
    st = SentenceTransformer(str(folder), device="cpu", trust_remote_code=trust)
    got = st.encode(SAMPLE_TEXTS, convert_to_numpy=True, batch_size=len(SAMPLE_TEXTS))
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if diff > tolerance:
        raise AdaError(f"export check: sentence-transformers' vectors differ from adaretrieve's by {diff:.2e} "
                       f"(shape {got.shape} vs {want.shape}; tolerance {tolerance:g}); this model's layers do not cut cleanly")
    return {"checked": True, "sentence_transformers": sentence_transformers.__version__, "texts": len(SAMPLE_TEXTS),
            "max_abs_diff": diff}


class _Graph(nn.Module):
    """The transformer as the onnx backend calls it: token ids in, ``last_hidden_state`` out (the
    feature layers' states concatenated, for an adapted size)."""

    def __init__(self, model: nn.Module, layers: list[int] | None, token_types: bool):
        super().__init__()
        self.model, self.layers, self.token_types = model, layers, token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kw = {"token_type_ids": token_type_ids} if self.token_types else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=bool(self.layers),
                         return_dict=True, **kw)
        if self.layers:
            return torch.cat([out.hidden_states[i] for i in self.layers], dim=-1)
        return out.last_hidden_state


def _export_onnx(folder: Path, s: Size, layers: list[int] | None, enc: Encoder, want: np.ndarray,
                 tolerance: float) -> dict:
    try:
        import onnx  # noqa: F401  (torch's exporter writes through it)
        import onnxruntime as ort
    except ImportError:
        raise AdaError("--onnx needs the packages onnx and onnxruntime (pip install 'adaretrieve[onnx]')") from None
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    batch = enc.tokenizer(["a short text", "a longer text to pad the other one with"], padding=True, return_tensors="pt")
    token_types = "token_type_ids" in batch
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if token_types else [])]
    (folder / "onnx").mkdir(exist_ok=True)
    path = folder / "onnx" / "model.onnx"
    dyn = {n: {0: "batch", 1: "sequence"} for n in names}
    dyn["last_hidden_state"] = {0: "batch", 1: "sequence"}
    from adaretrieve.modeling.onnx_backend import TORCH_ONNX_EXPORT

    with TORCH_ONNX_EXPORT, torch.no_grad():  # torch.onnx's export state is process-global
        torch.onnx.export(_Graph(model, layers, token_types), tuple(batch[n] for n in names), str(path), dynamo=False,
                          input_names=names, output_names=["last_hidden_state"], dynamic_axes=dyn, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = onnx_vectors(sess, folder, enc.tokenizer, SAMPLE_TEXTS, enc.max_length)
    diff = float(np.abs(got - want).max())
    if diff > tolerance:
        raise AdaError(f"export check: the ONNX graph's vectors differ from adaretrieve's by {diff:.2e} (tolerance {tolerance:g})")
    return {"file": "onnx/model.onnx", "bytes": path.stat().st_size, "inputs": names, "onnxruntime": ort.__version__,
            "max_abs_diff": diff}


def onnx_vectors(sess, folder: str | Path, tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    """``texts`` [n] through the ONNX graph of an exported ``folder``, then its modules (pooling,
    Dense, Normalize) in numpy, as sentence-transformers applies them after its onnx backend: [n, D]."""
    names = [i.name for i in sess.get_inputs()]
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=max_length,
                          return_tensors="np")
        h = sess.run(["last_hidden_state"], {n: batch[n].astype(np.int64) for n in names})[0]
        out.append(_apply_modules(Path(folder), h, batch["attention_mask"]))
    return np.concatenate(out)


def _apply_modules(folder: Path, h: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    mods = json.loads((folder / "modules.json").read_text())
    h = h.astype(np.float64)
    mask = attention_mask.astype(np.float64)[..., None]
    x = None
    for m in mods:
        kind, p = m["type"].rsplit(".", 1)[-1], folder / m["path"]
        if kind == "Pooling":
            mode = json.loads((p / "config.json").read_text())["pooling_mode"]
            x = h[:, 0] if mode == "cls" else (h * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        elif kind == "Dense":
            from safetensors.numpy import load_file

            w = load_file(str(p / "model.safetensors"))
            x = x @ w["linear.weight"].astype(np.float64).T + (w["linear.bias"] if "linear.bias" in w else 0)
            if "Tanh" in json.loads((p / "config.json").read_text())["activation_function"]:
                x = np.tanh(x)
        elif kind == "Normalize":
            x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    return x.astype(np.float32)
