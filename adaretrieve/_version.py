"""The package version, in a module of its own: modules that record it (manifests, model folders,
results) import it from here, not from the package root, whose lazy exports import them back."""

__version__ = "0.1.0"
