"""Compile the Triton kernels for an H100 (sm_90) on a machine without a GPU, and report the
global-memory instructions of each variant as JSON. Run as a script with TRITON_INTERPRET unset
(the interpreter replaces the kernels with Python functions); exits 77 when Triton's NVIDIA
backend (ptxas) is not installed."""

import json
import re
import sys


def main() -> int:
    import triton
    import triton.language as tl

    try:
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
        from triton.compiler import ASTSource
    except ImportError:
        return 77
    from ds_kernels._triton import adam, lamb, lion

    f32, bf16, f16 = tl.float32, tl.bfloat16, tl.float16

    def compile_variant(fn, pointers, ints, constexprs):
        names = list(fn.arg_names)
        sig = {}
        for name in names:
            if name in constexprs:
                sig[name] = "constexpr"
            elif name in pointers:
                sig[name] = pointers[name]
            elif name in ints:
                sig[name] = ints[name]
            else:
                sig[name] = "fp32"
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in pointers}
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
        return sorted(set(re.findall(r"(?:ld|st|atom|red)\.global[.\w]*", kernel.asm["ptx"])))

    flat_ptrs = {n: "*fp32" for n in ("p_ptr", "m_ptr", "v_ptr", "flag_ptr", "step_ptr", "scale_ptr")}
    table = {"table_ptr": "*i64", "chunk_ptr": "*i32", "flag_ptr": "*fp32", "step_ptr": "*fp32",
             "scale_ptr": "*fp32", "norms_ptr": "*fp32", "coeff_ptr": "*fp32"}
    adam_flags = dict(ADAM_W=True, BIAS_CORRECTION=True, STEP_ON_DEVICE=False, SCALE_ON_DEVICE=False)
    report = {
        "adam_flat_fp32": compile_variant(
            adam.adam_flat_kernel, {**flat_ptrs, "g_ptr": "*fp32", "o_ptr": "*fp32"}, {"n": "i64"},
            dict(BLOCK=2048, HAS_LOWP=False, HAS_FLAG=False, **adam_flags)),
        "adam_flat_mixed": compile_variant(
            adam.adam_flat_kernel, {**flat_ptrs, "g_ptr": "*bf16", "o_ptr": "*bf16"}, {"n": "i64"},
            dict(BLOCK=2048, HAS_LOWP=True, HAS_FLAG=True, **{**adam_flags, "STEP_ON_DEVICE": True})),
        "adam_multi_fp32": compile_variant(
            adam.adam_multi_kernel, table, {},
            dict(P_DT=f32, G_DT=f32, M_DT=f32, V_DT=f32, O_DT=f32, BLOCK=2048, ALIGNED=True, HAS_LOWP=False,
                 HAS_FLAG=False, **adam_flags)),
        "adam_multi_mixed": compile_variant(
            adam.adam_multi_kernel, table, {},
            dict(P_DT=f32, G_DT=f16, M_DT=f32, V_DT=f32, O_DT=f16, BLOCK=2048, ALIGNED=True, HAS_LOWP=True,
                 HAS_FLAG=True, **adam_flags)),
        "lion_flat": compile_variant(
            lion.lion_flat_kernel, {**flat_ptrs, "g_ptr": "*fp32", "o_ptr": "*fp32"}, {"n": "i32"},
            dict(BLOCK=2048, SCALE_ON_DEVICE=False, HAS_LOWP=False, HAS_FLAG=False)),
        "lion_multi_mixed": compile_variant(
            lion.lion_multi_kernel, table, {},
            dict(P_DT=f32, G_DT=bf16, M_DT=f32, O_DT=bf16, BLOCK=2048, ALIGNED=True, SCALE_ON_DEVICE=True,
                 HAS_LOWP=True, HAS_FLAG=True)),
        "lamb_norms": compile_variant(
            lamb.lamb_norms_kernel, table, {},
            dict(P_DT=f32, G_DT=f32, M_DT=f32, V_DT=f32, BLOCK=2048, ALIGNED=True, EPS_INSIDE_SQRT=False,
                 SCALE_ON_DEVICE=False, HAS_FLAG=True)),
        "lamb_apply": compile_variant(
            lamb.lamb_apply_kernel, table, {},
            dict(P_DT=f32, G_DT=f32, M_DT=f32, V_DT=f32, O_DT=bf16, BLOCK=2048, ALIGNED=True, EPS_INSIDE_SQRT=True,
                 BIAS_CORRECTION=True, STEP_ON_DEVICE=True, SCALE_ON_DEVICE=True, HAS_LOWP=True, HAS_FLAG=True)),
    }
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
