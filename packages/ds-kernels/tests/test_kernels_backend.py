"""ds_kernels.backend and the functional entries' input checks: which backend runs, and the
one-line errors for inputs no backend takes."""

import pytest
import torch
from _kernels_marks import needs_interpreter

import ds_kernels as K
from ds_kernels.backend import resolve_backend

ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)


def _adam_args(n=4, dtype=torch.float32, device="cpu"):
    return [torch.zeros(n, dtype=dtype, device=device) for _ in range(4)]


@needs_interpreter
def test_auto_picks_torch_on_cpu_and_triton_must_be_asked_for():
    assert resolve_backend([torch.zeros(1)], backend="auto", op="t") == "torch"
    assert resolve_backend([], backend="auto", op="t") == "torch"
    assert resolve_backend([torch.zeros(1)], backend="triton", op="t") == "triton"  # interpreter is on


@pytest.mark.skipif(not K.triton_available(), reason="needs triton")
def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(K.UnsupportedKernelInput, match="TRITON_INTERPRET=1"):
        K.adamw_step_flat(*_adam_args(), backend="triton", **ADAM)


def test_unknown_backend_and_device_are_named():
    with pytest.raises(ValueError, match="backend='cuda'"):
        K.adamw_step_flat(*_adam_args(), backend="cuda", **ADAM)
    with pytest.raises(K.UnsupportedKernelInput, match="device meta"):
        K.adamw_step_flat(*_adam_args(device="meta"), **ADAM)
    with pytest.raises(ValueError, match=r"mix device types \['cpu', 'meta'\]"):
        K.adamw_step_multi(*([torch.zeros(2), torch.zeros(2, device="meta")] for _ in range(4)), **ADAM)


@needs_interpreter
def test_unsupported_dtypes_name_tensor_dtype_and_device():
    with pytest.raises(K.UnsupportedKernelInput, match=r"params\[0\] has dtype torch.float64 on cpu"):
        K.adamw_step_flat(*_adam_args(dtype=torch.float64), backend="triton", **ADAM)
    K.adamw_step_flat(*_adam_args(dtype=torch.float64), backend="torch", **ADAM)  # torch's own fused kernel
    p, g, m, v = _adam_args(dtype=torch.float64)
    with pytest.raises(
        K.UnsupportedKernelInput, match=r"params\[0\] has dtype torch.float64 on cpu alongside"
    ):
        K.adamw_step_flat(p, g.float(), m, v, backend="torch", **ADAM)
    p, g, m, v = _adam_args()
    with pytest.raises(K.UnsupportedKernelInput, match=r"out_lowp\[0\] has dtype torch.int8"):
        K.adamw_step_flat(p, g, m, v, out_lowp=torch.zeros(4, dtype=torch.int8), backend="triton", **ADAM)


def test_layout_and_size_errors_name_the_tensor():
    p, g, m, v = _adam_args(8)
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] has 7 elements but params\[0\] has 8"):
        K.adamw_step_flat(p, g, m[:7], v, **ADAM)
    with pytest.raises(K.UnsupportedKernelInput, match=r"params\[0\] \(shape \(4,\)\) is not contiguous"):
        K.adamw_step_flat(p[::2], g[:4], m[:4], v[:4], **ADAM)
    with pytest.raises(ValueError, match="differ in length"):
        K.adamw_step_multi([p], [g, g], [m], [v], **ADAM)
    with pytest.raises(K.UnsupportedKernelInput, match="sparse"):
        K.adamw_step_flat(p, g.to_sparse(), m, v, **ADAM)


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_interpreter), "torch"])
def test_non_contiguous_gradients_are_read_through_a_copy(backend):
    p, m, v = (torch.zeros(6) for _ in range(3))
    g = torch.arange(12.0).view(6, 2)[:, 0]
    K.adamw_step_flat(p, g, m, v, backend=backend, **ADAM)
    torch.testing.assert_close(m, 0.1 * g)


@needs_interpreter
def test_out_of_range_hyperparameters_name_the_key():
    with pytest.raises(ValueError, match=r"beta2=1.0; expected a value in \[0.0, 1.0\)"):
        K.adamw_step_flat(*_adam_args(), **{**ADAM, "beta2": 1.0})
    with pytest.raises(ValueError, match="lr=-1.0"):
        K.lion_step_flat(*_adam_args()[:3], lr=-1.0, beta1=0.9, beta2=0.99, weight_decay=0.0)
    with pytest.raises(ValueError, match="min_coeff"):
        K.lamb_step_flat(*_adam_args(), **ADAM, min_coeff=2.0, max_coeff=1.0)
    with pytest.raises(ValueError, match="step=0"):
        K.adamw_step_flat(*_adam_args(), **{**ADAM, "step": 0})
    with pytest.raises(ValueError, match="grad_scale=0.0"):
        K.adamw_step_flat(*_adam_args(), grad_scale=0.0, backend="triton", **ADAM)


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_interpreter), "torch"])
def test_found_inf_must_be_one_float32_element(backend):
    with pytest.raises(K.UnsupportedKernelInput, match="found_inf must be a one-element float32 tensor"):
        K.adamw_step_flat(*_adam_args(), found_inf=torch.zeros(2, dtype=torch.int32), backend=backend, **ADAM)


@needs_interpreter
def test_a_bad_dtype_in_a_later_group_leaves_earlier_groups_unstepped():
    good = [torch.ones(3) for _ in range(4)]
    bad = [torch.ones(3, dtype=torch.float64) for _ in range(4)]
    with pytest.raises(K.UnsupportedKernelInput, match=r"params\[1\] has dtype torch.float64"):
        K.adamw_step_multi(*([g, b] for g, b in zip(good, bad)), backend="triton", **ADAM)
    assert torch.equal(good[0], torch.ones(3)), "the float32 group must not have been stepped"
