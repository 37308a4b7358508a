"""A 2D Matryoshka adaptor: one small map per layer, from the pooled state of layer L to vectors
whose every prefix is a good embedding (size ``LxD`` = the first D outputs, renormalised).

The backbone is not touched, and a layer without a map (the last one, always, for ``adapt``) is
read raw: the full size of an adapted model is byte-identical to the backbone's.

On disk, beside the backbone's own files::

    adaptor.json           {"format": 1, "kind", "layers", "hidden_size", "feature_layers", "out_dim",
                            "hidden", "backbone_sha256", "objective", "fitted_on", ...}
    adaptor.safetensors    layer{L}.weight [in, out], layer{L}.bias [out]
                           (+ layer{L}.w1 [in, hidden], .b1, .w2 [hidden, out] for kind "mlp")

The input of layer L's map is the pooled states of ``feature_layers[L]`` (e.g. layers 0..L, all
computed anyway on the way to L), concatenated: ``in = len(feature_layers[L]) * hidden_size``.
A linear map is ``y = x @ W + b`` (centring folded into ``b``). The ``mlp`` kind adds a residual
``gelu(x @ w1 + b1) @ w2``. Output columns are ordered so the first D serve every D.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from adaretrieve.errors import AdaError

CONFIG = "adaptor.json"
WEIGHTS = "adaptor.safetensors"
FORMAT = 1
KINDS = ("linear", "mlp")


class LayerMap(nn.Module):
    """[..., in_dim] -> [..., out_dim] for one layer."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", hidden: int = 0):
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.zeros(in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        if kind == "mlp":
            self.w1 = nn.Parameter(torch.zeros(in_dim, hidden))
            self.b1 = nn.Parameter(torch.zeros(hidden))
            self.w2 = nn.Parameter(torch.zeros(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight + self.bias
        if self.kind == "mlp":
            y = y + torch.nn.functional.gelu(x @ self.w1 + self.b1) @ self.w2
        return y


class Adaptor(nn.Module):
    """Per-layer maps; ``out_dims`` {L: outputs} for the transformer layers (1-based) that have one;
    ``feature_layers`` {L: [layers whose pooled states, concatenated, are the map's input]}."""

    def __init__(self, hidden_size: int, out_dims: dict[int, int], feature_layers: dict[int, list[int]] | None = None,
                 kind: str = "linear", hidden: int = 0, meta: dict | None = None):
        super().__init__()
        if kind not in KINDS:
            raise AdaError(f"adaptor kind {kind!r} is not one of {', '.join(KINDS)}")
        self.hidden_size, self.kind, self.hidden = int(hidden_size), kind, int(hidden)
        self.feature_layers = {int(L): [int(x) for x in (feature_layers or {}).get(L, [L])] for L in out_dims}
        for L, fl in self.feature_layers.items():
            if not fl or max(fl) > L or min(fl) < 0:
                raise AdaError(f"adaptor layer {L}: feature layers {fl} must lie in 0..{L}")
        self.maps = nn.ModuleDict({
            str(L): LayerMap(len(self.feature_layers[L]) * self.hidden_size, out, kind, hidden)
            for L, out in sorted(out_dims.items())
        })
        self.meta = dict(meta or {})

    @property
    def layers(self) -> list[int]:
        return sorted(int(k) for k in self.maps)

    def out_dim(self, layer: int) -> int | None:
        m = self.maps[str(layer)] if str(layer) in self.maps else None
        return int(m.weight.shape[1]) if m is not None else None

    def has(self, layer: int) -> bool:
        return str(layer) in self.maps

    def inputs(self, layer: int) -> list[int]:
        """The layers whose pooled states the map of ``layer`` reads."""
        return self.feature_layers[layer]

    def forward(self, layer: int, pooled: dict[int, torch.Tensor]) -> torch.Tensor:
        """``pooled`` {L: [batch, hidden]} holding at least ``inputs(layer)`` -> [batch, out_dim]."""
        x = torch.cat([pooled[L] for L in self.feature_layers[layer]], dim=-1)
        return self.maps[str(layer)](x)

    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for L, m in self.maps.items():
            for name, p in m.named_parameters():
                out[f"layer{L}.{name}"] = p.detach().to("cpu", torch.float32).contiguous()
        return out

    def config(self) -> dict:
        return {"format": FORMAT, "kind": self.kind, "layers": self.layers, "hidden_size": self.hidden_size,
                "feature_layers": {str(L): self.feature_layers[L] for L in self.layers},
                "out_dim": {str(L): self.out_dim(L) for L in self.layers}, "hidden": self.hidden, **self.meta}

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file(self.state(), str(d / WEIGHTS))
        (d / CONFIG).write_text(json.dumps(self.config(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Adaptor | None:
        """The adaptor saved in ``directory``, or None when it has none."""
        d = Path(directory)
        if not (d / CONFIG).exists():
            return None
        try:
            cfg = json.loads((d / CONFIG).read_text())
            if cfg.get("format") != FORMAT:
                raise AdaError(f"{d / CONFIG}: adaptor format {cfg.get('format')} is not {FORMAT}")
            out_dims = {int(L): int(cfg["out_dim"][str(L)]) for L in cfg["layers"]}
            fl = {int(L): list(v) for L, v in cfg["feature_layers"].items()}
            meta = {k: v for k, v in cfg.items() if k not in ("format", "kind", "layers", "hidden_size", "feature_layers",
                                                            "out_dim", "hidden")}
            ad = cls(int(cfg["hidden_size"]), out_dims, fl, cfg.get("kind", "linear"), int(cfg.get("hidden", 0)), meta)
        except AdaError as e:  # a rule of the config broken: name the file it is in
            msg = str(e)
            raise AdaError(msg if msg.startswith(str(d / CONFIG)) else f"{d / CONFIG}: {msg}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AdaError(f"{d / CONFIG}: not a valid adaptor config ({type(e).__name__}: {e})") from None
        if not (d / WEIGHTS).exists():
            raise AdaError(f"{d} has {CONFIG} but no {WEIGHTS}")
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(d / WEIGHTS))
        except Exception as e:  # truncated or foreign file
            raise AdaError(f"{d / WEIGHTS}: cannot read ({str(e).splitlines()[0]})") from None
        want = set(ad.state())
        if set(tensors) != want:
            raise AdaError(f"{d / WEIGHTS}: tensors {sorted(set(tensors) ^ want)} do not match {CONFIG}")
        with torch.no_grad():
            for L, m in ad.maps.items():
                for name, p in m.named_parameters():
                    t = tensors[f"layer{L}.{name}"]
                    if t.shape != p.shape:
                        raise AdaError(f"{d / WEIGHTS}: layer{L}.{name} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
                    p.copy_(t)
        return ad
