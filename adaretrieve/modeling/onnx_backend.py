"""ONNX Runtime backend for the Encoder: the same vectors as the torch path, from an exported graph.

One graph per depth d: ``[batch, seq]`` token ids and mask -> ``[batch, d + 1, hidden]`` float32,
the pooled state of every layer 0..d (0 = embedding output), pooled by the model's rule. Layers
past d are not in the graph (early exit, as on the torch path), so a ``2x64`` query runs two
layers. The adaptor, truncation and normalisation stay outside the graph, shared with torch.

Graphs are exported with ``torch.onnx`` (the TorchScript exporter: no onnxscript needed) the first
time a depth is asked for, and cached on disk under ``cache_dir()/onnx`` by the backbone's weights
hash, pooling and depth, so a second process loads the file instead of exporting again. The int8
variant is ONNX Runtime's dynamic quantisation of the MatMul weights (per output channel;
activations quantised per batch at run time), cached beside it.

Disk: a depth-d graph holds the embeddings and d layers (MiniLM: ~55 MB at depth 2, ~90 MB at 6).

Resumable encoding (``Encoder.encode_to`` / ``resume``) runs segments instead, one graph per
``(start, end)``: the head ``(0, L)`` takes the tokens and gives the hidden state after layer L
``[batch, seq, hidden]`` and the pooled states of layers 0..L ``[batch, L + 1, hidden]``; a
continuation ``(L, M)`` takes that hidden state and the 2-D attention mask (the extended mask the
layers need is built inside the graph, by the model's own code) and gives the hidden state after M
and the pooled states of layers L+1..M ``[batch, M - L, hidden]``. Each segment holds only its own
layers' weights, is cached, locked and (int8) quantised like a depth graph; the int8 weights are
the same as the one-pass graph's (per output channel, weight by weight), but activations are
quantised per batch that runs, so resuming fewer rows than were encoded shifts int8 vectors a little.

Threads and processes: the first use of a depth (export, quantisation, session) runs once per
process under a lock per cache file, so threads that ask for it at the same moment wait for one
export; torch.onnx's export state is process-global, so every export in the process (this module's
and ``export --onnx``'s) holds ``TORCH_ONNX_EXPORT``. Files are written under a unique temporary
name in the cache folder and renamed into place, so two processes exporting into one cache each
write a whole file and the last rename wins.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adaretrieve.cache import cache_dir
from adaretrieve.errors import AdaError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
GRAPH_FORMAT = 1  # bump when the exported graph's inputs or outputs change: old cache files are then ignored
SEGMENT_FORMAT = 1  # the same for the segment graphs of resumable encoding
OPSET = 17
# int8 recipe, part of the int8 file's name: the weights of every MatMul with a constant weight,
# int8 per output channel, activations quantised per batch at run time, except the feed-forward
# down-projections (weight [intermediate, hidden]), whose inputs have the outliers: they stay fp32.
# Min cosine to fp32 on 64 SciFact queries: per-tensor 0.93 (MiniLM); per channel 0.988 (MiniLM),
# 0.85 (MPNet); per channel without the down-projections 0.994 (MiniLM), 0.986 (MPNet), at 1.75x
# fp32's batch-1 speed for MPNet instead of 2.5x. Attention's activation x activation products stay fp32.
INT8_RECIPE = "pc2"

# torch.onnx keeps its export state in module globals: two exports at once in one process fail
# ("GLOBALS.in_onnx_export must be True"), so every torch.onnx.export in the process holds this.
TORCH_ONNX_EXPORT = threading.Lock()
_FILE_LOCKS: dict[Path, threading.Lock] = {}  # one per fp32 cache file (= backbone, pooling, depth or segment), for all runners
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.Lock:
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(path, threading.Lock())


def _temp_beside(out: Path, suffix: str = ".tmp") -> Path:
    """A new, unique, empty file in ``out``'s folder (same file system, so os.replace is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=suffix)
    os.close(fd)
    return Path(name)


class _QuantiserAdvice(logging.Filter):
    """Drops the records below ERROR that onnxruntime's quantiser logs on the root logger itself
    (``logging.warning("Please consider pre-processing ...")``); every other record passes."""

    def __init__(self):
        super().__init__()
        import onnxruntime.quantization as q

        self.folder = os.path.dirname(os.path.abspath(q.__file__)) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not os.path.abspath(record.pathname).startswith(self.folder)


@contextmanager
def _quiet_quantiser():
    """Silence the quantiser's advice while it runs, without touching any logger's level: a filter
    on the root logger (where it logs), removed after. Other threads' records still get through."""
    f = _QuantiserAdvice()
    root = logging.getLogger()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise AdaError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


def require_onnxruntime(backend: str = "onnx"):
    """The onnxruntime module, or one AdaError line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise AdaError(f"backend {backend!r} needs onnxruntime, which is not installed: "
                       "pip install 'adaretrieve[onnx]' (or pip install onnxruntime onnx), or use --backend torch") from None
    return onnxruntime


class _PooledUpTo(nn.Module):
    """What the graph computes: the encoder's own forward pass (its layer hooks, early exit at
    ``depth``) followed by its pooling of every layer 0..depth -> [batch, depth + 1, hidden]."""

    def __init__(self, enc, depth: int, names: list[str]):
        super().__init__()
        self.enc, self.depth, self.names = enc, depth, names
        self.model = enc.model  # registered, so the exporter sees the weights as parameters

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.names, inputs))
        hs = self.enc.hidden_states(batch, self.depth)
        mask = batch["attention_mask"]
        return torch.stack([self.enc.pool(h.float(), mask) for h in hs], dim=1)


class _Segment(nn.Module):
    """Layers ``start + 1 .. end`` of the encoder as a graph. ``start == 0`` (the head): the tokens
    -> (hidden state after ``end``, pooled states of layers 0..end ``[batch, end + 1, hidden]``). Else
    (hidden state after ``start``, 2-D attention mask) -> (hidden state after ``end``, pooled states
    of layers start+1..end ``[batch, end - start, hidden]``)."""

    def __init__(self, enc, start: int, end: int, names: list[str]):
        super().__init__()
        self.enc, self.start, self.end, self.names = enc, start, end, names
        self.model = enc.model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.start == 0:
            batch = dict(zip(self.names, inputs))
            hs = self.enc.hidden_states(batch, self.end)
            mask = batch["attention_mask"]
            return hs[self.end], torch.stack([self.enc.pool(h.float(), mask) for h in hs], dim=1)
        hidden, mask = inputs
        # the layers' other arguments (extended mask, position bias...) from the model's own code, fed
        # the mask, placeholder tokens and ``hidden`` for the embeddings' output (its shape and dtype are
        # what the mask code reads): no layer runs there, and the embeddings drop out of the graph
        feed = {n: mask if n == "attention_mask" else torch.zeros_like(mask) for n in self.names}
        args, kwargs = self.enc.layer_args(feed, embedded=hidden)
        pooled = []
        for i in range(self.start, self.end):  # layer i + 1 (layers[i]) from the output of layer i
            out = self.enc.layers[i](hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, (tuple, list)) else out
            pooled.append(self.enc.pool(hidden.float(), mask))
        return hidden, torch.stack(pooled, dim=1)


class OnnxRunner:
    """ONNX Runtime sessions for one Encoder, one per graph (a depth, or a segment ``(start, end)``),
    created on first use and kept; ONNX Runtime sessions are safe to run from several threads.

    ``run(batch, depth)``: ``batch`` {name: int64 [batch, seq]} -> float32 [batch, depth + 1, hidden].
    ``run_head(batch, depth)`` / ``run_layers(hidden, mask, start, end)``: the segments (see the module doc).
    ``threads``: ONNX Runtime's intra-op threads (default: torch's thread count, itself the
    machine's cores unless OMP_NUM_THREADS says otherwise); inter-op is one thread.
    """

    def __init__(self, enc, quantize: bool = False, threads: int | None = None):
        self.ort = require_onnxruntime("onnx-int8" if quantize else "onnx")
        self.enc, self.quantize = enc, quantize
        self.threads = int(threads or torch.get_num_threads())
        if self.threads < 1:
            raise AdaError(f"threads {threads} must be at least 1")
        accepted = set(inspect.signature(enc.model.forward).parameters)
        probe = enc.tokenizer(["a"], return_tensors="np")
        self.names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in probe and n in accepted]
        if "input_ids" not in self.names or "attention_mask" not in self.names:
            raise AdaError(f"{enc.name}: the onnx backend needs a tokenizer that gives input_ids and attention_mask")
        self._sessions: dict = {}  # by depth or (start, end); written under the graph's file lock, read without it

    # -- files ---------------------------------------------------------------------------------

    def path(self, part: int | tuple[int, int], quantized: bool | None = None) -> Path:
        """The cache file of the graph to depth ``part``, or of the segment ``part = (start, end)``
        (the int8 one when ``quantized``)."""
        q = self.quantize if quantized is None else quantized
        enc = self.enc
        common = (OPSET, enc.backbone_hash(), enc.model.config.model_type, enc.pooling, ",".join(self.names))
        if isinstance(part, tuple):
            key, stem = (SEGMENT_FORMAT, *common, "segment", *part), f"S{part[0]}-{part[1]}"
        else:
            key, stem = (GRAPH_FORMAT, *common, part), f"L{part}"
        tag = hashlib.sha256("|".join(map(str, key)).encode()).hexdigest()[:16]
        return cache_dir() / "onnx" / f"{enc.backbone_hash()[:16]}-{enc.pooling}-{stem}-{tag}{f'-int8{INT8_RECIPE}' if q else ''}.onnx"

    def ensure(self, part: int | tuple[int, int]) -> Path:
        """The graph file for ``part`` (a depth or a segment), exported (and quantised) now unless the
        cache has it. Threads of one process asking at once: one exports, the others wait for it and
        read its file."""
        with _file_lock(self.path(part, quantized=False)):
            return self._ensure(part)

    def _ensure(self, part: int | tuple[int, int]) -> Path:
        fp32 = self.path(part, quantized=False)
        if not fp32.exists():
            self._export(part, fp32)
        if not self.quantize:
            return fp32
        int8 = self.path(part, quantized=True)
        if not int8.exists():
            self._quantize(fp32, int8)
        return int8

    def _export(self, part: int | tuple[int, int], out: Path) -> None:
        import warnings

        # two texts of different lengths: the mask has padding, so nothing about it is folded as a constant
        dummy = self.enc.tokenizer(["a b c d e f", "a"], padding=True, return_tensors="pt")
        if isinstance(part, tuple) and part[0] > 0:
            log.info("exporting %s to ONNX, layers %d..%d (once; cached at %s)", self.enc.name, part[0] + 1, part[1], out)
            mask = dummy["attention_mask"]
            args = (torch.randn(*mask.shape, self.enc.hidden_size), mask)
            inputs, outputs = ["hidden_in", "attention_mask"], ["hidden", "pooled"]
        else:
            log.info("exporting %s to ONNX up to layer %d (once; cached at %s)", self.enc.name,
                     part[1] if isinstance(part, tuple) else part, out)
            args = tuple(dummy[n] for n in self.names)
            inputs, outputs = self.names, ["hidden", "pooled"] if isinstance(part, tuple) else ["pooled"]
        dyn = {n: {0: "batch", 1: "seq"} for n in inputs}
        dyn.update({"hidden": {0: "batch", 1: "seq"}, "pooled": {0: "batch"}})
        dyn = {n: v for n, v in dyn.items() if n in inputs or n in outputs}
        wrapper = (_Segment(self.enc, *part, self.names) if isinstance(part, tuple)
                   else _PooledUpTo(self.enc, part, self.names)).eval()
        tmp = _temp_beside(out)
        try:
            with TORCH_ONNX_EXPORT, torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, args, str(tmp), input_names=inputs, output_names=outputs,
                                  dynamic_axes=dyn, opset_version=OPSET, do_constant_folding=True, dynamo=False)
            os.replace(tmp, out)  # atomic: another process never sees half a file
        finally:
            tmp.unlink(missing_ok=True)

    def _quantize(self, fp32: Path, out: Path) -> None:
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError as e:
            raise AdaError(f"backend 'onnx-int8' needs onnxruntime's quantisation tools and onnx ({e}): "
                           "pip install 'adaretrieve[onnx]'") from None
        log.info("quantising %s to int8 (once; cached at %s)", fp32.name, out)
        tmp = _temp_beside(out, ".tmp.onnx")
        try:
            with _quiet_quantiser():
                quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                                 per_channel=True, extra_options={"MatMulConstBOnly": True},
                                 nodes_to_exclude=self._down_projections(fp32))
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)

    def _down_projections(self, path: Path) -> list[str]:
        """Names of the MatMul nodes whose constant weight is [intermediate_size, hidden]: the
        feed-forward down-projections, left in fp32 by the int8 recipe."""
        import onnx

        cfg = self.enc.model.config
        inter = getattr(cfg, "intermediate_size", None)
        if not inter:
            return []
        model = onnx.load(str(path), load_external_data=False)
        shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
        return [n.name for n in model.graph.node if n.op_type == "MatMul"
                and any(shapes.get(i) == (inter, cfg.hidden_size) for i in n.input)]

    # -- running -------------------------------------------------------------------------------

    def session(self, part: int | tuple[int, int]):
        """The session for ``part`` (a depth or a segment), created once even when threads ask for it
        at the same moment."""
        s = self._sessions.get(part)
        if s is not None:
            return s
        with _file_lock(self.path(part, quantized=False)):
            if part not in self._sessions:
                self._sessions[part] = self._new_session(part)
        return self._sessions[part]

    def _new_session(self, part: int | tuple[int, int]):
        opts = self.ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        path = self._ensure(part)  # the caller holds the graph's lock
        try:
            return self.ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # a damaged cache file: say which, so it can be deleted
            raise AdaError(f"onnxruntime cannot load {path} ({str(e).strip().splitlines()[0][:160]}); "
                           "delete it to export it again") from None

    def run(self, batch: dict, depth: int) -> np.ndarray:
        feed = {n: np.ascontiguousarray(batch[n], dtype=np.int64) for n in self.names}
        return self.session(depth).run(None, feed)[0]

    def run_head(self, batch: dict, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Layers 1..depth from the tokens: (hidden state after ``depth`` float32 [batch, seq, hidden],
        pooled states of layers 0..depth [batch, depth + 1, hidden])."""
        self._check_segment(0, depth)
        feed = {n: np.ascontiguousarray(batch[n], dtype=np.int64) for n in self.names}
        hidden, pooled = self.session((0, depth)).run(None, feed)
        return hidden, pooled

    def run_layers(self, hidden: np.ndarray, mask: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Layers start+1..end from ``hidden`` [batch, seq, hidden], the output of layer ``start``, and
        its 2-D attention ``mask`` [batch, seq]: (hidden state after ``end``, pooled states of layers
        start+1..end [batch, end - start, hidden])."""
        self._check_segment(start, end)
        feed = {"hidden_in": np.ascontiguousarray(hidden, dtype=np.float32),
                "attention_mask": np.ascontiguousarray(mask, dtype=np.int64)}
        out, pooled = self.session((start, end)).run(None, feed)
        return out, pooled

    def _check_segment(self, start: int, end: int) -> None:
        if not 0 <= start < end <= self.enc.n_layers:
            raise AdaError(f"layers {start + 1}..{end}: a segment runs at least one layer of 1..{self.enc.n_layers}")
