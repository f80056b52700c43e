"""The 1F1B (one forward, one backward) order of one stage, as plain data (no process group).

Stage ``s`` of ``p`` first runs ``min(p - s - 1, m)`` warm-up forwards, then alternates one forward and
one backward, then drains the remaining backwards. Each stage holds at most ``p - s`` micro-batches'
activations, instead of ``m`` for all-forward-then-all-backward; the bubble is the same,
``(p - 1) / (m + p - 1)`` of the step.
"""

from __future__ import annotations


def one_f_one_b(stage: int, num_stages: int, micro_batches: int) -> list[tuple[str, int]]:
    """``[("F", i) | ("B", i), ...]`` for ``stage``: every micro-batch forward once and backward once."""
    warmup = min(num_stages - stage - 1, micro_batches)
    order: list[tuple[str, int]] = [("F", i) for i in range(warmup)]
    fwd, bwd = warmup, 0
    while fwd < micro_batches:
        order.append(("F", fwd))
        fwd += 1
        order.append(("B", bwd))
        bwd += 1
    order += [("B", i) for i in range(bwd, micro_batches)]
    return order
