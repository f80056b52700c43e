"""Accelerator selection: detection, the override, clear errors, and set_accelerator."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import ds_accel
from ds_accel import AcceleratorError, registry
from ds_accel.accelerators.cpu import CPUAccelerator


@pytest.fixture(autouse=True)
def _fresh_choice():
    ds_accel.reset_accelerator()
    yield
    ds_accel.reset_accelerator()


def test_detects_cpu_without_devices(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    accel = ds_accel.get_accelerator()
    assert accel.name == "cpu" and accel._name == "cpu"
    assert accel.communication_backend_name() == "gloo"
    assert ds_accel.get_accelerator() is accel  # one choice per process


def test_unknown_override_names_the_valid_choices(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "tpu")
    with pytest.raises(AcceleratorError, match=r"DS_ACCELERATOR='tpu'.*valid choices: cuda, cpu, xpu"):
        ds_accel.get_accelerator()


@pytest.mark.parametrize(("name", "module"), [("hpu", "habana_frameworks"), ("npu", "torch_npu")])
def test_override_with_missing_runtime_is_clear(monkeypatch, name, module):
    monkeypatch.setenv("DS_ACCELERATOR", name)
    with pytest.raises(AcceleratorError, match=rf"accelerator '{name}' needs {module}.*not installed"):
        ds_accel.get_accelerator()


def test_cuda_override_without_gpu_is_clear(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    with pytest.raises(
        AcceleratorError, match="'cuda' was requested but its runtime reports no usable device"
    ):
        ds_accel.get_accelerator()


def test_vendor_accelerator_imports_its_runtime_only_when_selected(monkeypatch):
    # No Gaudi here: a stand-in `habana_frameworks.torch.hpu` module and `torch.hpu` namespace let
    # the HPU class be exercised; everything it does goes through that namespace.
    fake_hpu = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 8,
        current_device=lambda: 0,
        set_device=lambda i: None,
        synchronize=lambda i=None: None,
    )
    for mod in ("habana_frameworks", "habana_frameworks.torch", "habana_frameworks.torch.hpu"):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    monkeypatch.setattr(torch, "hpu", fake_hpu, raising=False)
    monkeypatch.setenv("DS_ACCELERATOR", "hpu")
    accel = ds_accel.get_accelerator()
    assert accel.name == "hpu"
    assert accel.communication_backend_name() == "hccl"
    assert accel.device_count() == 8
    assert accel.device_name(3) == "hpu:3"
    env: dict[str, str] = {}
    accel.set_visible_devices_envs(env, [0, 2])
    assert env == {"HABANA_VISIBLE_MODULES": "0,2"}


def test_backend_names_per_kind():
    from ds_accel.accelerators.cuda import CUDAAccelerator
    from ds_accel.accelerators.vendors import NPUAccelerator

    assert CUDAAccelerator._communication_backend_name == "nccl"
    assert NPUAccelerator._communication_backend_name == "hccl"
    assert CUDAAccelerator().visible_devices_envs() == ["CUDA_VISIBLE_DEVICES"]


def test_set_accelerator_replaces_and_checks_type():
    cpu = CPUAccelerator()
    ds_accel.set_accelerator(cpu)
    assert ds_accel.get_accelerator() is cpu
    with pytest.raises(TypeError, match="expects an Accelerator"):
        ds_accel.set_accelerator("cuda")  # type: ignore[arg-type]


def test_available_names_match_deepspeed_choices():
    assert set(registry.available_names()) >= {"cuda", "cpu", "xpu", "hpu", "npu", "mps"}
