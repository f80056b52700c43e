"""What torch this process runs, in the shape of DeepSpeed's ``git_version_info.torch_info``."""

from __future__ import annotations

from typing import Any


def _major_minor(version: str | None) -> str:
    if not version:
        return "0.0"
    parts = version.split("+")[0].split(".")
    return ".".join(parts[:2])


def torch_info() -> dict[str, Any]:
    """``{"version", "bf16_support", "cuda_version", "nccl_version", "hip_version"}``: versions as
    ``"major.minor"`` strings, ``"0.0"`` for a runtime torch was not built with."""
    import torch

    nccl = "0.0"
    if torch.cuda.is_available() and hasattr(torch.cuda, "nccl"):
        try:
            found = torch.cuda.nccl.version()
            nccl = ".".join(str(v) for v in found[:2]) if isinstance(found, tuple) else str(found)
        except (RuntimeError, AttributeError):
            pass
    from ds_accel.registry import get_accelerator

    return {
        "version": _major_minor(torch.__version__),
        "bf16_support": bool(get_accelerator().is_bf16_supported()),
        "cuda_version": _major_minor(torch.version.cuda),
        "nccl_version": nccl,
        "hip_version": _major_minor(getattr(torch.version, "hip", None)),
    }
