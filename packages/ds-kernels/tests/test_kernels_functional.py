"""ds_kernels.functional: every fused step against a float64 PyTorch reference.

Each test runs on every backend this machine has: the Triton kernels through the interpreter on
CPU tensors (the normal suite), the Triton kernels natively on a CUDA GPU (``-m cuda``), and
torch's fused kernels (CPU, and CUDA when present). Sizes are odd and small so that a 64-element
block leaves partial tails, and single-element and empty tensors appear throughout.
"""

import pytest
import torch
from _kernels_marks import needs_interpreter
from _kernels_ref import adam_ref, close, close_step, lamb_ref, lion_ref

import ds_kernels as K

SMALL = K.KernelPolicy(block=64, num_warps=4)

BACKENDS = [
    pytest.param(("cpu", "triton"), id="triton-interpret", marks=needs_interpreter),
    pytest.param(("cuda", "triton"), id="triton-cuda", marks=pytest.mark.cuda),
    pytest.param(("cpu", "torch"), id="torch-cpu"),
    pytest.param(("cuda", "torch"), id="torch-cuda", marks=pytest.mark.cuda),
]
ADAM = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.fixture(params=BACKENDS)
def where(request):
    """(device, backend) of the step under test."""
    return request.param


def _kw(where):
    device, backend = where
    return dict(backend=backend, policy=SMALL)


def _adam_inputs(n, device, *, gdtype=torch.float32, pdtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(n, generator=gen).to(pdtype)
    g = torch.randn(n, generator=gen).to(gdtype)
    m = (0.1 * torch.randn(n, generator=gen)).to(pdtype)
    v = (0.01 * torch.rand(n, generator=gen) + 1e-4).to(pdtype)
    return [t.to(device) for t in (p, g, m, v)]


@pytest.mark.parametrize("n", [1, 7, 129, 1000])
@pytest.mark.parametrize("adam_w_mode", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_flat_matches_reference(where, n, adam_w_mode, weight_decay):
    p, g, m, v = _adam_inputs(n, where[0])
    hyper = dict(ADAM, weight_decay=weight_decay, adam_w_mode=adam_w_mode)
    rp, rm, rv = adam_ref(p, g, m, v, step=3, **hyper)
    p0 = p.clone()
    K.adamw_step_flat(p, g, m, v, step=3, **hyper, **_kw(where))
    close_step(p, p0, rp)
    close(m, rm)
    close(v, rv)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_adam_multiple_steps_follow_reference(where, bias_correction):
    p, g, m, v = _adam_inputs(200, where[0], seed=1)
    rp, rm, rv = p.clone(), m.clone(), v.clone()
    for step in range(1, 5):
        g = torch.randn_like(g)
        hyper = dict(ADAM, weight_decay=0.05, bias_correction=bias_correction)
        rp, rm, rv = (t.float() for t in adam_ref(rp, g, rm, rv, step=step, **hyper))
        K.adamw_step_flat(p, g, m, v, step=step, **hyper, **_kw(where))
    close(p, rp, rtol=1e-4, atol=1e-5)
    close(m, rm)
    close(v, rv)


def test_adam_empty_tensors_are_untouched_noops(where):
    p, g, m, v = _adam_inputs(0, where[0])
    K.adamw_step_flat(p, g, m, v, step=1, weight_decay=0.0, **ADAM, **_kw(where))
    K.adamw_step_multi([], [], [], [], step=1, weight_decay=0.0, **ADAM, **_kw(where))
    assert p.numel() == 0


def test_adam_multi_many_tensors_of_mixed_sizes_and_dtypes(where):
    sizes = [0, 1, 5, 63, 64, 65, 130, 7, 1, 300, 2, 33] * 2
    rows = [
        _adam_inputs(n, where[0], seed=i, pdtype=torch.bfloat16 if i % 5 == 0 else torch.float32)
        for i, n in enumerate(sizes)
    ]
    refs = [adam_ref(*row, step=2, weight_decay=0.1, **ADAM) for row in rows]
    starts = [row[0].clone() for row in rows]
    K.adamw_step_multi(*(list(col) for col in zip(*rows)), step=2, weight_decay=0.1, **ADAM, **_kw(where))
    for (p, _, m, v), (rp, rm, rv), p0 in zip(rows, refs, starts):
        if p.dtype == torch.float32:
            close_step(p, p0, rp)
        close(p, rp)
        close(m, rm)
        close(v, rv)


@pytest.mark.parametrize("gdtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("multi", [False, True])
def test_adam_mixed_precision_one_pass(where, gdtype, multi):
    scale = 1024.0
    p, g, m, v = _adam_inputs(257, where[0], gdtype=gdtype, seed=2)
    g = (g.float() * scale).to(gdtype)
    out = torch.full_like(g, float("nan"))
    rp, rm, rv = adam_ref(p, g, m, v, step=5, weight_decay=0.01, grad_scale=scale, **ADAM)
    flag = torch.zeros(1, device=p.device)
    kw = dict(step=5, weight_decay=0.01, grad_scale=scale, found_inf=flag, **ADAM, **_kw(where))
    p0 = p.clone()
    if multi:
        K.adamw_step_multi([p], [g], [m], [v], out_lowp=[out], **kw)
    else:
        K.adamw_step_flat(p, g, m, v, out_lowp=out, **kw)
    close_step(p, p0, rp)
    close(m, rm)
    close(v, rv)
    assert torch.equal(out, p.to(gdtype)), "the 16-bit copy is the updated fp32 parameter, rounded"
    assert flag.item() == 0.0


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # inf - inf in the skipped block
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_adam_nonfinite_gradient_raises_flag_and_never_poisons(where, bad):
    p, g, m, v = _adam_inputs(300, where[0], gdtype=torch.float16, seed=3)
    g[130] = bad
    before = [t.clone() for t in (p, m, v)]
    out = torch.zeros_like(g)
    flag = torch.zeros(1, device=p.device)
    K.adamw_step_flat(
        p, g, m, v, step=1, weight_decay=0.0, found_inf=flag, out_lowp=out, **ADAM, **_kw(where)
    )
    assert flag.item() == 1.0
    assert torch.isfinite(p).all() and torch.isfinite(m).all() and torch.isfinite(v).all()
    block = slice(128, 192)  # the 64-element block holding the bad gradient is left as it was
    for now, then in zip((p, m, v), before):
        assert torch.equal(now[block], then[block])
    if where[1] == "torch":  # the torch backend checks everything first: nothing moved at all
        for now, then in zip((p, m, v), before):
            assert torch.equal(now, then)


def test_adam_preset_flag_skips_the_whole_step(where):
    p, g, m, v = _adam_inputs(300, where[0], seed=4)
    before = [t.clone() for t in (p, m, v)]
    flag = torch.ones(1, device=p.device)
    K.adamw_step_flat(p, g, m, v, step=1, weight_decay=0.1, found_inf=flag, **ADAM, **_kw(where))
    for now, then in zip((p, m, v), before):
        assert torch.equal(now, then)


def test_adam_step_and_loss_scale_as_device_tensors_match_host_values(where):
    device = where[0]
    a = _adam_inputs(150, device, seed=5)
    b = [t.clone() for t in a]
    K.adamw_step_flat(*a, step=7, grad_scale=8.0, weight_decay=0.1, **ADAM, **_kw(where))
    K.adamw_step_flat(
        *b,
        step=torch.tensor(7.0, device=device),
        grad_scale=torch.tensor([8.0], device=device),
        weight_decay=0.1,
        **ADAM,
        **_kw(where),
    )
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("n", [1, 129])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lion_flat_matches_reference(where, n, weight_decay):
    p, g, m, _ = _adam_inputs(n, where[0], seed=6)
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=weight_decay)
    for _ in range(2):
        rp, rm = lion_ref(p, g, m, **hyper)
        p0 = p.clone()
        K.lion_step_flat(p, g, m, **hyper, **_kw(where))
        close_step(p, p0, rp)
        close(m, rm)


def test_lion_multi_mixed_precision_with_flag(where):
    sizes = [0, 1, 65, 200, 3]
    rows = [_adam_inputs(n, where[0], gdtype=torch.bfloat16, seed=10 + i) for i, n in enumerate(sizes)]
    grads = [(g.float() * 64).to(torch.bfloat16) for _, g, _, _ in rows]
    outs = [torch.empty_like(g) for g in grads]
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.1)
    refs = [lion_ref(p, g, m, grad_scale=64.0, **hyper) for (p, _, m, _), g in zip(rows, grads)]
    flag = torch.zeros(1, device=rows[0][0].device)
    K.lion_step_multi(
        [r[0] for r in rows],
        grads,
        [r[2] for r in rows],
        grad_scale=64.0,
        found_inf=flag,
        out_lowp=outs,
        **hyper,
        **_kw(where),
    )
    assert flag.item() == 0.0
    for (p, _, m, _), out, (rp, rm) in zip(rows, outs, refs):
        close(p, rp)
        close(m, rm)
        assert torch.equal(out, p.to(torch.bfloat16))


LAMB = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6)


@pytest.mark.parametrize("eps_inside_sqrt", [False, True])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_lamb_multi_matches_reference(where, eps_inside_sqrt, bias_correction):
    sizes = [1, 65, 200, 0, 129]
    rows = [_adam_inputs(n, where[0], seed=20 + i) for i, n in enumerate(sizes)]
    hyper = dict(LAMB, weight_decay=0.01, bias_correction=bias_correction, eps_inside_sqrt=eps_inside_sqrt)
    refs = [lamb_ref(*row, step=4, **hyper) for row in rows]
    starts = [row[0].clone() for row in rows]
    coeffs = K.lamb_step_multi(*(list(col) for col in zip(*rows)), step=4, **hyper, **_kw(where))
    for (p, _, m, v), (rp, rm, rv, rc), c, p0 in zip(rows, refs, coeffs, starts):
        close_step(p, p0, rp)
        close(m, rm)
        close(v, rv)
        assert c.item() == pytest.approx(rc, rel=1e-4)


def test_lamb_trust_ratio_is_clamped(where):
    p, g, m, v = _adam_inputs(100, where[0], seed=30)
    p.mul_(1e4)  # ||p|| / ||u|| far above max_coeff
    rp, _, _, rc = lamb_ref(p, g, m, v, step=1, weight_decay=0.0, max_coeff=3.0, **LAMB)
    coeff = K.lamb_step_flat(p, g, m, v, step=1, weight_decay=0.0, max_coeff=3.0, **LAMB, **_kw(where))
    assert rc == 3.0 and coeff.item() == 3.0
    close(p, rp, rtol=1e-5, atol=1e-3)


def test_lamb_mixed_precision_and_all_or_nothing_flag(where):
    rows = [_adam_inputs(n, where[0], gdtype=torch.float16, seed=40 + i) for i, n in enumerate([70, 130])]
    outs = [torch.empty_like(r[1]) for r in rows]
    refs = [lamb_ref(*r, step=2, weight_decay=0.0, grad_scale=4.0, **LAMB) for r in rows]
    flag = torch.zeros(1, device=rows[0][0].device)
    cols = [list(c) for c in zip(*rows)]
    K.lamb_step_multi(
        *cols, step=2, weight_decay=0.0, grad_scale=4.0, found_inf=flag, out_lowp=outs, **LAMB, **_kw(where)
    )
    for r, out, (rp, _, _, _) in zip(rows, outs, refs):
        close(r[0], rp, rtol=1e-4, atol=1e-5)
        assert torch.equal(out, r[0].to(torch.float16))
    assert flag.item() == 0.0
    cols[1][1][69] = float("nan")
    before = [t.clone() for t in cols[0] + cols[2] + cols[3]]
    K.lamb_step_multi(*cols, step=3, weight_decay=0.0, found_inf=flag, **LAMB, **_kw(where))
    assert flag.item() == 1.0
    for now, then in zip(cols[0] + cols[2] + cols[3], before):
        assert torch.equal(now, then), "LAMB's flag is all-or-nothing on every backend"


@pytest.mark.cuda
def test_adam_default_policy_large_flat_and_multi_on_gpu():
    """The default launch shape (16-byte accesses, big blocks) on sizes that fill the GPU."""
    n = 3_000_017
    p, g, m, v = _adam_inputs(n, "cuda", seed=50)
    rp, rm, rv = adam_ref(p, g, m, v, step=10, weight_decay=0.1, **ADAM)
    K.adamw_step_flat(p, g, m, v, step=10, weight_decay=0.1, **ADAM)
    close(p, rp)
    close(v, rv)
    rows = [_adam_inputs(s, "cuda", gdtype=torch.bfloat16, seed=s) for s in (1 << 20, 12345, 2048 * 3 + 1)]
    refs = [adam_ref(*r, step=3, weight_decay=0.0, **ADAM) for r in rows]
    outs = [torch.empty_like(r[1]) for r in rows]
    K.adamw_step_multi(*(list(c) for c in zip(*rows)), step=3, weight_decay=0.0, out_lowp=outs, **ADAM)
    for r, (rp, rm, _), out in zip(rows, refs, outs):
        close(r[0], rp)
        close(r[2], rm)
        assert torch.equal(out, r[0].to(torch.bfloat16))
