"""LAMB in Triton, over many tensors in two launches (DeepSpeed's FusedLamb arithmetic).

Per tensor, in float32:

    g     = grad / grad_scale
    m'    = beta1 * m + (1 - beta1) * g ;  v' = beta2 * v + (1 - beta2) * g * g
    u     = m' / (sqrt(v') + eps)   [or m' / sqrt(v' + eps) with eps_inside_sqrt]  + weight_decay * p
    coeff = clamp(||p|| / ||u||, min_coeff, max_coeff), or 1 when either norm is 0
    p     = p - step_size * coeff * u,   step_size = lr * sqrt(bc2) / bc1  (lr without bias correction)

The trust ratio needs each tensor's two norms before any of its elements moves, so the step is two
launches: the first reads p, g, m, v and adds each block's sums of squares into a per-tensor
``[T, 2]`` buffer (atomics); the second recomputes ``m'``, ``v'``, ``u`` from the unchanged inputs,
and writes p, m, v (and the 16-bit copy). Writing nothing in the first launch costs 4 bytes per
element over writing m and v there, and makes the non-finite flag all-or-nothing for LAMB: the
first launch raises it, the second sees it before writing anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..compile_log import timed_launch
from ..hyper import LambHyper, Precision, Scalar, bias_corrections
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
from .launch import device_guard, device_scalars, group_tl_dtypes, ln_beta


@triton.jit
def _lamb_update(p, g, m, v, beta1, beta2, eps, weight_decay, EPS_INSIDE_SQRT: tl.constexpr):
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * (g * g)
    if EPS_INSIDE_SQRT:
        denom = tl.sqrt_rn(v + eps)
    else:
        denom = tl.sqrt_rn(v) + eps
    return m, v, tl.div_rn(m, denom) + weight_decay * p


@triton.jit
def _lamb_row(
    table_ptr,
    chunk_ptr,
    P_DT: tl.constexpr,
    G_DT: tl.constexpr,
    M_DT: tl.constexpr,
    V_DT: tl.constexpr,
    BLOCK: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    tensor = tl.load(chunk_ptr + 2 * pid).to(tl.int64)
    start = tl.load(chunk_ptr + 2 * pid + 1).to(tl.int64) * BLOCK
    row = table_ptr + tensor * 6
    return (
        tensor,
        start,
        row,
        table_pointer(row, 0, P_DT, ALIGNED),
        table_pointer(row, 1, G_DT, ALIGNED),
        table_pointer(row, 2, M_DT, ALIGNED),
        table_pointer(row, 3, V_DT, ALIGNED),
        tl.load(row + 5),
    )


@triton.jit
def _lamb_norm_tile(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    norms_ptr,
    flag_ptr,
    tensor,
    offs,
    n,
    beta1,
    beta2,
    eps,
    weight_decay,
    inv_scale,
    MASKED: tl.constexpr,
    EPS_INSIDE_SQRT: tl.constexpr,
    HAS_FLAG: tl.constexpr,
):
    mask = offs < n
    g = load_f32(g_ptr, offs, mask, MASKED)
    p = load_f32(p_ptr, offs, mask, MASKED)
    m = load_f32(m_ptr, offs, mask, MASKED)
    v = load_f32(v_ptr, offs, mask, MASKED)
    if HAS_FLAG:
        raise_flag(flag_ptr, nonfinite_count(g))
    m, v, u = _lamb_update(p, g * inv_scale, m, v, beta1, beta2, eps, weight_decay, EPS_INSIDE_SQRT)
    if MASKED:
        u = tl.where(mask, u, 0.0)  # a padded lane's 0 / sqrt(0 + eps) is NaN when eps == 0
    tl.atomic_add(norms_ptr + 2 * tensor, tl.sum(p * p, axis=0))
    tl.atomic_add(norms_ptr + 2 * tensor + 1, tl.sum(u * u, axis=0))


@triton.jit
def lamb_norms_kernel(
    table_ptr,
    chunk_ptr,
    norms_ptr,
    flag_ptr,
    scale_ptr,
    beta1,
    beta2,
    eps,
    weight_decay,
    inv_scale,
    P_DT: tl.constexpr,
    G_DT: tl.constexpr,
    M_DT: tl.constexpr,
    V_DT: tl.constexpr,
    BLOCK: tl.constexpr,
    ALIGNED: tl.constexpr,
    EPS_INSIDE_SQRT: tl.constexpr,
    SCALE_ON_DEVICE: tl.constexpr,
    HAS_FLAG: tl.constexpr,
):
    tensor, start, row, p_ptr, g_ptr, m_ptr, v_ptr, n = _lamb_row(
        table_ptr, chunk_ptr, P_DT, G_DT, M_DT, V_DT, BLOCK, ALIGNED
    )
    offs = start + tl.arange(0, BLOCK)
    inv_scale = read_inv_scale(scale_ptr, inv_scale, SCALE_ON_DEVICE)
    if start + BLOCK <= n:
        _lamb_norm_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            v_ptr,
            norms_ptr,
            flag_ptr,
            tensor,
            offs,
            n,
            beta1,
            beta2,
            eps,
            weight_decay,
            inv_scale,
            False,
            EPS_INSIDE_SQRT,
            HAS_FLAG,
        )
    else:
        _lamb_norm_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            v_ptr,
            norms_ptr,
            flag_ptr,
            tensor,
            offs,
            n,
            beta1,
            beta2,
            eps,
            weight_decay,
            inv_scale,
            True,
            EPS_INSIDE_SQRT,
            HAS_FLAG,
        )


@triton.jit
def _lamb_apply_tile(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    o_ptr,
    offs,
    n,
    write,
    scaled_step,
    beta1,
    beta2,
    eps,
    weight_decay,
    inv_scale,
    MASKED: tl.constexpr,
    EPS_INSIDE_SQRT: tl.constexpr,
    HAS_LOWP: tl.constexpr,
):
    mask = offs < n
    g = load_f32(g_ptr, offs, mask, MASKED)
    p = load_f32(p_ptr, offs, mask, MASKED)
    m = load_f32(m_ptr, offs, mask, MASKED)
    v = load_f32(v_ptr, offs, mask, MASKED)
    m, v, u = _lamb_update(p, g * inv_scale, m, v, beta1, beta2, eps, weight_decay, EPS_INSIDE_SQRT)
    p = p - scaled_step * u
    if write:
        store_as(p_ptr, offs, p, mask, MASKED)
        store_as(m_ptr, offs, m, mask, MASKED)
        store_as(v_ptr, offs, v, mask, MASKED)
        if HAS_LOWP:
            store_as(o_ptr, offs, p, mask, MASKED)


@triton.jit
def lamb_apply_kernel(
    table_ptr,
    chunk_ptr,
    norms_ptr,
    coeff_ptr,
    flag_ptr,
    step_ptr,
    scale_ptr,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    step_size,
    inv_scale,
    ln_b1,
    ln_b2,
    max_coeff,
    min_coeff,
    P_DT: tl.constexpr,
    G_DT: tl.constexpr,
    M_DT: tl.constexpr,
    V_DT: tl.constexpr,
    O_DT: tl.constexpr,
    BLOCK: tl.constexpr,
    ALIGNED: tl.constexpr,
    EPS_INSIDE_SQRT: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    STEP_ON_DEVICE: tl.constexpr,
    SCALE_ON_DEVICE: tl.constexpr,
    HAS_LOWP: tl.constexpr,
    HAS_FLAG: tl.constexpr,
):
    tensor, start, row, p_ptr, g_ptr, m_ptr, v_ptr, n = _lamb_row(
        table_ptr, chunk_ptr, P_DT, G_DT, M_DT, V_DT, BLOCK, ALIGNED
    )
    o_ptr = p_ptr
    if HAS_LOWP:
        o_ptr = table_pointer(row, 4, O_DT, ALIGNED)
    offs = start + tl.arange(0, BLOCK)
    write = read_skip(flag_ptr, HAS_FLAG) == 0
    inv_scale = read_inv_scale(scale_ptr, inv_scale, SCALE_ON_DEVICE)
    if STEP_ON_DEVICE and BIAS_CORRECTION:
        step = tl.load(step_ptr).to(tl.float32)
        step_size = lr * tl.sqrt_rn(one_minus_pow(step, ln_b2)) / one_minus_pow(step, ln_b1)
    w_norm = tl.sqrt_rn(tl.load(norms_ptr + 2 * tensor))
    u_norm = tl.sqrt_rn(tl.load(norms_ptr + 2 * tensor + 1))
    ratio = tl.minimum(tl.maximum(w_norm / u_norm, min_coeff), max_coeff)
    coeff = tl.where((w_norm > 0) & (u_norm > 0), ratio, 1.0)
    if start == 0:
        tl.store(coeff_ptr + tensor, coeff)
    if start + BLOCK <= n:
        _lamb_apply_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            v_ptr,
            o_ptr,
            offs,
            n,
            write,
            step_size * coeff,
            beta1,
            beta2,
            eps,
            weight_decay,
            inv_scale,
            False,
            EPS_INSIDE_SQRT,
            HAS_LOWP,
        )
    else:
        _lamb_apply_tile(
            p_ptr,
            g_ptr,
            m_ptr,
            v_ptr,
            o_ptr,
            offs,
            n,
            write,
            step_size * coeff,
            beta1,
            beta2,
            eps,
            weight_decay,
            inv_scale,
            True,
            EPS_INSIDE_SQRT,
            HAS_LOWP,
        )


_ROLES = ("params", "grads", "exp_avgs", "exp_avg_sqs", "out_lowp")


def lamb_multi(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    out_lowp: Sequence[torch.Tensor] | None,
    *,
    hyper: LambHyper,
    step: Scalar,
    precision: Precision,
    policy: KernelPolicy,
    op: str,
) -> list[torch.Tensor]:
    """Two launches per (device, dtype signature) group; returns each tensor's trust ratio as a
    0-dim tensor on its device (1.0 for empty tensors), without synchronizing."""
    columns = (params, grads, exp_avgs, exp_avg_sqs, out_lowp)
    coeffs: list[torch.Tensor] = [torch.ones((), device=p.device) for p in params]
    # Check every group's dtypes before launching any, so a bad tensor leaves nothing half-stepped.
    plans = [(group, group_tl_dtypes(op, _ROLES, group)) for group in group_rows(columns)]
    for group, dts in plans:
        device = group.device
        ds = device_scalars(op, step=step, precision=precision, device=device, dummy=params[group.rows[0]])
        step_size = hyper.lr
        if not ds.step_on_device:
            bc1, bc2 = bias_corrections(hyper.beta1, hyper.beta2, ds.host_step, hyper.bias_correction)
            step_size = hyper.lr * bc2**0.5 / bc1
        table, aligned = pointer_table(columns, group.rows, device)
        chunks = chunk_map([params[i].numel() for i in group.rows], policy.block, device)
        norms = torch.zeros(len(group.rows), 2, dtype=torch.float32, device=device)
        group_coeffs = torch.empty(len(group.rows), dtype=torch.float32, device=device)
        shared = dict(
            P_DT=dts[0],
            G_DT=dts[1],
            M_DT=dts[2],
            V_DT=dts[3],
            BLOCK=policy.block,
            ALIGNED=aligned,
            EPS_INSIDE_SQRT=hyper.eps_inside_sqrt,
            SCALE_ON_DEVICE=ds.scale_on_device,
            HAS_FLAG=ds.has_flag,
            num_warps=policy.num_warps,
        )
        suffix = "[" + ",".join(str(dt) for dt in group.dtypes) + "]"
        grid = (chunks.shape[0],)
        with device_guard(device):
            timed_launch(
                lamb_norms_kernel,
                grid,
                table,
                chunks,
                norms,
                ds.flag,
                ds.scale,
                hyper.beta1,
                hyper.beta2,
                hyper.eps,
                hyper.weight_decay,
                ds.host_inv_scale,
                name="lamb_norms" + suffix,
                **shared,
            )
            timed_launch(
                lamb_apply_kernel,
                grid,
                table,
                chunks,
                norms,
                group_coeffs,
                ds.flag,
                ds.step,
                ds.scale,
                hyper.lr,
                hyper.beta1,
                hyper.beta2,
                hyper.eps,
                hyper.weight_decay,
                step_size,
                ds.host_inv_scale,
                ln_beta(hyper.beta1),
                ln_beta(hyper.beta2),
                hyper.max_coeff,
                hyper.min_coeff,
                name="lamb_apply" + suffix,
                O_DT=dts[4] if dts[4] is not None else dts[0],
                BIAS_CORRECTION=hyper.bias_correction,
                STEP_ON_DEVICE=ds.step_on_device,
                HAS_LOWP=out_lowp is not None,
                **shared,
            )
        for j, i in enumerate(group.rows):
            coeffs[i] = group_coeffs[j]
    return coeffs
