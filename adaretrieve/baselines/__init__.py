"""Baselines a user would otherwise reach for: BM25 through pyserini (Lucene)."""
