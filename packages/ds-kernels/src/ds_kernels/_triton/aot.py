"""Compile the kernels for an NVIDIA GPU on a machine that has none (ahead of time).

Triton's NVIDIA backend generates PTX and runs ``ptxas`` without a device. That serves two ends: the
code-generation test (the interpreter that runs the numerical tests never compiles, so only this
catches a kernel that the real compiler rejects or that loses its 16-byte accesses), and the
build-time benchmark, which sets this compile against the reference FusedAdam's nvcc build on the
same processor.

:data:`VARIANTS` is one specialization of each kernel family in the shapes the optimizers launch:
fp32 and mixed precision, flat buffer and tensor list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import triton
import triton.language as tl

from ds_kernels._triton import adam, lamb, lion

__all__ = ["VARIANTS", "Variant", "compile_variant", "nvidia_backend_available"]


@dataclass(frozen=True)
class Variant:
    """One kernel specialization: pointer and integer argument types, and the compile-time constants."""

    kernel: Any
    pointers: dict[str, str]
    ints: dict[str, str]
    constexprs: dict[str, Any]


_FLAT = {n: "*fp32" for n in ("p_ptr", "m_ptr", "v_ptr", "flag_ptr", "step_ptr", "scale_ptr")}
_TABLE = {
    "table_ptr": "*i64",
    "chunk_ptr": "*i32",
    "flag_ptr": "*fp32",
    "step_ptr": "*fp32",
    "scale_ptr": "*fp32",
    "norms_ptr": "*fp32",
    "coeff_ptr": "*fp32",
}
_ADAM = dict(ADAM_W=True, BIAS_CORRECTION=True, STEP_ON_DEVICE=False, SCALE_ON_DEVICE=False)
_F32, _BF16, _F16 = tl.float32, tl.bfloat16, tl.float16

VARIANTS: dict[str, Variant] = {
    # FusedAdam's fp32 step over a list of tensors: the first kernel a typical user compiles
    "adam_multi_fp32": Variant(
        adam.adam_multi_kernel,
        _TABLE,
        {},
        dict(
            P_DT=_F32,
            G_DT=_F32,
            M_DT=_F32,
            V_DT=_F32,
            O_DT=_F32,
            BLOCK=2048,
            ALIGNED=True,
            HAS_LOWP=False,
            HAS_FLAG=False,
            **_ADAM,
        ),
    ),
    "adam_multi_mixed": Variant(
        adam.adam_multi_kernel,
        _TABLE,
        {},
        dict(
            P_DT=_F32,
            G_DT=_F16,
            M_DT=_F32,
            V_DT=_F32,
            O_DT=_F16,
            BLOCK=2048,
            ALIGNED=True,
            HAS_LOWP=True,
            HAS_FLAG=True,
            **_ADAM,
        ),
    ),
    "adam_flat_fp32": Variant(
        adam.adam_flat_kernel,
        {**_FLAT, "g_ptr": "*fp32", "o_ptr": "*fp32"},
        {"n": "i64"},
        dict(BLOCK=2048, HAS_LOWP=False, HAS_FLAG=False, **_ADAM),
    ),
    "adam_flat_mixed": Variant(
        adam.adam_flat_kernel,
        {**_FLAT, "g_ptr": "*bf16", "o_ptr": "*bf16"},
        {"n": "i64"},
        dict(BLOCK=2048, HAS_LOWP=True, HAS_FLAG=True, **{**_ADAM, "STEP_ON_DEVICE": True}),
    ),
    "lion_flat": Variant(
        lion.lion_flat_kernel,
        {**_FLAT, "g_ptr": "*fp32", "o_ptr": "*fp32"},
        {"n": "i32"},
        dict(BLOCK=2048, SCALE_ON_DEVICE=False, HAS_LOWP=False, HAS_FLAG=False),
    ),
    "lion_multi_mixed": Variant(
        lion.lion_multi_kernel,
        _TABLE,
        {},
        dict(
            P_DT=_F32,
            G_DT=_BF16,
            M_DT=_F32,
            O_DT=_BF16,
            BLOCK=2048,
            ALIGNED=True,
            SCALE_ON_DEVICE=True,
            HAS_LOWP=True,
            HAS_FLAG=True,
        ),
    ),
    "lamb_norms": Variant(
        lamb.lamb_norms_kernel,
        _TABLE,
        {},
        dict(
            P_DT=_F32,
            G_DT=_F32,
            M_DT=_F32,
            V_DT=_F32,
            BLOCK=2048,
            ALIGNED=True,
            EPS_INSIDE_SQRT=False,
            SCALE_ON_DEVICE=False,
            HAS_FLAG=True,
        ),
    ),
    "lamb_apply": Variant(
        lamb.lamb_apply_kernel,
        _TABLE,
        {},
        dict(
            P_DT=_F32,
            G_DT=_F32,
            M_DT=_F32,
            V_DT=_F32,
            O_DT=_BF16,
            BLOCK=2048,
            ALIGNED=True,
            EPS_INSIDE_SQRT=True,
            BIAS_CORRECTION=True,
            STEP_ON_DEVICE=True,
            SCALE_ON_DEVICE=True,
            HAS_LOWP=True,
            HAS_FLAG=True,
        ),
    ),
}


def nvidia_backend_available() -> bool:
    """Whether this Triton build can compile for NVIDIA GPUs (its backend and ``ptxas`` are installed)."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:
        return False
    return True


def compile_variant(name: str, *, arch: int = 90, num_warps: int = 8) -> Any:
    """Compile :data:`VARIANTS` ``[name]`` for compute capability ``arch`` (90: H100/H200); returns
    Triton's compiled kernel (``.asm["ptx"]``, ``.asm["cubin"]``). Needs no GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    variant = VARIANTS[name]
    names = list(variant.kernel.arg_names)
    signature = {}
    for arg in names:
        if arg in variant.constexprs:
            signature[arg] = "constexpr"
        else:
            signature[arg] = variant.pointers.get(arg) or variant.ints.get(arg) or "fp32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, arg in enumerate(names) if arg in variant.pointers}
    source = ASTSource(fn=variant.kernel, signature=signature, constexprs=variant.constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
