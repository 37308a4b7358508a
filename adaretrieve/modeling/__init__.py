"""Encoder: any Hugging Face encoder -> pooled, truncated vectors for every requested size."""

from adaretrieve.modeling.encoder import Encoder, resolve_model

__all__ = ["Encoder", "resolve_model"]
