"""NVIDIA CUDA, and AMD ROCm through torch's HIP build (which keeps the ``cuda`` device name)."""

from __future__ import annotations

from ds_accel.accelerators.base import TorchDeviceAccelerator
from ds_accel.probe import VISIBLE_DEVICES_ENV  # the one accelerator -> variable table (torch-free)


class CUDAAccelerator(TorchDeviceAccelerator):
    _name = "cuda"
    _torch_module = "cuda"
    _communication_backend_name = "nccl"  # RCCL answers to the same name on ROCm.
    _visible_devices_envs = (VISIBLE_DEVICES_ENV["cuda"],)

    @property
    def is_rocm(self) -> bool:
        """True on torch's HIP (ROCm) build."""
        import torch

        return getattr(torch.version, "hip", None) is not None

    def is_bf16_supported(self) -> bool:
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())

    def __repr__(self) -> str:
        flavour = "rocm" if self.is_rocm else "cuda"
        return f"CUDAAccelerator(runtime={flavour!r}, backend={self._communication_backend_name!r})"
