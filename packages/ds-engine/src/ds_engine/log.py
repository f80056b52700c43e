"""The ``ds_engine`` logger: INFO to stdout with a ``[deepspeed]`` prefix, as DeepSpeed users expect;
``log_dist``/``print_dist`` for messages from chosen ranks."""

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


def _dist_message(message: str, ranks: list[int] | None) -> str | None:
    """``"[Rank r] message"`` when this rank should log it (no process group, ``ranks`` holds -1 or r)."""
    import ds_comm

    if not ds_comm.is_initialized():
        return f"[Rank -1] {message}"
    rank = ds_comm.get_rank()
    if ranks and (ranks[0] == -1 or rank in set(ranks)):
        return f"[Rank {rank}] {message}"
    return None


def log_dist(message: str, ranks: list[int] | None = None, level: int = logging.INFO) -> None:
    """Log ``message`` on the listed ranks (``[-1]``: every rank; none listed: only without a process group)."""
    text = _dist_message(message, ranks)
    if text is not None:
        get_logger().log(level, text)


def print_dist(message: str, ranks: list[int] | None = None) -> None:
    """Like :func:`log_dist`, but printed whatever the log level."""
    text = _dist_message(message, ranks)
    if text is not None:
        print(text)
