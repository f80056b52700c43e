"""Accelerators whose runtime is a vendor extension of torch: XPU, HPU, NPU, and Apple's MPS.

Each imports its vendor module only when selected (``TorchDeviceAccelerator.__init__``), so a machine
without that runtime never pays for, or fails on, the import.
"""

from __future__ import annotations

from ds_accel.accelerators.base import TorchDeviceAccelerator
from ds_accel.probe import VISIBLE_DEVICES_ENV  # the one accelerator -> variable table (torch-free)


class XPUAccelerator(TorchDeviceAccelerator):
    """Intel Data Center GPUs through torch's native ``torch.xpu``."""

    _name = "xpu"
    _torch_module = "xpu"
    _visible_devices_envs = (VISIBLE_DEVICES_ENV["xpu"],)

    def __init__(self) -> None:
        super().__init__()
        import torch.distributed as dist

        # torch >= 2.8 ships XCCL; older stacks use oneCCL's "ccl" from its torch bindings.
        has_xccl = getattr(dist, "is_xccl_available", lambda: False)()
        self._communication_backend_name = "xccl" if has_xccl else "ccl"


class HPUAccelerator(TorchDeviceAccelerator):
    """Intel Gaudi through ``habana_frameworks.torch``."""

    _name = "hpu"
    _torch_module = "hpu"
    _vendor_import = "habana_frameworks.torch.hpu"
    _communication_backend_name = "hccl"
    _visible_devices_envs = (VISIBLE_DEVICES_ENV["hpu"],)


class NPUAccelerator(TorchDeviceAccelerator):
    """Huawei Ascend through ``torch_npu``."""

    _name = "npu"
    _torch_module = "npu"
    _vendor_import = "torch_npu"
    _communication_backend_name = "hccl"
    _visible_devices_envs = (VISIBLE_DEVICES_ENV["npu"],)


class MPSAccelerator(TorchDeviceAccelerator):
    """Apple silicon's single GPU; collectives go through gloo on the host."""

    _name = "mps"
    _torch_module = "mps"
    _communication_backend_name = "gloo"

    def device_count(self) -> int:
        return 1 if self.is_available() else 0

    def current_device(self) -> int:
        return 0

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        self._mod.synchronize()

    def memory_allocated(self, device_index: int | None = None) -> int:
        return int(self._mod.current_allocated_memory())

    def max_memory_allocated(self, device_index: int | None = None) -> int:
        return int(self._mod.driver_allocated_memory())
