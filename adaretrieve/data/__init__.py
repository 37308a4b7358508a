"""Readers for BEIR folders and MS MARCO files: corpora stream, queries and qrels are dicts."""

from adaretrieve.data.pseudo import pseudo_queries
from adaretrieve.data.readers import (
    Doc,
    doc_text,
    iter_corpus,
    read_qrels,
    read_queries,
    resolve_corpus,
    split_query_ids,
    validate_corpus,
)

__all__ = [
    "Doc",
    "doc_text",
    "iter_corpus",
    "pseudo_queries",
    "read_qrels",
    "read_queries",
    "resolve_corpus",
    "split_query_ids",
    "validate_corpus",
]
