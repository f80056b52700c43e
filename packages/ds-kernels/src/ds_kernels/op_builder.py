"""DeepSpeed's op builders, answered truthfully for an installation with no compile step.

DeepSpeed JIT-compiles each op (``CPUAdamBuilder().load()`` runs nvcc/g++ the first time). Here an op
either has a Python/Triton implementation in this project or does not exist at all, so a builder:

* ``is_compatible()``: True exactly when the implementation is present and usable on this machine;
* ``load()``: returns the implementing module (e.g. :mod:`ds_kernels.optim.adam` for ``cpu_adam``,
  which holds ``DeepSpeedCPUAdam``), or raises :class:`OpNotAvailableError` naming the op;
* ``builder()`` / ``jit_load()``: there is nothing to build, so they are ``load()`` and an error.

Clients reach these through ``deepspeed.ops.op_builder`` and ``get_accelerator().get_op_builder(name)``
(:mod:`ds_accel.op_builders` names this module). Note: [no torch at import] this module imports no
torch itself, so listing builders (``ALL_OPS``) costs nothing until one is loaded.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class OpNotAvailableError(ImportError):
    """The op has no implementation in this installation (and there is nothing to compile)."""


class OpBuilder:
    """One DeepSpeed op: its name and, when this project has it, the module that implements it."""

    #: DeepSpeed's op name (``ALL_OPS`` key, ``ds_report`` row).
    NAME: str = ""
    #: The module implementing the op; None where this project does not provide it.
    IMPLEMENTATION: str | None = None
    #: Why the op is absent (shown by ``load()`` and ``ds_report``-style listings).
    MISSING_REASON: str = "this op is not part of this installation"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.NAME

    def absolute_name(self) -> str:
        """The import path of the op's implementation (DeepSpeed: ``deepspeed.ops.<op>.<op>_op``)."""
        return self.IMPLEMENTATION or f"deepspeed.ops.{self.name}"

    def is_compatible(self, verbose: bool = False) -> bool:
        """Whether ``load()`` would succeed here (no compiler is ever needed)."""
        return self.IMPLEMENTATION is not None

    def load(self, verbose: bool = True) -> ModuleType:
        """The implementing module; :class:`OpNotAvailableError` naming the op when there is none."""
        if self.IMPLEMENTATION is None:
            raise OpNotAvailableError(
                f"DeepSpeed op '{self.name}' ({type(self).__name__}) is not available: {self.MISSING_REASON}. "
                "This installation has no compile step; see docs/api-surface.md for what is provided."
            )
        return importlib.import_module(self.IMPLEMENTATION)

    def jit_load(self, verbose: bool = True) -> ModuleType:
        """Same as :meth:`load`: nothing is compiled."""
        return self.load(verbose)

    def builder(self) -> None:
        """DeepSpeed returns a setuptools extension here; there is no extension to build."""
        raise OpNotAvailableError(
            f"op '{self.name}' has no C++/CUDA extension to build: it is pure Python/Triton"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, compatible={self.is_compatible()})"


class CPUAdamBuilder(OpBuilder):
    """``DeepSpeedCPUAdam`` (torch's fused CPU AdamW)."""

    NAME = "cpu_adam"
    IMPLEMENTATION = "ds_kernels.optim.adam"


class FusedAdamBuilder(OpBuilder):
    """``FusedAdam`` (Triton on GPUs, torch's fused kernels elsewhere)."""

    NAME = "fused_adam"
    IMPLEMENTATION = "ds_kernels.optim.adam"


class FusedLambBuilder(OpBuilder):
    """``FusedLamb``."""

    NAME = "fused_lamb"
    IMPLEMENTATION = "ds_kernels.optim.lamb"


class CPUAdagradBuilder(OpBuilder):
    """``DeepSpeedCPUAdagrad``."""

    NAME = "cpu_adagrad"
    IMPLEMENTATION = "ds_kernels.optim.adagrad"


class CPULionBuilder(OpBuilder):
    """``DeepSpeedCPULion``."""

    NAME = "cpu_lion"
    IMPLEMENTATION = "ds_kernels.optim.lion"


class FusedLionBuilder(OpBuilder):
    """``FusedLion``."""

    NAME = "fused_lion"
    IMPLEMENTATION = "ds_kernels.optim.lion"


class AsyncIOBuilder(OpBuilder):
    """NVMe I/O for ZeRO-Infinity and DeepNVMe clients: a thread pool of O_DIRECT preads/pwrites
    (:mod:`ds_kernels.aio`), no libaio to compile."""

    NAME = "async_io"
    IMPLEMENTATION = "ds_kernels.aio"


class InferenceBuilder(OpBuilder):
    """DeepSpeed-Inference's fused transformer kernels."""

    NAME = "transformer_inference"
    MISSING_REASON = "DeepSpeed-Inference kernels are not implemented (training only)"


class TransformerBuilder(OpBuilder):
    """DeepSpeed's fused training transformer layer (``DeepSpeedTransformerLayer``)."""

    NAME = "transformer"
    MISSING_REASON = "the fused DeepSpeedTransformerLayer kernels are not implemented"


class QuantizerBuilder(OpBuilder):
    """DeepSpeed's quantization kernels (ZeRO++ quantized weights/gradients, MoQ)."""

    NAME = "quantizer"
    MISSING_REASON = "quantization kernels (ZeRO++ qwZ/qgZ, MoQ) are not implemented"


class SparseAttnBuilder(OpBuilder):
    """Block-sparse attention (Triton 1.x in DeepSpeed)."""

    NAME = "sparse_attn"
    MISSING_REASON = "block-sparse attention is not implemented"


#: Every builder, in DeepSpeed's report order.
BUILDERS: tuple[type[OpBuilder], ...] = (
    CPUAdamBuilder,
    CPUAdagradBuilder,
    CPULionBuilder,
    FusedAdamBuilder,
    FusedLambBuilder,
    FusedLionBuilder,
    AsyncIOBuilder,
    InferenceBuilder,
    TransformerBuilder,
    QuantizerBuilder,
    SparseAttnBuilder,
)

#: DeepSpeed's ``op_builder.ALL_OPS``: op name -> builder instance.
ALL_OPS: dict[str, OpBuilder] = {cls.NAME: cls() for cls in BUILDERS}


def installed_ops() -> dict[str, bool]:
    """Op name -> whether it is installed (DeepSpeed's ``git_version_info.installed_ops``)."""
    return {name: op.is_compatible() for name, op in ALL_OPS.items()}


def compatible_ops() -> dict[str, bool]:
    """Op name -> whether it can run here (DeepSpeed's ``git_version_info.compatible_ops``). With no
    compile step an op is compatible exactly when it is installed."""
    return installed_ops()


__all__ = [
    "ALL_OPS",
    "BUILDERS",
    "OpBuilder",
    "OpNotAvailableError",
    "compatible_ops",
    "installed_ops",
    *(cls.__name__ for cls in BUILDERS),
]
