"""Test setup for ds-kernels: where the Triton kernels run, and the ``cuda`` marker.

Without a GPU, the Triton kernels run on CPU tensors through Triton's interpreter: this conftest
sets ``TRITON_INTERPRET=1`` before anything imports triton (Triton reads it when the kernels are
defined, on ds_kernels' first Triton step). With a GPU, the variable is left alone, the kernels
compile natively, and the ``cuda``-marked variants of the same tests run (``pytest -m cuda``).
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU with native Triton (TRITON_INTERPRET unset)")
    for item in items:
        if "cuda" in item.keywords and (not HAS_CUDA or INTERPRETED):
            item.add_marker(skip_gpu)
