"""Plain PyTorch references for the fused steps, element-wise in float64, written from the formulas
(Adam/AdamW with DeepSpeed's adam_w_mode, Lion, DeepSpeed's LAMB) and independent of ds_kernels."""

import math

import torch


def _f64(*ts):
    return [t.detach().to(torch.float64).clone() for t in ts]


def adam_ref(
    p,
    g,
    m,
    v,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    step,
    adam_w_mode=True,
    bias_correction=True,
    grad_scale=1.0,
):
    """One Adam(W) step; returns float64 (p, m, v)."""
    p, g, m, v = _f64(p, g, m, v)
    g = g / grad_scale
    if not adam_w_mode:
        g = g + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    bc1 = 1 - beta1**step if bias_correction else 1.0
    bc2 = 1 - beta2**step if bias_correction else 1.0
    m_hat, v_hat = m / bc1, v / bc2
    update = m_hat / (v_hat.sqrt() + eps)
    if adam_w_mode:
        update = update + weight_decay * p
    return p - lr * update, m, v


def lion_ref(p, g, m, *, lr, beta1, beta2, weight_decay, grad_scale=1.0):
    """One Lion step; returns float64 (p, m)."""
    p, g, m = _f64(p, g, m)
    g = g / grad_scale
    c = beta1 * m + (1 - beta1) * g
    p = p * (1 - lr * weight_decay) - lr * torch.sign(c)
    return p, beta2 * m + (1 - beta2) * g


def lamb_ref(
    p,
    g,
    m,
    v,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    step,
    bias_correction=True,
    eps_inside_sqrt=False,
    max_coeff=10.0,
    min_coeff=0.01,
    grad_scale=1.0,
):
    """One DeepSpeed-LAMB step on one tensor; returns float64 (p, m, v, trust_ratio)."""
    p, g, m, v = _f64(p, g, m, v)
    g = g / grad_scale
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    denom = (v + eps).sqrt() if eps_inside_sqrt else v.sqrt() + eps
    update = m / denom + weight_decay * p
    w, u = p.norm().item(), update.norm().item()
    coeff = min(max(w / u, min_coeff), max_coeff) if w > 0 and u > 0 else 1.0
    if bias_correction:
        step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    else:
        step_size = lr
    return p - step_size * coeff * update, m, v, coeff


def close(actual, expected, *, rtol=2e-5, atol=2e-6):
    """Compare a kernel output (any dtype) with a float64 reference at the output dtype's precision."""
    if actual.dtype in (torch.bfloat16, torch.float16):
        expected = expected.to(actual.dtype)
        rtol, atol = (2e-2, 1e-2) if actual.dtype == torch.bfloat16 else (2e-3, 1e-3)
    torch.testing.assert_close(
        actual.to(torch.float64).cpu(), expected.to(torch.float64).cpu(), rtol=rtol, atol=atol
    )


def close_step(new, old, ref_new, *, rtol=1e-4, atol=2e-7):
    """Compare the change a step made (``new - old``) with the reference change: much tighter than
    comparing parameters, whose magnitude would hide an error in a small update."""
    old = old.to(torch.float64).cpu()
    torch.testing.assert_close(
        new.to(torch.float64).cpu() - old, ref_new.to(torch.float64).cpu() - old, rtol=rtol, atol=atol
    )
