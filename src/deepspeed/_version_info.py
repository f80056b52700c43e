"""The meta-package version (hatch reads it here). Clients gate on it (transformers >= 0.9.3,
lightning >= 0.16.0); ``deepspeed.version`` and ``deepspeed.__version__`` are this string."""

__version__ = "0.20.0"
