"""The CPU accelerator: device naming, counts under a launcher, memory as resident set size."""

from __future__ import annotations

import pytest
import torch

from ds_accel.accelerators.cpu import CPUAccelerator


def test_names_and_devices():
    cpu = CPUAccelerator()
    assert cpu.device_name() == "cpu" and cpu.device_name(1) == "cpu"
    assert cpu.device(0) == torch.device("cpu")
    assert cpu.is_synchronized_device() and cpu.is_bf16_supported()
    assert torch.bfloat16 in cpu.supported_dtypes()
    assert cpu.on_accelerator(torch.zeros(1))


def test_device_count_follows_launcher_local_size(monkeypatch):
    monkeypatch.setenv("LOCAL_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    cpu = CPUAccelerator()
    assert cpu.device_count() == 3
    assert cpu.current_device() == 2


def test_memory_tracks_a_large_allocation():
    cpu = CPUAccelerator()
    cpu.reset_peak_memory_stats()
    before = cpu.memory_allocated()
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched so it is resident
    assert cpu.memory_allocated() - before >= 48 * 2**20
    assert cpu.max_memory_allocated() >= cpu.memory_allocated()
    del big


def test_rng_round_trip():
    cpu = CPUAccelerator()
    cpu.manual_seed(1234)
    state = cpu.get_rng_state()
    a = torch.rand(3)
    cpu.set_rng_state(state)
    assert torch.equal(a, torch.rand(3))


def test_typed_tensor_constructors_bind_dtype_and_device():
    cpu = CPUAccelerator()
    for name, dtype in [
        ("LongTensor", torch.int64),
        ("FloatTensor", torch.float32),
        ("HalfTensor", torch.float16),
        ("BFloat16Tensor", torch.bfloat16),
        ("IntTensor", torch.int32),
        ("ByteTensor", torch.uint8),
        ("DoubleTensor", torch.float64),
    ]:
        t = getattr(cpu, name)([1, 2, 3])
        assert t.dtype == dtype and t.device == torch.device("cpu") and t.tolist() == [1, 2, 3]


def test_reserved_memory_is_the_resident_set():
    cpu = CPUAccelerator()
    before = cpu.memory_reserved()
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched so it is resident
    assert cpu.memory_reserved() - before >= 48 * 2**20
    assert cpu.max_memory_reserved() >= cpu.memory_reserved()
    del big


def test_streams_events_and_ranges_are_cpu_stand_ins():
    cpu = CPUAccelerator()
    stream = cpu.Stream()
    with cpu.stream(stream):
        event = cpu.Event()
        event.record()
    event.synchronize()
    assert event.query()
    assert isinstance(cpu.current_stream(), cpu.Stream)
    assert cpu.range_push("step") is None and cpu.range_pop() is None
    assert cpu.lazy_call(lambda: 7) == 7
    assert cpu.default_generator(0) is torch.default_generator


def test_seeding_and_dtypes():
    cpu = CPUAccelerator()
    cpu.manual_seed_all(5)
    a = torch.rand(2)
    cpu.manual_seed(5)
    assert torch.equal(a, torch.rand(2))
    assert cpu.is_fp16_supported() and set(cpu.supported_dtypes()) >= {torch.float32, torch.bfloat16}
    cpu.empty_cache()


def test_op_builders_are_looked_up_by_name():
    cpu = CPUAccelerator()
    assert cpu.op_builder_dir() == "ds_kernels.op_builder"
    builder = cpu.get_op_builder("CPUAdamBuilder")
    if builder is None:  # ds-kernels is not a dependency of ds-accel: without it there are no builders
        pytest.importorskip("ds_kernels")
    assert builder.__name__ == "CPUAdamBuilder" and cpu.create_op_builder("CPUAdamBuilder").is_compatible()
    assert cpu.get_op_builder("NoSuchBuilder") is None and cpu.create_op_builder("nonsense") is None


def test_current_accelerator_is_supported():
    from ds_accel import is_current_accelerator_supported, reset_accelerator, set_accelerator

    class OutOfTree(CPUAccelerator):
        _name = "plugin"

    try:
        set_accelerator(CPUAccelerator())
        assert is_current_accelerator_supported()
        set_accelerator(OutOfTree())
        assert not is_current_accelerator_supported()
    finally:
        reset_accelerator()
