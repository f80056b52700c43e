"""``deepspeed.monitor.utils``: whether each monitor's package is importable."""

from __future__ import annotations

import importlib


def _check(package: str, extra: str) -> None:
    try:
        importlib.import_module(package)
    except ImportError:
        print(f"If you want to use {extra} logging, please `pip install 'ds-engine[{extra}]'` (or {package})")
        raise


def check_tb_availability() -> None:
    """Raise ImportError if ``tensorboard`` is missing."""
    _check("tensorboard", "tensorboard")


def check_wandb_availability() -> None:
    """Raise ImportError if ``wandb`` is missing."""
    _check("wandb", "wandb")


def check_comet_availability() -> None:
    """Raise ImportError if ``comet_ml`` is missing."""
    _check("comet_ml", "comet")
