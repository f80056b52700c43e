"""ALST's tiled compute: run a per-token function in sequence tiles so only one tile's activations live.

Note: [tiles] ``TiledMLP`` and ``SequenceTiledCompute`` run the forward tile by tile without autograd
(nothing of a tile is kept but its output) and recompute each tile in the backward, so the peak of the
intermediate activations is one tile's. ``TiledFusedLogitsLoss`` never materialises the whole logits
tensor: each tile's logits, loss and gradients are computed in the forward and the tile's logits are
dropped; the backward only scales the kept input gradient.

Note: [tile parameter grads] Each tile's parameter gradients are summed here and accumulated into
``.grad`` once per backward (a leaf ``backward`` with the sum), not once per tile: ZeRO's
post-accumulate hooks then see one gradient per parameter per backward, as without tiling. The
gradient reaching the parameters is the incoming gradient times the tile gradients, so loss scaling,
gradient accumulation and the sequence-parallel loss weighting (Note [sp loss]) all apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def _params(module: Any, compute_params: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    if compute_params is not None:
        return [p for p in compute_params if p.requires_grad]
    if isinstance(module, torch.nn.Module):
        return [p for p in module.parameters() if p.requires_grad]
    return []


def _accumulate(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    if pairs:  # Note [tile parameter grads]
        torch.autograd.backward([p for p, _ in pairs], [g for _, g in pairs])


def _tile_grads(
    out: torch.Tensor,
    grad_out: torch.Tensor,
    x: torch.Tensor,
    params: list[torch.Tensor],
    sums: list[torch.Tensor | None],
) -> torch.Tensor:
    """Gradient of ``out`` wrt ``x`` and (added into ``sums``) the parameters, for one tile."""
    grads = torch.autograd.grad(out, [x, *params], grad_out, allow_unused=True)
    for i, g in enumerate(grads[1:]):
        if g is not None:
            total = sums[i]
            sums[i] = g if total is None else total + g
    return grads[0] if grads[0] is not None else torch.zeros_like(x)


class TiledMLP(torch.autograd.Function):
    """``TiledMLP.apply(fn, module, x, shards, compute_params)``: ``fn(module, x)`` in ``shards`` tiles of dim -2."""

    @staticmethod
    def forward(
        ctx: Any,
        fn: Callable[..., torch.Tensor],
        module: Any,
        x: torch.Tensor,
        shards: int,
        compute_params: Sequence[torch.Tensor] | None,
    ) -> torch.Tensor:
        ctx.fn, ctx.module, ctx.shards = fn, module, shards
        ctx.params = _params(module, compute_params)
        ctx.save_for_backward(x)
        with torch.no_grad():
            return torch.cat([fn(module, tile) for tile in torch.chunk(x, shards, dim=-2)], dim=-2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (x,) = ctx.saved_tensors
        sums: list[torch.Tensor | None] = [None] * len(ctx.params)
        dx = []
        for tile, g in zip(torch.chunk(x, ctx.shards, dim=-2), torch.chunk(grad, ctx.shards, dim=-2)):
            tile = tile.detach().requires_grad_(x.requires_grad)
            with torch.enable_grad():
                out = ctx.fn(ctx.module, tile)
            dx.append(_tile_grads(out, g, tile, ctx.params, sums))
        _accumulate(ctx.params, sums)
        return None, None, torch.cat(dx, dim=-2) if x.requires_grad else None, None, None


class SequenceTiledCompute(torch.autograd.Function):
    """Generic tiled compute; call it through :func:`sequence_tiled_compute` (dicts of arguments)."""

    @staticmethod
    def forward(
        ctx: Any,
        fn: Callable[..., torch.Tensor],
        seqlen: int,
        shards: int,
        keys_to_shard: list[str],
        keys_to_pass: list[str],
        grad_requiring_tensor_key: str,
        compute_params: Any,
        output_unshard_dimension: int,
        output_reduction: str | None,
        *args: Any,
    ) -> torch.Tensor:
        if output_reduction not in (None, "mean", "sum"):
            raise ValueError(f"output_reduction must be None, 'mean' or 'sum', got {output_reduction!r}")
        sharded = dict(zip(keys_to_shard, args[: len(keys_to_shard)]))
        passed = dict(zip(keys_to_pass, args[len(keys_to_shard) :]))
        ctx.fn, ctx.shards, ctx.keys, ctx.passed = fn, shards, keys_to_shard, passed
        ctx.grad_key, ctx.dim, ctx.reduction = (
            grad_requiring_tensor_key,
            output_unshard_dimension,
            output_reduction,
        )
        ctx.params = list(compute_params or [])
        ctx.n_args = len(args)
        ctx.grad_index = keys_to_shard.index(grad_requiring_tensor_key)
        ctx.save_for_backward(*sharded.values())
        with torch.no_grad():
            outs = [fn(**tile, **passed) for tile in _tiles(sharded, shards)]
        if output_reduction is None:
            return torch.cat(outs, dim=output_unshard_dimension)
        stacked = torch.stack(outs)
        return stacked.mean(0) if output_reduction == "mean" else stacked.sum(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        sharded = dict(zip(ctx.keys, ctx.saved_tensors))
        sums: list[torch.Tensor | None] = [None] * len(ctx.params)
        grads: Sequence[torch.Tensor]
        if ctx.reduction is None:
            grads = torch.chunk(grad, ctx.shards, dim=ctx.dim)
        else:
            grads = [grad / ctx.shards if ctx.reduction == "mean" else grad] * ctx.shards
        dx = []
        for tile, g in zip(_tiles(sharded, ctx.shards), grads):
            x = tile[ctx.grad_key] = tile[ctx.grad_key].detach().requires_grad_()
            with torch.enable_grad():
                out = ctx.fn(**tile, **ctx.passed)
            dx.append(_tile_grads(out, g, x, ctx.params, sums))
        _accumulate(ctx.params, sums)
        out_grads: list[Any] = [None] * ctx.n_args
        out_grads[ctx.grad_index] = torch.cat(dx, dim=1)
        return (None,) * 9 + tuple(out_grads)


def _tiles(sharded: dict[str, torch.Tensor], shards: int) -> list[dict[str, torch.Tensor]]:
    split = {k: torch.chunk(v, shards, dim=1) for k, v in sharded.items()}
    return [{k: parts[i] for k, parts in split.items()} for i in range(shards)]


def sequence_tiled_compute(
    fn: Callable[..., torch.Tensor],
    seqlen: int,
    shards: int,
    kwargs_to_shard: dict[str, torch.Tensor],
    kwargs_to_pass: dict[str, Any],
    grad_requiring_tensor_key: str,
    compute_params: Sequence[torch.Tensor] | None = None,
    output_unshard_dimension: int = 1,
    output_reduction: str | None = "mean",
) -> torch.Tensor:
    """``fn(**kwargs_to_shard tiles, **kwargs_to_pass)`` over ``shards`` tiles of dim 1 (Note [tiles]).

    Parameter gradients reach ``compute_params`` only (the weights ``fn`` uses); the input gradient
    reaches ``kwargs_to_shard[grad_requiring_tensor_key]``. ``output_reduction``: ``None``
    concatenates the tile outputs along ``output_unshard_dimension``; ``"mean"``/``"sum"`` reduce them."""
    return SequenceTiledCompute.apply(
        fn,
        seqlen,
        shards,
        list(kwargs_to_shard),
        list(kwargs_to_pass),
        grad_requiring_tensor_key,
        compute_params,
        output_unshard_dimension,
        output_reduction,
        *kwargs_to_shard.values(),
        *kwargs_to_pass.values(),
    )


class TiledFusedLogitsLoss(torch.autograd.Function):
    """``apply(fn, module, x, y, mask, shards, compute_params, output_reduction)``: ``fn(module, x, y[, mask])``
    per tile of dim 1, reduced by ``"mean"`` (of the tile losses) or ``"sum"``; logits live one tile at a time."""

    @staticmethod
    def forward(
        ctx: Any,
        fn: Callable[..., torch.Tensor],
        module: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        shards: int,
        compute_params: Sequence[torch.Tensor] | None,
        output_reduction: str = "mean",
    ) -> torch.Tensor:
        if output_reduction not in ("mean", "sum"):
            raise ValueError(f"unknown reduction {output_reduction!r}: valid values are 'mean' and 'sum'")
        params = _params(module, compute_params)
        scale = 1.0 / shards if output_reduction == "mean" else 1.0
        sums: list[torch.Tensor | None] = [None] * len(params)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        dx = []
        masks = torch.chunk(mask, shards, dim=1) if mask is not None else [None] * shards
        for xt, yt, mt in zip(torch.chunk(x, shards, dim=1), torch.chunk(y, shards, dim=1), masks):
            xt = xt.detach().requires_grad_()
            with torch.enable_grad():
                loss = fn(module, xt, yt) if mt is None else fn(module, xt, yt, mt)
                dx.append(_tile_grads(loss, torch.full_like(loss, scale), xt, params, sums))
            total = total + loss.detach().float() * scale
        ctx.params, ctx.sums = params, sums
        ctx.save_for_backward(torch.cat(dx, dim=1))
        return total.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (dx,) = ctx.saved_tensors
        _accumulate(ctx.params, [None if s is None else s * grad.to(s.dtype) for s in ctx.sums])
        ctx.sums = None
        return None, None, dx * grad.to(dx.dtype), None, None, None, None, None
