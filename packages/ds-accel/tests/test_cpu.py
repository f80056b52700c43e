"""The CPU accelerator: device naming, counts under a launcher, memory as resident set size."""

from __future__ import annotations

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
