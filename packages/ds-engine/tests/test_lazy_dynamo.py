"""Note [lazy dynamo]: training through the engine never imports torch._dynamo; compiling still works."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r"""
import sys, torch
import ds_engine
model = torch.nn.Linear(4, 2)
engine, opt, _, _ = ds_engine.initialize(model=model, dist_init_required=False, config={
    "train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 0.1}}})
for _ in range(2):
    engine.backward(engine(torch.randn(2, 4)).sum())
    engine.step()
engine.optimizer.state_dict()
print("dynamo after training:", "torch._dynamo" in sys.modules)
step = torch.compile(lambda: opt.optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]}),
                     backend="eager")
step()
import torch._dynamo
fn = torch.optim.Optimizer.add_param_group.__wrapped__
print("real disable after import:", getattr(fn, "__dynamo_disable").__name__ != "call")
"""


@pytest.mark.timeout(120)
def test_no_dynamo_import_until_something_compiles() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "dynamo after training: False" in out.stdout
    assert "real disable after import: True" in out.stdout
