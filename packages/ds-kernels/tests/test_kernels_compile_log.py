"""ds_kernels.compile_log: importing compiles nothing; first use of a kernel is recorded and logged."""

import logging
import os
import subprocess
import sys

import torch
from _kernels_marks import needs_interpreter

import ds_kernels as K


def test_import_compiles_nothing_and_leaves_triton_unimported():
    code = (
        "import sys, ds_kernels; assert 'triton' not in sys.modules, 'triton imported'; "
        "assert ds_kernels.compile_records() == []"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


@needs_interpreter
def test_first_use_is_recorded_once_and_logged(caplog):
    caplog.set_level(logging.INFO, logger="ds_kernels")
    K.clear_compile_records()
    p, g, m = (torch.ones(10) for _ in range(3))
    for _ in range(2):
        K.lion_step_flat(
            p,
            g,
            m,
            lr=1e-3,
            beta1=0.9,
            beta2=0.99,
            weight_decay=0.0,
            backend="triton",
            policy=K.KernelPolicy(block=16, num_warps=1),
        )
    records = [r for r in K.compile_records() if r.kernel.startswith("lion_flat")]
    assert len(records) == 1, records
    record = records[0]
    assert record.seconds >= 0 and ("BLOCK", "16") in record.constants
    assert record.interpreted == K.interpreter_active()
    assert any("lion_flat" in message for message in caplog.messages)
