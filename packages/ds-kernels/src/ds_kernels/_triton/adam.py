"""Adam/AdamW in Triton: one flat buffer, or many tensors in one launch.

Per element, in float32 (DeepSpeed's ``adam_w_mode``; ``bc1``/``bc2`` are the bias corrections):

    g  = grad / grad_scale                       (+ weight_decay * p when adam_w_mode is False)
    m  = beta1 * m + (1 - beta1) * g
    v  = beta2 * v + (1 - beta2) * g * g
    p  = p * (1 - lr * weight_decay)             (only when adam_w_mode is True)
    p  = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

Bytes per element: fp32 everything reads 16 and writes 12; the mixed-precision variant (fp32
master and states, 16-bit gradient, 16-bit parameter copy written) reads 14 and writes 14.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..compile_log import timed_launch
from ..hyper import AdamHyper, Precision, Scalar, adam_host_scalars
from ..policy import KernelPolicy
from ..tensor_lists import chunk_map, group_rows, pointer_table
from .common import (
    load_f32,
    nonfinite_count,
    one_minus_pow,
    raise_flag,
    read_inv_scale,
    read_skip,
    store_as,
    table_pointer,
)
from .launch import check_dtypes, device_guard, device_scalars, group_tl_dtypes, ln_beta


@triton.jit
def _adam_tile(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    o_ptr,
    flag_ptr,
    offs,
    n,
    skip,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    step_size,
    inv_sqrt_bc2,
    inv_scale,
    MASKED: tl.constexpr,
    ADAM_W: tl.constexpr,
    HAS_LOWP: tl.constexpr,
    HAS_FLAG: tl.constexpr,
):
    mask = offs < n
    g = load_f32(g_ptr, offs, mask, MASKED)
    p = load_f32(p_ptr, offs, mask, MASKED)
    m = load_f32(m_ptr, offs, mask, MASKED)
    v = load_f32(v_ptr, offs, mask, MASKED)
    write = skip == 0
    if HAS_FLAG:
        bad = nonfinite_count(g)
        write = write & (bad == 0)
    g = g * inv_scale
    if not ADAM_W:
        g = g + weight_decay * p
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * (g * g)
    denom = tl.sqrt_rn(v) * inv_sqrt_bc2 + eps
    if ADAM_W:
        p = p * (1.0 - lr * weight_decay)
    p = p - step_size * tl.div_rn(m, denom)
    if write:
        store_as(p_ptr, offs, p, mask, MASKED)
        store_as(m_ptr, offs, m, mask, MASKED)
        store_as(v_ptr, offs, v, mask, MASKED)
        if HAS_LOWP:
            store_as(o_ptr, offs, p, mask, MASKED)
    if HAS_FLAG:
        raise_flag(flag_ptr, bad)


@triton.jit
def _adam_step_scalars(
    step_ptr,
    lr,
    ln_b1,
    ln_b2,
    step_size,
    inv_sqrt_bc2,
    STEP_ON_DEVICE: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
):
    if STEP_ON_DEVICE and BIAS_CORRECTION:
        step = tl.load(step_ptr).to(tl.float32)
        step_size = lr / one_minus_pow(step, ln_b1)
        inv_sqrt_bc2 = 1.0 / tl.sqrt_rn(one_minus_pow(step, ln_b2))
    return step_size, inv_sqrt_bc2


@triton.jit
def adam_flat_kernel(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    o_ptr,
    flag_ptr,
    step_ptr,
    scale_ptr,
    n,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    step_size,
    inv_sqrt_bc2,
    inv_scale,
    ln_b1,
    ln_b2,
    BLOCK: tl.constexpr,
    ADAM_W: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    STEP_ON_DEVICE: tl.constexpr,
    SCALE_ON_DEVICE: tl.constexpr,
    HAS_LOWP: tl.constexpr,
    HAS_FLAG: tl.constexpr,
):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    skip = read_skip(flag_ptr, HAS_FLAG)
    step_size, inv_sqrt_bc2 = _adam_step_scalars(
        step_ptr, lr, ln_b1, ln_b2, step_size, inv_sqrt_bc2, STEP_ON_DEVICE, BIAS_CORRECTION
    )
    inv_scale = read_inv_scale(scale_ptr, inv_scale, SCALE_ON_DEVICE)
    if start + BLOCK <= n:
        _adam_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            v_ptr,
            o_ptr,
            flag_ptr,
            offs,
            n,
            skip,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step_size,
            inv_sqrt_bc2,
            inv_scale,
            False,
            ADAM_W,
            HAS_LOWP,
            HAS_FLAG,
        )
    else:
        _adam_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            v_ptr,
            o_ptr,
            flag_ptr,
            offs,
            n,
            skip,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step_size,
            inv_sqrt_bc2,
            inv_scale,
            True,
            ADAM_W,
            HAS_LOWP,
            HAS_FLAG,
        )


@triton.jit
def adam_multi_kernel(
    table_ptr,
    chunk_ptr,
    flag_ptr,
    step_ptr,
    scale_ptr,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    step_size,
    inv_sqrt_bc2,
    inv_scale,
    ln_b1,
    ln_b2,
    P_DT: tl.constexpr,
    G_DT: tl.constexpr,
    M_DT: tl.constexpr,
    V_DT: tl.constexpr,
    O_DT: tl.constexpr,
    BLOCK: tl.constexpr,
    ALIGNED: tl.constexpr,
    ADAM_W: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    STEP_ON_DEVICE: tl.constexpr,
    SCALE_ON_DEVICE: tl.constexpr,
    HAS_LOWP: tl.constexpr,
    HAS_FLAG: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    tensor = tl.load(chunk_ptr + 2 * pid).to(tl.int64)
    start = tl.load(chunk_ptr + 2 * pid + 1).to(tl.int64) * BLOCK
    row = table_ptr + tensor * 6
    p_ptr = table_pointer(row, 0, P_DT, ALIGNED)
    g_ptr = table_pointer(row, 1, G_DT, ALIGNED)
    m_ptr = table_pointer(row, 2, M_DT, ALIGNED)
    v_ptr = table_pointer(row, 3, V_DT, ALIGNED)
    o_ptr = p_ptr
    if HAS_LOWP:
        o_ptr = table_pointer(row, 4, O_DT, ALIGNED)
    n = tl.load(row + 5)
    offs = start + tl.arange(0, BLOCK)
    skip = read_skip(flag_ptr, HAS_FLAG)
    step_size, inv_sqrt_bc2 = _adam_step_scalars(
        step_ptr, lr, ln_b1, ln_b2, step_size, inv_sqrt_bc2, STEP_ON_DEVICE, BIAS_CORRECTION
    )
    inv_scale = read_inv_scale(scale_ptr, inv_scale, SCALE_ON_DEVICE)
    if start + BLOCK <= n:
        _adam_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            v_ptr,
            o_ptr,
            flag_ptr,
            offs,
            n,
            skip,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step_size,
            inv_sqrt_bc2,
            inv_scale,
            False,
            ADAM_W,
            HAS_LOWP,
            HAS_FLAG,
        )
    else:
        _adam_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            v_ptr,
            o_ptr,
            flag_ptr,
            offs,
            n,
            skip,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step_size,
            inv_sqrt_bc2,
            inv_scale,
            True,
            ADAM_W,
            HAS_LOWP,
            HAS_FLAG,
        )


_ROLES = ("params", "grads", "exp_avgs", "exp_avg_sqs", "out_lowp")


def _scalar_args(hyper: AdamHyper, host_step: float, inv_scale: float, step_on_device: bool) -> tuple:
    step_size, inv_sqrt_bc2 = (hyper.lr, 1.0) if step_on_device else adam_host_scalars(hyper, host_step)
    return (
        hyper.lr,
        hyper.beta1,
        hyper.beta2,
        hyper.eps,
        hyper.weight_decay,
        step_size,
        inv_sqrt_bc2,
        inv_scale,
        ln_beta(hyper.beta1),
        ln_beta(hyper.beta2),
    )


def adam_flat(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    out_lowp: torch.Tensor | None,
    *,
    hyper: AdamHyper,
    step: Scalar,
    precision: Precision,
    policy: KernelPolicy,
    op: str,
) -> None:
    """One launch over a flat buffer (inputs already checked by the caller)."""
    check_dtypes(
        op,
        {
            "params": param,
            "grads": grad,
            "exp_avgs": exp_avg,
            "exp_avg_sqs": exp_avg_sq,
            "out_lowp": out_lowp,
        },
    )
    n = param.numel()
    if n == 0:
        return
    device = param.device
    ds = device_scalars(op, step=step, precision=precision, device=device, dummy=param)
    scalars = _scalar_args(hyper, ds.host_step, ds.host_inv_scale, ds.step_on_device)
    grid = (triton.cdiv(n, policy.block),)
    name = (
        f"adam_flat[{param.dtype},{grad.dtype},{exp_avg.dtype},{exp_avg_sq.dtype},"
        f"{None if out_lowp is None else out_lowp.dtype}]"
    )
    with device_guard(device):
        timed_launch(
            adam_flat_kernel,
            grid,
            param,
            grad,
            exp_avg,
            exp_avg_sq,
            param if out_lowp is None else out_lowp,
            ds.flag,
            ds.step,
            ds.scale,
            n,
            *scalars,
            name=name,
            BLOCK=policy.block,
            ADAM_W=hyper.adam_w_mode,
            BIAS_CORRECTION=hyper.bias_correction,
            STEP_ON_DEVICE=ds.step_on_device,
            SCALE_ON_DEVICE=ds.scale_on_device,
            HAS_LOWP=out_lowp is not None,
            HAS_FLAG=ds.has_flag,
            num_warps=policy.num_warps,
        )


def adam_multi(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    out_lowp: Sequence[torch.Tensor] | None,
    *,
    hyper: AdamHyper,
    step: Scalar,
    precision: Precision,
    policy: KernelPolicy,
    op: str,
) -> None:
    """One launch per (device, dtype signature) group over all the tensors of that group."""
    columns = (params, grads, exp_avgs, exp_avg_sqs, out_lowp)
    # Check every group's dtypes before launching any, so a bad tensor leaves nothing half-stepped.
    plans = [(group, group_tl_dtypes(op, _ROLES, group)) for group in group_rows(columns)]
    for group, dts in plans:
        device = group.device
        ds = device_scalars(op, step=step, precision=precision, device=device, dummy=params[group.rows[0]])
        scalars = _scalar_args(hyper, ds.host_step, ds.host_inv_scale, ds.step_on_device)
        table, aligned = pointer_table(columns, group.rows, device)
        chunks = chunk_map([params[i].numel() for i in group.rows], policy.block, device)
        name = "adam_multi[" + ",".join(str(dt) for dt in group.dtypes) + "]"
        with device_guard(device):
            timed_launch(
                adam_multi_kernel,
                (chunks.shape[0],),
                table,
                chunks,
                ds.flag,
                ds.step,
                ds.scale,
                *scalars,
                name=name,
                P_DT=dts[0],
                G_DT=dts[1],
                M_DT=dts[2],
                V_DT=dts[3],
                O_DT=dts[4] if dts[4] is not None else dts[0],
                BLOCK=policy.block,
                ALIGNED=aligned,
                ADAM_W=hyper.adam_w_mode,
                BIAS_CORRECTION=hyper.bias_correction,
                STEP_ON_DEVICE=ds.step_on_device,
                SCALE_ON_DEVICE=ds.scale_on_device,
                HAS_LOWP=out_lowp is not None,
                HAS_FLAG=ds.has_flag,
                num_warps=policy.num_warps,
            )
