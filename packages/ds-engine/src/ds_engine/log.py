"""The ``ds_engine`` logger: INFO to stdout with a ``[deepspeed]`` prefix, as DeepSpeed users expect."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "ds_engine"


def get_logger(level: str | int | None = None) -> logging.Logger:
    """The engine's logger, given a stdout handler once (unless the application configured one)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[deepspeed] [%(levelname)s] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
    if level is not None:
        logger.setLevel(level.upper() if isinstance(level, str) else level)
    return logger
