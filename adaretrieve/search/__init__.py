"""Search over an index directory with numpy and FAISS only (no torch).

A *candidate* is a row number into the index (int64, -1 for "no candidate"); row i is the i-th
line of docids.txt. A ``FunnelPlan`` (``search/plan.py``) says what to run; ``funnel`` runs it over
arrays, ``FunnelSearcher`` over a folder index. Both take query vectors ``{size: [n_queries, dim]}``
and return (scores, rows), both [n_queries, top], best first.
"""

from adaretrieve.search.plan import DEFAULT, FunnelPlan, resolve_plan
from adaretrieve.search.reader import IndexReader
from adaretrieve.search.twostage import FunnelSearcher, SearcherCache, exact_search, funnel, rerank_candidates

__all__ = ["DEFAULT", "FunnelPlan", "FunnelSearcher", "IndexReader", "SearcherCache", "exact_search", "funnel",
           "rerank_candidates", "resolve_plan"]
