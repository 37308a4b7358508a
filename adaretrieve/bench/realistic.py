"""Realistic multi-size document vectors at any N, generated from real encodings (issue 26 item 1).

A generated document is a perturbation of one real document's *layer states* (the raw pooled state
of every layer the model's sizes read), made jointly across the layers: the same mixing weights
move every layer's state toward and around the seed's nearest real neighbours (neighbours by the
full size). Every size is then made from the generated states by the model's own map (an adaptor's
per-layer map, or the raw state) and cut + renormalised, so the sizes of one generated document
relate to each other as the model makes them, which synthetic per-size vectors cannot promise.

For document ``i`` with seed ``s`` and the seed's ``k`` neighbours ``n_1..n_k``, in every layer ``L``::

    x_L = X_L[s] + sum_j c_j (X_L[n_j] - X_L[s]) + borrow sum_m h_m (X_L[r_m] - X_L[nn(r_m)]) / sqrt(M)
    c = t a + noise g / sqrt(k)

``a`` ~ Dirichlet(1) (a random point of the neighbours' simplex), ``t`` ~ U(0, toward) (how far
toward it), ``g`` ~ N(0, I_k) (noise along the neighbours' own differences, so it is shaped like
them). The last term borrows the residuals of ``M`` random real documents ``r_m`` from their own
nearest neighbour (``h`` ~ N(0, I_M)): what makes a real document differ from its closest
neighbour, in every layer at once, so siblings of one seed do not come out as near duplicates. The draws of a document depend only on ``(seed, i // BLOCK)``: any chunking of ``0..N``
gives the same documents as one call. Memory per call: ``n x layers x hidden`` float32, never N.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from adaretrieve.sizes import Size

BLOCK = 1024  # documents per random stream: chunk boundaries never change a document

Mapper = Callable[[dict[int, np.ndarray]], dict[Size, np.ndarray]]


def nearest_neighbours(x: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    """[n, k] row ids of each row's ``k`` nearest other rows of ``x`` [n, d] by cosine, best first."""
    import faiss

    u = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float32)
    ix = faiss.IndexFlatIP(u.shape[1])
    ix.add(u)
    out = np.empty((len(u), k), dtype=np.int64)
    for a in range(0, len(u), block):
        _, nb = ix.search(u[a:a + block], k + 1)
        for r, row in enumerate(nb):  # drop the row itself (first unless a duplicate ties it)
            me = a + r
            out[me] = [j for j in row if j != me][:k]
    return out


@dataclass
class NeighbourMix:
    """The generator, fitted on real layer states ``states`` {layer: [n_real, hidden] float32}.

    ``neighbours`` [n_real, k]: each real document's nearest real documents by the full-size layer.
    ``toward``: the largest step toward the neighbour mixture (0: none, 1: all the way);
    ``noise``: the scale of the noise along the neighbour differences; ``borrow``: the scale of the
    borrowed real residuals; ``seed``: the random stream.
    """

    states: dict[int, np.ndarray]
    neighbours: np.ndarray
    toward: float = 0.5
    noise: float = 0.5
    borrow: float = 0.0
    seed: int = 0

    M = 4  # real residuals borrowed per document

    @classmethod
    def fit(cls, states: Mapping[int, np.ndarray], full_layer: int, k: int = 10, toward: float = 0.5,
            noise: float = 0.5, borrow: float = 0.0, seed: int = 0) -> NeighbourMix:
        """Find every real document's ``k`` neighbours by layer ``full_layer``'s state (cosine)."""
        st = {int(L): np.ascontiguousarray(v, dtype=np.float32) for L, v in states.items()}
        n = {len(v) for v in st.values()}
        if len(n) != 1:
            raise ValueError(f"every layer needs the same documents, got row counts {sorted(n)}")
        if k < 1 or k >= n.pop():
            raise ValueError(f"k={k} neighbours needs more than k real documents")
        return cls(st, nearest_neighbours(st[full_layer], k), toward, noise, borrow, seed)

    @property
    def layers(self) -> list[int]:
        return sorted(self.states)

    @property
    def k(self) -> int:
        return int(self.neighbours.shape[1])

    def draws(self, block: int) -> tuple[np.ndarray, ...]:
        """The recipe (see ``recipe``) of the documents ``block*BLOCK .. +BLOCK``."""
        rng = np.random.default_rng([self.seed, block])
        n_real, k = self.neighbours.shape
        seeds = rng.integers(0, n_real, BLOCK)
        a = rng.dirichlet(np.ones(k), BLOCK)
        t = rng.uniform(0.0, self.toward, BLOCK)
        g = rng.standard_normal((BLOCK, k))
        r = rng.integers(0, n_real, (BLOCK, self.M))
        h = rng.standard_normal((BLOCK, self.M))
        c = t[:, None] * a + self.noise * g / np.sqrt(k)
        return seeds, c.astype(np.float32), r, (self.borrow * h / np.sqrt(self.M)).astype(np.float32)

    def recipe(self, start: int, n: int) -> tuple[np.ndarray, ...]:
        """Documents ``start .. start+n``: (seeds [n], neighbour weights c [n, k], borrowed real
        documents r [n, M], their residuals' weights [n, M])."""
        if start < 0 or n < 0:
            raise ValueError(f"documents {start}..{start + n}: start and count must be >= 0")
        if n == 0:
            return (np.zeros(0, dtype=np.int64), np.zeros((0, self.k), dtype=np.float32),
                    np.zeros((0, self.M), dtype=np.int64), np.zeros((0, self.M), dtype=np.float32))
        parts = []
        for b in range(start // BLOCK, (start + n - 1) // BLOCK + 1):
            lo, hi = max(start, b * BLOCK) - b * BLOCK, min(start + n, (b + 1) * BLOCK) - b * BLOCK
            parts.append([p[lo:hi] for p in self.draws(b)])
        return tuple(np.concatenate(p) for p in zip(*parts))

    def layer_states(self, start: int, n: int) -> dict[int, np.ndarray]:
        """{layer: [n, hidden] float32}: the generated states of documents ``start .. start+n``."""
        seeds, c, r, w = self.recipe(start, n)
        nb, rn = self.neighbours[seeds], self.neighbours[r, 0]  # [n, k], [n, M]
        out = {}
        for L, x in self.states.items():  # one [n, hidden] gather per term: einsum over [n, k, hidden] is 30x slower
            v = x[seeds] * (1.0 - c.sum(1, dtype=np.float32))[:, None]
            for j in range(self.k):
                v += c[:, j:j + 1] * x[nb[:, j]]
            if self.borrow:
                for m in range(self.M):
                    v += w[:, m:m + 1] * (x[r[:, m]] - x[rn[:, m]])
            out[L] = v
        return out

    def vectors(self, start: int, n: int, to_sizes: Mapper) -> dict[Size, np.ndarray]:
        """{size: [n, dim] float32} of documents ``start .. start+n``: ``to_sizes`` of their layer states."""
        return to_sizes(self.layer_states(start, n))


def adaptor_mapper(adaptor, sizes: list[Size], normalize: bool = True, batch: int = 4096) -> Mapper:
    """``to_sizes`` for ``NeighbourMix.vectors``: layer L's map by ``adaptor`` (an
    ``adaretrieve.modeling.adaptor.Adaptor``, or None) of the raw states, or the raw state where the
    layer has no map, cut to each size's dim and renormalised (the encoder's path for raw states)."""
    from adaretrieve.sizes import truncate

    def to_sizes(raw: dict[int, np.ndarray]) -> dict[Size, np.ndarray]:
        out = {}
        for L in sorted({s.layer for s in sizes}):
            if adaptor is not None and adaptor.has(L):
                import torch

                with torch.inference_mode():
                    n = len(raw[L])
                    v = np.concatenate([adaptor(L, {i: torch.from_numpy(np.ascontiguousarray(raw[i][a:a + batch]))
                                                    for i in adaptor.inputs(L)}).numpy() for a in range(0, n, batch)])
            else:
                v = raw[L]
            for s in sizes:
                if s.layer == L:
                    out[s] = truncate(v, s.dim, normalize)
        return out

    return to_sizes
