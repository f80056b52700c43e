"""Skip marks shared by the ds-kernels tests (conftest.py decides whether the interpreter is on)."""

import os

import pytest

from ds_kernels import triton_available

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: Triton kernels on CPU tensors: needs triton (the ``[triton]`` extra) and its interpreter, which
#: conftest.py turns on when there is no GPU.
needs_interpreter = pytest.mark.skipif(
    not (INTERPRETED and triton_available()),
    reason="needs triton and TRITON_INTERPRET=1 (on by default without a GPU)",
)
