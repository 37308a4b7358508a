"""adaretrieve: one Matryoshka embedding model, many sizes, two-stage retrieval.

The top-level package imports no torch, so searchers and evaluators load fast.
"""

from adaretrieve._version import __version__
from adaretrieve.errors import AdaError
from adaretrieve.sizes import Size, parse_size, parse_sizes

__all__ = ["AdaError", "Encoder", "IndexReader", "Retriever", "Size", "build_index", "export_size", "load_index_encoder",
           "parse_size", "parse_sizes", "__version__"]


def __getattr__(name: str):
    # loaded on first use: `import adaretrieve` stays free of torch and faiss
    if name in ("Retriever", "load_index_encoder"):
        from adaretrieve import retriever

        return getattr(retriever, name)
    if name == "Encoder":
        from adaretrieve.modeling import Encoder

        return Encoder
    if name == "build_index":
        from adaretrieve.index.build import build_index

        return build_index
    if name == "export_size":
        from adaretrieve.modeling.export import export_size

        return export_size
    if name == "IndexReader":
        from adaretrieve.search import IndexReader

        return IndexReader
    raise AttributeError(f"module 'adaretrieve' has no attribute {name!r}")
