"""``deepspeed.ops.lamb``: ``FusedLamb`` (an alias of ds_kernels')."""

from ds_kernels import FusedLamb

__all__ = ["FusedLamb"]
