"""Training at ZeRO stages 0-2 never imports ``torch.distributed.tensor`` (over a second of start-up:
it pulls in sympy); only stage 3 and tensor parallelism, which make DTensors, pay for it
(ds_zero.dtensor_check, Note [lazy] in ds_zero.stage3)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r"""
import sys, torch
import ds_engine
model = torch.nn.Linear(4, 2)
engine, *_ = ds_engine.initialize(model=model, dist_init_required=False, config={
    "train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 0.1}},
    "gradient_clipping": 1.0, "zero_optimization": {"stage": STAGE}})
for _ in range(2):
    engine.backward(engine(torch.randn(2, 4)).sum())
    engine.step()
engine.optimizer.state_dict()
print("dtensor imported:", "torch.distributed.tensor" in sys.modules)
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_stages_0_to_2_never_import_dtensor(stage) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.replace("STAGE", str(stage))],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "dtensor imported: False" in out.stdout
