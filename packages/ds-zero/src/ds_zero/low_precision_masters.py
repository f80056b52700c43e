"""Low-precision master weights (DeepSpeed's ``bf16_master_weights_and_grads``) with fp32 optimizer states.

Note: [low-precision masters] With ``MixedPrecisionPolicy.master_dtype`` below fp32 the optimizer steps
the low-precision shards themselves: no fp32 copy of the weights exists, which saves 4 bytes per
parameter (divided over the ranks) and the copy back after each step. Gradients arrive and stay in
that dtype. The optimizer's states are kept in ``optimizer_state_dtype``:

* the low dtype (``bf16_optimizer_states``): the inner optimizer steps the shards as they are, and
  torch's optimizers create their states in the parameters' dtype;
* fp32 (the default): :func:`fp32_step` lends each shard and its gradient an fp32 copy for the
  duration of the step, so the optimizer creates and updates fp32 states and computes in fp32; the
  result is rounded back into the shard. The copies exist only during the step (a transient 8 bytes
  per local element) and any torch optimizer works, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def fp32_step(optimizer: Any) -> Iterator[None]:
    """Within the block, every low-precision parameter of ``optimizer`` holds an fp32 copy of its value and
    gradient; on exit the updated value is rounded back into the original tensor (its views stay valid)."""
    lent = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.dtype == torch.float32 or not p.is_floating_point():
                continue
            low, grad = p.data, p.grad
            p.grad = None  # a gradient must match its parameter's dtype: swap both
            p.data = low.float()
            if grad is not None:
                p.grad = grad.float()
            lent.append((p, low))
    try:
        yield
    finally:
        for p, low in lent:
            with torch.no_grad():
                low.copy_(p.data)
            p.grad = None  # the step is over: its gradient is consumed
            p.data = low
