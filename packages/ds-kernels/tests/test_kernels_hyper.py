"""ds_kernels.hyper: bias corrections and the host/device split of step and loss scale."""

import math

import pytest
import torch

from ds_kernels.hyper import AdamHyper, adam_host_scalars, bias_corrections, device_scalar, host_scalar


def test_bias_corrections_are_exact_where_cancellation_bites():
    bc1, bc2 = bias_corrections(0.9, 0.999, 1, True)
    assert bc1 == pytest.approx(0.1, rel=1e-15) and bc2 == pytest.approx(0.001, rel=1e-12)
    assert bias_corrections(0.9, 0.999, 5, False) == (1.0, 1.0)
    assert bias_corrections(0.0, 0.999, 3, True)[0] == 1.0


def test_adam_host_scalars():
    step_size, inv = adam_host_scalars(AdamHyper(1e-3, 0.9, 0.999, 1e-8, 0.0), 2)
    assert step_size == pytest.approx(1e-3 / (1 - 0.81))
    assert inv == pytest.approx(1 / math.sqrt(1 - 0.999**2))


def test_scalars_on_cpu_are_read_and_device_tensors_are_passed_through():
    cpu = torch.device("cpu")
    assert host_scalar(3, cpu) == 3.0
    assert host_scalar(torch.tensor(4.0), cpu) == 4.0
    meta = torch.device("meta")
    on_meta = torch.empty((), device="meta")
    assert host_scalar(on_meta, meta) is None and device_scalar(on_meta, meta) is on_meta
    assert device_scalar(2.0, meta) is None
    with pytest.raises(ValueError, match="one-element"):
        host_scalar(torch.zeros(2), cpu)
