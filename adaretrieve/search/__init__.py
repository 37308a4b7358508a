"""Search over an index directory with numpy and FAISS only (no torch).

A *candidate* is a row number into the index (int64, -1 for "no candidate"); row i is the i-th
line of docids.txt. Searchers take query vectors [n_queries, dim] and return (scores, rows),
both [n_queries, top], best first.
"""

from adaretrieve.search.reader import IndexReader
from adaretrieve.search.twostage import FunnelSearcher, SearcherCache, TwoStageSearcher, exact_search, rerank_candidates

__all__ = ["FunnelSearcher", "IndexReader", "SearcherCache", "TwoStageSearcher", "exact_search", "rerank_candidates"]
