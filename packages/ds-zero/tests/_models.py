"""Tiny models and data shared by the ZeRO tests (importable by spawned ranks)."""

from __future__ import annotations

import torch


def tiny_mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(12, 24),
        torch.nn.GELU(),
        torch.nn.Linear(24, 24),
        torch.nn.GELU(),
        torch.nn.Linear(24, 3),
    )
    return model.to(dtype)


def global_batches(
    steps: int, micro: int, world: int, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` global micro-batches of ``micro * world`` samples each."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(micro * world, 12, generator=gen), torch.randn(micro * world, 3, generator=gen))
        for _ in range(steps)
    ]


def reference_run(
    steps: int, gas: int, micro: int, world: int, clip: float, lr: float = 1e-2
) -> list[torch.Tensor]:
    """Single-process PyTorch on the same global batches: the numbers sharded runs must match."""
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    batches = global_batches(steps * gas, micro, world)
    for s in range(steps):
        for k in range(gas):
            x, y = batches[s * gas + k]
            loss = torch.nn.functional.mse_loss(model(x), y) / gas
            loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def reference_mixed_precision(
    steps: int, micro: int, world: int, dtype: torch.dtype, lr: float = 1e-2
) -> list[torch.Tensor]:
    """Single-process mixed precision by hand: low-precision model, fp32 master weights and AdamW."""
    model = tiny_mlp(dtype=dtype)
    masters = [p.detach().float().clone().requires_grad_() for p in model.parameters()]
    opt = torch.optim.AdamW(masters, lr=lr, weight_decay=0.01)
    for x, y in global_batches(steps, micro, world):
        loss = torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y)
        loss.backward()
        for m, p in zip(masters, model.parameters()):
            m.grad = p.grad.float()
            p.grad = None
        opt.step()
        with torch.no_grad():
            for m, p in zip(masters, model.parameters()):
                p.copy_(m)
    return [m.detach().clone() for m in masters]


def zero_trainer(
    model: torch.nn.Module,
    stage: int,
    *,
    bucket: int | None,
    overlap: bool = False,
    offload: bool = False,
    dtype: torch.dtype = torch.float32,
    clip: float = 0.0,
    lr: float = 1e-2,
    fp16_scale: float | None = None,
    optimizer: type = torch.optim.AdamW,
):
    """``ds_zero.wrap`` with the knobs these tests turn."""
    from ds_zero import LossScalePolicy, MixedPrecisionPolicy, OffloadPolicy, ReducePolicy, ZeroPolicy, wrap

    opt = (
        optimizer(model.parameters(), lr=lr, weight_decay=0.01)
        if optimizer is torch.optim.AdamW
        else optimizer(model.parameters(), lr=lr)
    )
    policy = ZeroPolicy(
        stage=stage,
        mixed_precision=MixedPrecisionPolicy(param_dtype=dtype),
        loss_scale=LossScalePolicy(dynamic=False, static_scale=fp16_scale) if fp16_scale else None,
        reduce=ReducePolicy(bucket_numel=bucket, overlap=overlap),
        offload=OffloadPolicy(optimizer_device="cpu" if offload else "none"),
        clip_grad=clip,
    )
    return wrap(model, opt, policy=policy)


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive in this process (a gc walk: counts what the
    trainer really holds, whoever allocated it), except the shared-memory collectives' segments: a
    transport buffer of bounded size shared by the host's ranks, like gloo's socket buffers, which no
    gc walk sees either (Note [shared-memory collectives])."""
    import gc

    from ds_zero.shm_collectives import transport_storages

    gc.collect()
    transport = transport_storages()
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if not torch.is_tensor(obj):
                continue
            storage = obj.untyped_storage()
            if storage.data_ptr() not in transport:
                seen[storage.data_ptr()] = storage.nbytes()
        except Exception:  # noqa: BLE001 - DTensor wrappers and freed storages have nothing to count
            continue
    return sum(seen.values())
