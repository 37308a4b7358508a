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
import ctypes
import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adaretrieve._version import __version__
from adaretrieve.errors import AdaError, io_reason
from adaretrieve.index.format import fsync_path, try_lock
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


# -- the folder at --out: only an export of ours is replaced, and always whole ------------------------

EXPORT_MARKER = "adaretrieve-export.json"  # written last into every export: what marks a folder as one
# the points between the steps of a replacement; a test kills an export at each to check that --out
# always holds the old or the new export ("exchanged" with renameat2, the others where it is missing)
REPLACE_STEPS = ("written", "exchanged", "moved_aside", "renamed")
replace_hook: Callable[[str], None] | None = None
_RENAME_EXCHANGE = 2


def _step(name: str) -> None:
    if replace_hook is not None:
        replace_hook(name)


def export_path(out: str | Path) -> Path:
    """``out`` made absolute with ``.`` and ``..`` resolved (its folder through symlinks, its own name
    kept), so that ``--out ..`` names the folder it means and a temporary name beside it exists."""
    p = Path(os.path.abspath(out))
    if p.name == "":
        raise AdaError(f"--out {out}: the file-system root cannot be an export folder")
    return p.parent.resolve() / p.name


def check_export_out(out: Path, overwrite: bool) -> None:
    """``out`` may be written: absent, an empty folder, or with ``overwrite`` a previous export (it
    holds ``EXPORT_MARKER``). Anything else (a user's folder, an index, the working directory, a
    symlink, a file) is refused, never deleted."""
    if out.is_symlink():
        raise AdaError(f"--out {out} is a symlink; give the folder it points to ({os.path.realpath(out)})")
    if not out.exists():
        return
    if not out.is_dir():
        raise AdaError(f"--out {out} exists and is not a folder; refusing to replace it")
    cwd = Path.cwd().resolve()
    holds_cwd = cwd == out or out in cwd.parents
    if not any(out.iterdir()) and not holds_cwd:
        return
    if not overwrite and any(out.iterdir()):
        raise AdaError(f"--out {out} exists and is not empty; pass --overwrite to replace it (a previous export only)")
    if not (out / EXPORT_MARKER).is_file() and any(out.iterdir()):
        what = ("an adaretrieve index" if (out / "CURRENT").exists() or (out / "manifest.json").exists()
                else "not a folder written by `adaretrieve export`")
        raise AdaError(f"--out {out} is {what} (it has no {EXPORT_MARKER}); --overwrite replaces previous exports "
                       "only, so nothing was deleted")
    if holds_cwd:
        raise AdaError(f"--out {out} holds the working directory; run the export from another folder")


def _remove_leftovers(out: Path) -> None:
    """What an interrupted export to ``out`` left beside it (called under the export lock, so no
    other export is using them): temporary folders, and an old export moved aside, which is moved
    back when nothing is at ``out`` (a kill between the two renames of ``_replace``'s fallback)."""
    mine = sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.export-"))  # no glob: names may hold [*?
    for p in mine:
        if p.name.startswith(f".{out.name}.export-old-"):
            if not out.exists() and (p / EXPORT_MARKER).is_file():
                p.rename(out)
                log.warning("%s: moved back the previous export an interrupted export had moved aside", out)
            else:
                shutil.rmtree(p, ignore_errors=True)
        elif p.name.endswith("tmp") and p.is_dir():  # ours (.NAME.export-<pid>.tmp), and older versions' .NAME.export-tmp
            shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for d, _, files in os.walk(root):
        for f in files:
            fsync_path(Path(d) / f)
        fsync_path(Path(d))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system or the
    file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    if fn(-100, os.fsencode(a), -100, os.fsencode(b), _RENAME_EXCHANGE) == 0:  # -100: AT_FDCWD
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _replace(tmp: Path, out: Path) -> None:
    """Put the complete export ``tmp`` at ``out``; at every instant ``out`` is the old export or the
    new one. An existing export is swapped with ``tmp`` in one step (``tmp`` then holds the old one,
    which the caller removes); where that is impossible it is moved aside, the new one renamed into
    place and, should that fail, the old one moved back (a kill in between: the next export moves it
    back, ``_remove_leftovers``)."""
    _fsync_tree(tmp)
    fsync_path(out.parent)
    _step("written")
    if not out.exists() or not any(out.iterdir()):
        tmp.rename(out)  # over nothing, or an empty folder
        fsync_path(out.parent)
        _step("renamed")
        return
    if _exchange(tmp, out):
        fsync_path(out.parent)
        _step("exchanged")
        return
    aside = out.parent / f".{out.name}.export-old-{os.getpid()}"
    out.rename(aside)
    fsync_path(out.parent)
    try:
        _step("moved_aside")
        tmp.rename(out)
    except BaseException:
        if not out.exists():
            aside.rename(out)
        raise
    fsync_path(out.parent)
    _step("renamed")
    shutil.rmtree(aside, ignore_errors=True)


def export_size(model: str | Encoder, size: str | Size, out: str | Path, onnx: bool = False, overwrite: bool = False,
                query_prefix: str | None = None, passage_prefix: str | None = None, verify: bool = True,
                tolerance: float = 1e-5) -> dict:
    """Write ``out``, a sentence-transformers folder for ``size`` of ``model``; returns a summary
    (modules, whether trust_remote_code is needed, the measured max abs difference to adaretrieve's
    vectors on sample texts for the torch and onnx paths).

    ``overwrite`` replaces a previous export only (``check_export_out``), never a user's folder or an
    index; one export per ``out`` at a time (a flock on ``.NAME.export.lock`` beside it, which stays);
    the new export is written beside ``out`` and swapped in whole (``_replace``)."""
    shown, out = str(out), export_path(out)
    check_export_out(out, overwrite)  # before the model loads
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.export.lock"
    lock = try_lock(lock_path)
    if lock is None:
        raise AdaError(f"another export is writing {shown} now (it holds {lock_path}); wait for it to finish")
    try:
        _remove_leftovers(out)
        check_export_out(out, overwrite)  # again, under the lock
        enc = model if isinstance(model, Encoder) else Encoder(model, device="cpu", query_prefix=query_prefix,
                                                               passage_prefix=passage_prefix)
        if isinstance(model, Encoder) and (query_prefix is not None or passage_prefix is not None):
            enc.query_prefix = enc.query_prefix if query_prefix is None else query_prefix
            enc.passage_prefix = enc.passage_prefix if passage_prefix is None else passage_prefix
        s = enc.check_sizes([size], "export size")[0]
        adapted = enc.adapted(s.layer)
        features = enc.adaptor.inputs(s.layer) if adapted else [s.layer]
        if adapted and enc.adaptor.kind != "linear":
            raise AdaError(f"export {s}: the adaptor at layer {s.layer} is of kind {enc.adaptor.kind!r}; "
                           "only a linear map has a sentence-transformers Dense module")
        concat = adapted and features != [s.layer]
        tmp = out.parent / f".{out.name}.export-{os.getpid()}.tmp"
        tmp.mkdir()
        return _write_export(enc, s, out, shown, tmp, adapted, features, concat, onnx, verify, tolerance)
    finally:
        os.close(lock)


def _write_export(enc: Encoder, s: Size, out: Path, shown: str, tmp: Path, adapted: bool, features: list[int],
                  concat: bool, onnx: bool, verify: bool, tolerance: float) -> dict:
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
            "out": shown, "layers_kept": s.layer, "adapted": adapted, "feature_layers": features,
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
        (tmp / EXPORT_MARKER).write_text(json.dumps(summary, indent=2) + "\n")
        _replace(tmp, out)
    except OSError as e:
        raise AdaError(f"{shown}: the export could not be written ({io_reason(e)}); the folder at --out is unchanged") from None
    except Exception as e:
        if io_reason(e) is None:
            raise
        raise AdaError(f"{shown}: the export could not be written ({io_reason(e)}); the folder at --out is unchanged") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new export's files on failure, the old export's after a switch
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
