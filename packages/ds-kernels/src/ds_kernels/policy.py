"""Launch shape of the Triton kernels, as a small frozen policy object."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_POLICY", "KernelPolicy"]


@dataclass(frozen=True)
class KernelPolicy:
    """How a fused step is cut into Triton programs.

    ``block`` elements per program (a power of two; each program updates one block of one tensor)
    and ``num_warps`` warps per program. The defaults keep 16-byte loads and enough bytes in flight
    to run at memory bandwidth on current GPUs; tests use a small ``block`` so that tiny tensors
    still span several programs and exercise the tail handling.
    """

    block: int = 2048
    num_warps: int = 8

    def __post_init__(self) -> None:
        if self.block < 16 or self.block & (self.block - 1):
            raise ValueError(f"KernelPolicy.block={self.block}; expected a power of two >= 16")
        if self.num_warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"KernelPolicy.num_warps={self.num_warps}; expected a power of two <= 32")


DEFAULT_POLICY = KernelPolicy()
