"""The torch-free probe: no torch import, visible-device arithmetic, and the DS_ACCELERATOR override."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ds_accel import probe


def test_importing_probe_and_package_does_not_import_torch():
    code = "import sys, ds_accel, ds_accel.probe; ds_accel.probe.local_device_count(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("env_value", "physical", "expected"),
    [
        (None, 4, 4),
        ("0,1", 4, 2),
        ("", 4, 0),
        ("-1", 4, 0),
        ("0,1,2,3,4,5", 4, 4),  # more ids than devices: never more than exist
        ("2", 0, 1),  # no way to count physical devices: trust the variable
    ],
)
def test_count_visible(env_value, physical, expected):
    assert probe._count_visible(env_value, physical) == expected


def test_ds_accelerator_override_is_reported(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert probe.detect_accelerator_name() == "cpu"
    monkeypatch.setenv("DS_ACCELERATOR", "hpu")
    assert probe.detect_accelerator_name() == "hpu"


def test_cpu_count_is_numa_nodes(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr(probe, "_nvidia_count", lambda: 0)
    monkeypatch.setattr(probe, "_rocm_count", lambda: 0)
    assert probe.detect_accelerator_name() in {"cpu", "mps"}
    assert probe.local_device_count("cpu") == probe._numa_node_count() >= 1


def test_cuda_count_honours_visible_devices(monkeypatch):
    # No GPU on this machine: the driver's device count is patched, the variable handling is real.
    monkeypatch.setattr(probe, "_nvidia_count", lambda: 8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert probe.local_device_count("cuda") == 2
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert probe.local_device_count("cuda") == 8
    assert probe.visible_devices_env_name("cuda") == "CUDA_VISIBLE_DEVICES"
    assert probe.visible_devices_env_name("npu") == "ASCEND_RT_VISIBLE_DEVICES"


def test_every_registered_accelerator_has_one_visible_devices_entry():
    # One table (probe.VISIBLE_DEVICES_ENV) serves the launcher and the accelerator classes: a kind added to
    # the registry without an entry there would launch with no device restriction.
    import importlib

    from ds_accel import registry

    for name in registry.available_names():
        kind = name.split(".")[0]
        assert kind in probe.VISIBLE_DEVICES_ENV, name
        module, class_name = registry._REGISTRY[name]
        cls = getattr(importlib.import_module(module), class_name)
        expected = (probe.VISIBLE_DEVICES_ENV[kind],) if probe.VISIBLE_DEVICES_ENV[kind] else ()
        assert tuple(cls._visible_devices_envs) == expected, name
