"""The meta-package version. Clients gate on it (transformers >= 0.9.3, lightning >= 0.16.0)."""

__version__ = "0.20.0"
