"""ds_kernels.optim: the DeepSpeed-named optimizers against torch.optim and the references.

Covers DeepSpeed's signatures, training trajectories against ``torch.optim.AdamW`` / ``Adam`` /
``Adagrad`` on every backend, state-dict interchange with ``torch.optim.AdamW`` in both directions,
and the errors DeepSpeed users meet (amsgrad, CPU-only optimizers, legacy step arguments).
"""

import inspect

import pytest
import torch
from _kernels_marks import needs_interpreter
from _kernels_ref import close, lamb_ref, lion_ref

import ds_kernels as K

SMALL = K.KernelPolicy(block=64, num_warps=4)
BACKENDS = [
    pytest.param(("cpu", "triton"), id="triton-interpret", marks=needs_interpreter),
    pytest.param(("cuda", "triton"), id="triton-cuda", marks=pytest.mark.cuda),
    pytest.param(("cpu", "torch"), id="torch-cpu"),
]


@pytest.fixture(params=BACKENDS)
def where(request):
    return request.param


def _model(device, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(13, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1, bias=False)).to(
        device=device, dtype=dtype
    )


def _train(model, opt, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(5, 13, generator=gen).to(device=dev, dtype=dtype)
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()


def _same_params(a, b, **tol):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.detach().float(), q.detach().float(), **tol)


# DeepSpeed 0.19.8's constructor signatures (names and defaults, in order).
DEEPSPEED_SIGNATURES = {
    K.FusedAdam: [
        ("params", inspect._empty),
        ("lr", 1e-3),
        ("bias_correction", True),
        ("betas", (0.9, 0.999)),
        ("eps", 1e-8),
        ("adam_w_mode", True),
        ("weight_decay", 0.0),
        ("amsgrad", False),
        ("set_grad_none", True),
    ],
    K.DeepSpeedCPUAdam: [
        ("model_params", inspect._empty),
        ("lr", 1e-3),
        ("bias_correction", True),
        ("betas", (0.9, 0.999)),
        ("eps", 1e-8),
        ("weight_decay", 0),
        ("amsgrad", False),
        ("adamw_mode", True),
        ("fp32_optimizer_states", True),
    ],
    K.FusedLamb: [
        ("params", inspect._empty),
        ("lr", 1e-3),
        ("bias_correction", True),
        ("betas", (0.9, 0.999)),
        ("eps", 1e-8),
        ("eps_inside_sqrt", False),
        ("weight_decay", 0.0),
        ("max_grad_norm", 0.0),
        ("max_coeff", 10.0),
        ("min_coeff", 0.01),
        ("amsgrad", False),
    ],
    K.FusedLion: [
        ("params", inspect._empty),
        ("lr", 1e-3),
        ("betas", (0.9, 0.999)),
        ("weight_decay", 0.0),
        ("set_grad_none", True),
    ],
    K.DeepSpeedCPULion: [
        ("model_params", inspect._empty),
        ("lr", 1e-3),
        ("betas", (0.9, 0.999)),
        ("weight_decay", 0),
        ("fp32_optimizer_states", True),
    ],
    K.DeepSpeedCPUAdagrad: [
        ("model_params", inspect._empty),
        ("lr", 1e-2),
        ("eps", 1e-10),
        ("weight_decay", 0),
        ("amsgrad", False),
        ("fp32_optimizer_states", True),
    ],
}


@pytest.mark.parametrize("cls", list(DEEPSPEED_SIGNATURES), ids=lambda c: c.__name__)
def test_constructor_signature_matches_deepspeed(cls):
    params = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]
    assert [(p.name, p.default) for p in params] == DEEPSPEED_SIGNATURES[cls]
    assert issubclass(cls, torch.optim.Optimizer)


@pytest.mark.parametrize("adam_w_mode", [True, False])
def test_fused_adam_follows_torch_adam(where, adam_w_mode):
    device, backend = where
    ours, ref = _model(device), _model(device)
    opt = K.FusedAdam(
        ours.parameters(), lr=1e-2, weight_decay=0.1, adam_w_mode=adam_w_mode, backend=backend, policy=SMALL
    )
    ref_cls = torch.optim.AdamW if adam_w_mode else torch.optim.Adam
    _train(ours, opt, 6)
    _train(ref, ref_cls(ref.parameters(), lr=1e-2, weight_decay=0.1, foreach=False), 6)
    _same_params(ours, ref, rtol=1e-5, atol=1e-6)


def test_fused_adam_bf16_params_keep_bf16_states(where):
    device, backend = where
    ours, ref = _model(device, torch.bfloat16), _model(device, torch.bfloat16)
    opt = K.FusedAdam(ours.parameters(), lr=1e-2, backend=backend, policy=SMALL)
    _train(ours, opt, 3)
    _train(ref, torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0, foreach=False), 3)
    _same_params(ours, ref, rtol=2e-2, atol=2e-2)
    state = opt.state[next(ours.parameters())]
    assert state["exp_avg"].dtype == torch.bfloat16 and state["step"].item() == 3.0


@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
def test_state_dict_interchanges_with_torch_adamw(where, direction):
    device, backend = where
    uninterrupted = _model(device)
    _train(uninterrupted, torch.optim.AdamW(uninterrupted.parameters(), lr=1e-2, weight_decay=0.1), 6)

    def ours(m):
        return K.FusedAdam(m.parameters(), lr=1e-2, weight_decay=0.1, backend=backend, policy=SMALL)

    def theirs(m):
        return torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)

    first, second = (theirs, ours) if direction == "torch->ours" else (ours, theirs)
    model = _model(device)
    opt = first(model)
    _train(model, opt, 3)
    saved = opt.state_dict()
    opt2 = second(model)
    opt2.load_state_dict(saved)
    state = opt2.state[next(model.parameters())]
    assert set(state) >= {"step", "exp_avg", "exp_avg_sq"} and state["step"].item() == 3.0
    # continue with batches 4..6 of the stream the uninterrupted run saw
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, 13, generator=gen) for _ in range(6)][3:]
    for x in xs:
        opt2.zero_grad()
        model(x.to(device)).pow(2).mean().backward()
        opt2.step()
    _same_params(model, uninterrupted, rtol=1e-5, atol=1e-6)


def test_load_state_dict_moves_device_steps_to_cpu_and_accepts_int_steps():
    model = _model("cpu")
    fused = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    _train(model, fused, 2)
    opt = K.FusedAdam(model.parameters(), lr=1e-2)
    saved = fused.state_dict()
    for s in saved["state"].values():
        s["step"] = 2  # DeepSpeed's FusedAdam saves plain ints
    opt.load_state_dict(saved)
    for s in opt.state.values():
        assert s["step"].device.type == "cpu" and s["step"].dtype == torch.float32 and s["step"].item() == 2.0
    _train(model, opt, 1)
    assert all(s["step"].item() == 3.0 for s in opt.state.values())


def test_amsgrad_and_legacy_step_arguments_are_refused():
    params = [torch.nn.Parameter(torch.zeros(3))]
    for make in (
        lambda: K.FusedAdam(params, amsgrad=True),
        lambda: K.DeepSpeedCPUAdam(params, amsgrad=True),
        lambda: K.FusedLamb(params, amsgrad=True),
    ):
        with pytest.raises(RuntimeError, match="amsgrad"):
            make()
    with pytest.raises(RuntimeError, match="amsgrad"):
        K.DeepSpeedCPUAdam(params).add_param_group(
            {"params": [torch.nn.Parameter(torch.ones(1))], "amsgrad": True}
        )
    with pytest.raises(RuntimeError, match="scale"):
        K.FusedAdam(params).step(scale=128.0)
    opt = K.FusedAdam(params)
    opt.load_state_dict(
        {"state": {}, "param_groups": [{**opt.param_groups[0], "params": [0], "amsgrad": True}]}
    )
    params[0].grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="amsgrad=True"):
        opt.step()


def test_zero_grad_honours_set_grad_none():
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    K.FusedAdam([p], set_grad_none=False).zero_grad()
    assert p.grad is not None and p.grad.abs().sum() == 0
    K.FusedAdam([p]).zero_grad()
    assert p.grad is None


def test_cpu_adam_matches_torch_and_keeps_fp32_states():
    ours, ref = _model("cpu"), _model("cpu")
    _train(ours, K.DeepSpeedCPUAdam(ours.parameters(), lr=1e-2, weight_decay=0.1), 5)
    _train(ref, torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1), 5)
    _same_params(ours, ref, rtol=1e-5, atol=1e-6)
    ours, ref = _model("cpu"), _model("cpu")
    _train(ours, K.DeepSpeedCPUAdam(ours.parameters(), lr=1e-2, weight_decay=0.1, adamw_mode=False), 5)
    _train(ref, torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=0.1), 5)
    _same_params(ours, ref, rtol=1e-5, atol=1e-6)
    bf16 = _model("cpu", torch.bfloat16)
    opt = K.DeepSpeedCPUAdam(bf16.parameters(), lr=1e-2)
    _train(bf16, opt, 2)
    assert all(s["exp_avg_sq"].dtype == torch.float32 for s in opt.state.values())
    opt = K.DeepSpeedCPUAdam(bf16.parameters(), lr=1e-2, fp32_optimizer_states=False)
    _train(bf16, opt, 1)
    assert all(s["exp_avg"].dtype == torch.bfloat16 for s in opt.state.values())


def test_cpu_adam_without_bias_correction_matches_reference():
    p = torch.nn.Parameter(torch.randn(50))
    start = p.detach().clone()
    opt = K.DeepSpeedCPUAdam([p], lr=1e-2, bias_correction=False, weight_decay=0.0)
    p.grad = torch.randn(50)
    opt.step()
    expected = start - 1e-2 * (0.1 * p.grad) / ((0.001 * p.grad**2).sqrt() + 1e-8)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_cpu_optimizers_refuse_accelerator_params_naming_them():
    p = torch.nn.Parameter(torch.zeros(4, device="meta"))  # stands in for a GPU tensor: this machine has none
    p.grad = torch.zeros(4, device="meta")
    for cls in (K.DeepSpeedCPUAdam, K.DeepSpeedCPULion, K.DeepSpeedCPUAdagrad):
        with pytest.raises(RuntimeError, match=r"param_groups\[0\]\['params'\]\[0\] is on meta"):
            cls([p]).step()


def test_lion_optimizers_follow_reference(where):
    device, backend = where
    p = torch.nn.Parameter(torch.randn(77, device=device))
    q = torch.nn.Parameter(p.detach().clone())
    m = torch.zeros(77, device=device)
    opts = [K.FusedLion([p], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, backend=backend, policy=SMALL)]
    if device == "cpu":
        opts.append(K.DeepSpeedCPULion([q], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1))
    for _ in range(3):
        g = torch.randn(77, device=device)
        rp, m = lion_ref(p.detach(), g, m, lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.1)
        p.grad, q.grad = g.clone(), g.clone()
        for opt in opts:
            opt.step()
        close(p.detach(), rp)
        m = m.float()
    if device == "cpu":
        torch.testing.assert_close(p.detach(), q.detach())


def test_fused_lamb_follows_reference_and_reports_coeffs(where):
    device, backend = where
    params = [torch.nn.Parameter(torch.randn(n, device=device)) for n in (3, 70)]
    opt = K.FusedLamb(params, lr=1e-2, weight_decay=0.01, backend=backend, policy=SMALL)
    states = [(p.detach().clone(), torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    for step in (1, 2):
        grads = [torch.randn_like(p) for p in params]
        refs = [
            lamb_ref(
                s[0], g, s[1], s[2], lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step=step
            )
            for s, g in zip(states, grads)
        ]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for p, r in zip(params, refs):
            close(p.detach(), r[0], rtol=1e-4, atol=1e-5)
        assert opt.get_lamb_coeffs() == pytest.approx([r[3] for r in refs], rel=1e-4)
        states = [tuple(t.float() for t in r[:3]) for r in refs]


def test_fused_lamb_legacy_grads_output_params_scale_and_clipping():
    master = [torch.nn.Parameter(torch.randn(40))]
    start = master[0].detach().clone()
    half = [torch.empty(40, dtype=torch.float16)]
    grad = torch.randn(40)
    opt = K.FusedLamb(master, lr=1e-2, max_grad_norm=1.0)
    scale, norm = 8.0, float(grad.norm()) * 8.0
    opt.step(grads=[(grad * scale).half()], output_params=half, scale=scale, grad_norms=[norm])
    clip = (norm / scale + 1e-6) / 1.0
    expected = lamb_ref(
        start,
        grad.half().float(),
        torch.zeros(40),
        torch.zeros(40),
        lr=1e-2,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        step=1,
        grad_scale=clip,
    )[0]
    close(master[0].detach(), expected, rtol=1e-3, atol=1e-4)
    assert torch.equal(half[0], master[0].detach().half())
    with pytest.raises(ValueError, match="grad_norms"):
        opt.step(grads=[grad])


def test_cpu_adagrad_matches_torch_adagrad_and_densifies_sparse_grads():
    ours, ref = _model("cpu"), _model("cpu")
    _train(ours, K.DeepSpeedCPUAdagrad(ours.parameters(), lr=1e-2, weight_decay=0.1), 4)
    _train(ref, torch.optim.Adagrad(ref.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-10), 4)
    _same_params(ours, ref, rtol=1e-5, atol=1e-6)
    emb, emb_ref = torch.nn.Embedding(10, 3, sparse=True), torch.nn.Embedding(10, 3, sparse=True)
    emb_ref.load_state_dict(emb.state_dict())
    opt, opt_ref = (
        K.DeepSpeedCPUAdagrad(emb.parameters(), lr=0.1),
        torch.optim.Adagrad(emb_ref.parameters(), lr=0.1, eps=1e-10),
    )
    for module, o in ((emb, opt), (emb_ref, opt_ref)):
        module(torch.tensor([1, 4, 4])).sum().backward()
        o.step()
    torch.testing.assert_close(emb.weight, emb_ref.weight)
    assert torch.equal(emb.weight[0], emb_ref.weight[0])
    decayed = K.DeepSpeedCPUAdagrad(emb.parameters(), lr=0.1, weight_decay=0.1)
    with pytest.raises(RuntimeError, match="sparse gradient and weight_decay"):
        decayed.step()
