"""ds_kernels: fused optimizer steps at the memory-bandwidth limit, compiled by Triton, with CPU paths.

Importing this package compiles nothing and does not import triton: the Triton kernels are
imported, and compiled, the first time a step takes the Triton backend, and each compilation is
logged on the ``ds_kernels`` logger and kept in :func:`compile_records`.

Functional steps (what ZeRO calls): :func:`adamw_step_flat` / :func:`adamw_step_multi`,
:func:`lion_step_flat` / :func:`lion_step_multi`, :func:`lamb_step_flat` / :func:`lamb_step_multi`.
Optimizers with DeepSpeed's signatures: :class:`FusedAdam`, :class:`DeepSpeedCPUAdam`,
:class:`FusedLamb`, :class:`FusedLion`, :class:`DeepSpeedCPULion`, :class:`DeepSpeedCPUAdagrad`.
"""

from ._version import __version__
from .backend import UnsupportedKernelInput, interpreter_active, triton_available
from .compile_log import CompileRecord, clear_compile_records, compile_records
from .functional import (
    adamw_step_flat,
    adamw_step_multi,
    lamb_step_flat,
    lamb_step_multi,
    lion_step_flat,
    lion_step_multi,
)
from .optim import (
    DeepSpeedCPUAdagrad,
    DeepSpeedCPUAdam,
    DeepSpeedCPULion,
    FusedAdam,
    FusedLamb,
    FusedLion,
)
from .policy import DEFAULT_POLICY, KernelPolicy

__all__ = [
    "DEFAULT_POLICY",
    "CompileRecord",
    "DeepSpeedCPUAdagrad",
    "DeepSpeedCPUAdam",
    "DeepSpeedCPULion",
    "FusedAdam",
    "FusedLamb",
    "FusedLion",
    "KernelPolicy",
    "UnsupportedKernelInput",
    "__version__",
    "adamw_step_flat",
    "adamw_step_multi",
    "clear_compile_records",
    "compile_records",
    "interpreter_active",
    "lamb_step_flat",
    "lamb_step_multi",
    "lion_step_flat",
    "lion_step_multi",
    "triton_available",
]
