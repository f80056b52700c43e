"""``deepspeed.utils.safe_get_full_*`` on a real engine (2 gloo ranks, ZeRO 1-3): between ``backward`` and
``step`` every rank reads the single-process reference's weights, averaged gradient and Adam state."""

from __future__ import annotations

import pytest
import torch
from param_access_workers import engine_accessors, reference

from ds_comm.testing import run_distributed


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_full_values_through_the_engine(stage):
    want = reference()
    for got, overflow in run_distributed(engine_accessors, world_size=2, args=(stage,), timeout=240):
        assert overflow is False
        for kind, values in want.items():
            assert set(got[kind]) == set(values)
            for name, value in values.items():
                torch.testing.assert_close(got[kind][name], value, rtol=1e-5, atol=1e-6, msg=f"{kind} {name}")
