"""The accelerator methods clients call, on a real CUDA device (the `cuda` nox session runs these)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_client_methods():
    from ds_accel.accelerators.cuda import CUDAAccelerator

    acc = CUDAAccelerator()
    t = acc.LongTensor([1, 2])
    assert t.device.type == "cuda" and t.dtype == torch.int64 and acc.on_accelerator(t)
    assert acc.BFloat16Tensor([1.0]).dtype == torch.bfloat16
    acc.range_push("step")
    acc.range_pop()
    ran = []
    acc.lazy_call(lambda: ran.append(True))
    torch.cuda.init()
    assert ran == [True]
    stream = acc.Stream()
    with acc.stream(stream):
        start, end = acc.Event(enable_timing=True), acc.Event(enable_timing=True)
        start.record()
        torch.ones(1024, device="cuda").sum()
        end.record()
    end.synchronize()
    assert start.elapsed_time(end) >= 0.0 and acc.current_stream() is not None
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    assert acc.max_memory_reserved() >= acc.memory_reserved() >= block.numel()
    assert acc.default_generator(0) is torch.cuda.default_generators[0]
    assert acc.is_triton_supported() == (importlib.util.find_spec("triton") is not None)
