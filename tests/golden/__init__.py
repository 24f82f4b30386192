"""Golden outputs of the default model (see README.md)."""
