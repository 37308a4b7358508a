"""adaretrieve: one Matryoshka embedding model, many sizes, two-stage retrieval.

The top-level package imports no torch, so searchers and evaluators load fast.
"""

__version__ = "0.1.0"

from adaretrieve.errors import AdaError
from adaretrieve.sizes import Size, parse_size, parse_sizes

__all__ = ["AdaError", "IndexReader", "Retriever", "Size", "load_index_encoder", "parse_size", "parse_sizes", "__version__"]


def __getattr__(name: str):
    # loaded on first use: `import adaretrieve` stays free of torch and faiss
    if name in ("Retriever", "load_index_encoder"):
        from adaretrieve import retriever

        return getattr(retriever, name)
    if name == "IndexReader":
        from adaretrieve.search import IndexReader

        return IndexReader
    raise AttributeError(f"module 'adaretrieve' has no attribute {name!r}")
