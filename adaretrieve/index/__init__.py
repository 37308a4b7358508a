"""Index directories: encode a corpus once, write shortlist FAISS indexes, rerank vectors, ids
and a manifest. `format` needs no torch; `build` imports the encoder."""

from adaretrieve.index.format import MANIFEST, Manifest, read_manifest

__all__ = ["MANIFEST", "Manifest", "read_manifest"]
