"""Lion in Triton: one flat buffer, or many tensors in one launch.

Per element, in float32:

    g = grad / grad_scale
    c = beta1 * m + (1 - beta1) * g
    p = p * (1 - lr * weight_decay) - lr * sign(c)
    m = beta2 * m + (1 - beta2) * g

``sign(0) == 0``, as in the Lion paper and ``torch.sign``: a zero interpolation leaves the weight
where decay puts it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..compile_log import timed_launch
from ..hyper import LionHyper, Precision
from ..policy import KernelPolicy
from ..tensor_lists import chunk_map, group_rows, pointer_table
from .common import load_f32, nonfinite_count, raise_flag, read_inv_scale, read_skip, store_as, table_pointer
from .launch import check_dtypes, device_guard, device_scalars, group_tl_dtypes


@triton.jit
def _lion_tile(
    p_ptr,
    g_ptr,
    m_ptr,
    o_ptr,
    flag_ptr,
    offs,
    n,
    skip,
    lr,
    beta1,
    beta2,
    weight_decay,
    inv_scale,
    MASKED: tl.constexpr,
    HAS_LOWP: tl.constexpr,
    HAS_FLAG: tl.constexpr,
):
    mask = offs < n
    g = load_f32(g_ptr, offs, mask, MASKED)
    p = load_f32(p_ptr, offs, mask, MASKED)
    m = load_f32(m_ptr, offs, mask, MASKED)
    write = skip == 0
    if HAS_FLAG:
        bad = nonfinite_count(g)
        write = write & (bad == 0)
    g = g * inv_scale
    c = beta1 * m + (1.0 - beta1) * g
    sign = tl.where(c > 0, 1.0, 0.0) - tl.where(c < 0, 1.0, 0.0)
    p = p * (1.0 - lr * weight_decay) - lr * sign
    m = beta2 * m + (1.0 - beta2) * g
    if write:
        store_as(p_ptr, offs, p, mask, MASKED)
        store_as(m_ptr, offs, m, mask, MASKED)
        if HAS_LOWP:
            store_as(o_ptr, offs, p, mask, MASKED)
    if HAS_FLAG:
        raise_flag(flag_ptr, bad)


@triton.jit
def lion_flat_kernel(
    p_ptr,
    g_ptr,
    m_ptr,
    o_ptr,
    flag_ptr,
    scale_ptr,
    n,
    lr,
    beta1,
    beta2,
    weight_decay,
    inv_scale,
    BLOCK: tl.constexpr,
    SCALE_ON_DEVICE: tl.constexpr,
    HAS_LOWP: tl.constexpr,
    HAS_FLAG: tl.constexpr,
):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    skip = read_skip(flag_ptr, HAS_FLAG)
    inv_scale = read_inv_scale(scale_ptr, inv_scale, SCALE_ON_DEVICE)
    if start + BLOCK <= n:
        _lion_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            o_ptr,
            flag_ptr,
            offs,
            n,
            skip,
            lr,
            beta1,
            beta2,
            weight_decay,
            inv_scale,
            False,
            HAS_LOWP,
            HAS_FLAG,
        )
    else:
        _lion_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            o_ptr,
            flag_ptr,
            offs,
            n,
            skip,
            lr,
            beta1,
            beta2,
            weight_decay,
            inv_scale,
            True,
            HAS_LOWP,
            HAS_FLAG,
        )


@triton.jit
def lion_multi_kernel(
    table_ptr,
    chunk_ptr,
    flag_ptr,
    scale_ptr,
    lr,
    beta1,
    beta2,
    weight_decay,
    inv_scale,
    P_DT: tl.constexpr,
    G_DT: tl.constexpr,
    M_DT: tl.constexpr,
    O_DT: tl.constexpr,
    BLOCK: tl.constexpr,
    ALIGNED: tl.constexpr,
    SCALE_ON_DEVICE: tl.constexpr,
    HAS_LOWP: tl.constexpr,
    HAS_FLAG: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    tensor = tl.load(chunk_ptr + 2 * pid).to(tl.int64)
    start = tl.load(chunk_ptr + 2 * pid + 1).to(tl.int64) * BLOCK
    row = table_ptr + tensor * 5
    p_ptr = table_pointer(row, 0, P_DT, ALIGNED)
    g_ptr = table_pointer(row, 1, G_DT, ALIGNED)
    m_ptr = table_pointer(row, 2, M_DT, ALIGNED)
    o_ptr = p_ptr
    if HAS_LOWP:
        o_ptr = table_pointer(row, 3, O_DT, ALIGNED)
    n = tl.load(row + 4)
    offs = start + tl.arange(0, BLOCK)
    skip = read_skip(flag_ptr, HAS_FLAG)
    inv_scale = read_inv_scale(scale_ptr, inv_scale, SCALE_ON_DEVICE)
    if start + BLOCK <= n:
        _lion_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            o_ptr,
            flag_ptr,
            offs,
            n,
            skip,
            lr,
            beta1,
            beta2,
            weight_decay,
            inv_scale,
            False,
            HAS_LOWP,
            HAS_FLAG,
        )
    else:
        _lion_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            o_ptr,
            flag_ptr,
            offs,
            n,
            skip,
            lr,
            beta1,
            beta2,
            weight_decay,
            inv_scale,
            True,
            HAS_LOWP,
            HAS_FLAG,
        )


def _scalar_args(hyper: LionHyper, inv_scale: float) -> tuple:
    return hyper.lr, hyper.beta1, hyper.beta2, hyper.weight_decay, inv_scale


_ROLES = ("params", "grads", "exp_avgs", "out_lowp")


def lion_flat(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    out_lowp: torch.Tensor | None,
    *,
    hyper: LionHyper,
    precision: Precision,
    policy: KernelPolicy,
    op: str,
) -> None:
    """One launch over a flat buffer (inputs already checked by the caller)."""
    check_dtypes(op, {"params": param, "grads": grad, "exp_avgs": exp_avg, "out_lowp": out_lowp})
    n = param.numel()
    if n == 0:
        return
    device = param.device
    ds = device_scalars(op, step=1, precision=precision, device=device, dummy=param)
    name = f"lion_flat[{param.dtype},{grad.dtype},{exp_avg.dtype},{None if out_lowp is None else out_lowp.dtype}]"
    with device_guard(device):
        timed_launch(
            lion_flat_kernel,
            (triton.cdiv(n, policy.block),),
            param,
            grad,
            exp_avg,
            param if out_lowp is None else out_lowp,
            ds.flag,
            ds.scale,
            n,
            *_scalar_args(hyper, ds.host_inv_scale),
            name=name,
            BLOCK=policy.block,
            SCALE_ON_DEVICE=ds.scale_on_device,
            HAS_LOWP=out_lowp is not None,
            HAS_FLAG=ds.has_flag,
            num_warps=policy.num_warps,
        )


def lion_multi(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    out_lowp: Sequence[torch.Tensor] | None,
    *,
    hyper: LionHyper,
    precision: Precision,
    policy: KernelPolicy,
    op: str,
) -> None:
    """One launch per (device, dtype signature) group over all the tensors of that group."""
    columns = (params, grads, exp_avgs, out_lowp)
    # Check every group's dtypes before launching any, so a bad tensor leaves nothing half-stepped.
    plans = [(group, group_tl_dtypes(op, _ROLES, group)) for group in group_rows(columns)]
    for group, dts in plans:
        device = group.device
        ds = device_scalars(op, step=1, precision=precision, device=device, dummy=params[group.rows[0]])
        table, aligned = pointer_table(columns, group.rows, device)
        chunks = chunk_map([params[i].numel() for i in group.rows], policy.block, device)
        name = "lion_multi[" + ",".join(str(dt) for dt in group.dtypes) + "]"
        with device_guard(device):
            timed_launch(
                lion_multi_kernel,
                (chunks.shape[0],),
                table,
                chunks,
                ds.flag,
                ds.scale,
                *_scalar_args(hyper, ds.host_inv_scale),
                name=name,
                P_DT=dts[0],
                G_DT=dts[1],
                M_DT=dts[2],
                O_DT=dts[3] if dts[3] is not None else dts[0],
                BLOCK=policy.block,
                ALIGNED=aligned,
                SCALE_ON_DEVICE=ds.scale_on_device,
                HAS_LOWP=out_lowp is not None,
                HAS_FLAG=ds.has_flag,
                num_warps=policy.num_warps,
            )
