"""The `adaretrieve` command: a thin skin over the library. Nothing imports this package."""
