"""ALST's tiled compute: same values and gradients as the untiled computation, one tile's peak memory.

Peaks are counted with :class:`ds_parallel.memory.LiveTensorBytes` (every tensor an operator creates,
forward and backward), so the numbers do not depend on an allocator."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ds_parallel.memory import peak_bytes
from ds_parallel.ulysses import TiledFusedLogitsLoss, TiledMLP, sequence_tiled_compute

SEQ, HIDDEN, INNER, VOCAB = 512, 16, 256, 512


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gate, self.up = (
            torch.nn.Linear(HIDDEN, INNER, bias=False),
            torch.nn.Linear(HIDDEN, INNER, bias=False),
        )
        self.down = torch.nn.Linear(INNER, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to fp32 summation order (tiles sum parameter gradients in another order)."""
    return bool((a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item()))


def _mlp_run(mlp: MLP, x: torch.Tensor, shards: int | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.detach().requires_grad_()
    out = mlp(x) if shards is None else TiledMLP.apply(lambda m, t: m(t), mlp, x, shards, None)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad(set_to_none=True)
    return out.detach(), grads


def test_tiled_mlp_equals_untiled_and_holds_one_tile() -> None:
    mlp, x = MLP(), torch.randn(1, SEQ, HIDDEN)
    ref, ref_grads = _mlp_run(mlp, x, None)
    out, grads = _mlp_run(mlp, x, 8)
    assert (out - ref).abs().max() < 1e-5
    assert all(_close(a, b) for a, b in zip(grads, ref_grads))
    inner_bytes = SEQ * INNER * 4  # one [seq, inner] fp32 activation of the whole sequence
    untiled = peak_bytes(lambda: _mlp_run(mlp, x, None))
    assert untiled > 5 * inner_bytes  # gate, up, their product and their gradients, all alive at once
    _assert_one_tile(lambda s: peak_bytes(lambda: _mlp_run(mlp, x, s)), untiled)


def _assert_one_tile(peak_at: Callable[[int], int], untiled: int) -> None:
    """Peak = fixed + K / shards: what depends on the tile halves each time the tile halves."""
    peaks = {s: peak_at(s) for s in (4, 8, 16)}
    first, second = peaks[4] - peaks[8], peaks[8] - peaks[16]
    assert abs(second - first / 2) <= 0.05 * first, peaks
    assert peaks[8] < untiled / 5, (peaks, untiled)


def test_parameter_grads_accumulate_once_per_backward() -> None:
    """ZeRO reduces a gradient when its post-accumulate hook fires: once per backward, as untiled."""
    mlp, calls = MLP(), []
    for p in mlp.parameters():
        p.register_post_accumulate_grad_hook(lambda p: calls.append(p))
    _mlp_run(mlp, torch.randn(1, SEQ, HIDDEN), 8)
    assert len(calls) == 3


def test_sequence_tiled_compute_concatenates_and_reduces() -> None:
    mlp, x = MLP(), torch.randn(2, SEQ, HIDDEN)
    ref, ref_grads = _mlp_run(mlp, x, None)
    xx = x.clone().requires_grad_()
    out = sequence_tiled_compute(
        lambda hidden, scale: mlp(hidden) * scale,
        SEQ,
        4,
        {"hidden": xx},
        {"scale": 1.0},
        "hidden",
        compute_params=list(mlp.parameters()),
        output_reduction=None,
    )
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    assert _close(out, ref) and _close(xx.grad, ref_grads[0])
    assert all(_close(p.grad, g) for p, g in zip(mlp.parameters(), ref_grads[1:]))


def _loss_fn(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(x).reshape(-1, VOCAB).float(), y.reshape(-1), reduction="sum")


def _loss_run(
    head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, shards: int | None, scale: float
) -> list:
    x = x.detach().requires_grad_()
    if shards is None:
        loss = _loss_fn(head, x, y)
    else:
        loss = TiledFusedLogitsLoss.apply(_loss_fn, head, x, y, None, shards, None, "sum")
    (loss * scale).backward()  # a later scale (SP weighting, loss scaling) must reach the weights too
    out = [loss.detach(), x.grad, head.weight.grad.clone()]
    head.zero_grad(set_to_none=True)
    return out


def test_tiled_fused_logits_loss_equals_untiled_and_holds_one_tile_of_logits() -> None:
    torch.manual_seed(0)
    head, x = torch.nn.Linear(HIDDEN, VOCAB, bias=False), torch.randn(1, SEQ, HIDDEN)
    y = torch.randint(0, VOCAB, (1, SEQ))
    ref = _loss_run(head, x, y, None, 0.37)
    got = _loss_run(head, x, y, 8, 0.37)
    assert all((a - b).abs().max() < 1e-4 * max(1.0, b.abs().max().item()) for a, b in zip(got, ref))
    logits_bytes = SEQ * VOCAB * 4
    untiled = peak_bytes(lambda: _loss_run(head, x, y, None, 1.0))
    assert untiled > 2 * logits_bytes  # logits and their gradient
    _assert_one_tile(lambda s: peak_bytes(lambda: _loss_run(head, x, y, s, 1.0)), untiled)
