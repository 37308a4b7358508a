"""adaretrieve: one Matryoshka embedding model, many sizes, two-stage retrieval.

The top-level package imports no torch, so searchers and evaluators load fast.
"""

__version__ = "0.1.0"

from adaretrieve.errors import AdaError
from adaretrieve.sizes import Size, parse_size, parse_sizes

__all__ = ["AdaError", "Size", "parse_size", "parse_sizes", "__version__"]
