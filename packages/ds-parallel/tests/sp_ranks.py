"""Rank functions of this package's multi-rank tests (importable by spawned ranks)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


def mesh_answers(sp: int) -> dict[str, Any]:
    """What the mesh, the Ulysses mpu and the groups getters say on this rank."""
    from ds_parallel import groups, sp_state
    from ds_parallel.mesh import ParallelMesh, current

    before = (groups._get_sequence_parallel_world_size(), groups._get_data_parallel_world_size())
    sp_state.initialize_sequence_parallel(sp)
    mesh = current()
    assert isinstance(mesh, ParallelMesh)
    out = {"before": before, "ranks": {a: mesh.ranks(a) for a in ("data", "sequence", "sequence+data")}}
    # each group really is that set of ranks: an all-reduce of the global rank sums over it
    for axis, group in (
        ("sequence", sp_state.get_sequence_parallel_group()),
        ("data", groups._get_data_parallel_group()),
        ("sequence+data", groups._get_sequence_data_parallel_group()),
    ):
        t = torch.tensor([float(dist.get_rank())])
        dist.all_reduce(t, group=group)
        out[f"sum:{axis}"] = t.item()
    out["sizes"] = (
        groups._get_sequence_parallel_world_size(),
        groups._get_data_parallel_world_size(),
        groups._get_sequence_data_parallel_world_size(),
        sp_state.get_sequence_parallel_rank(),
        groups._get_data_parallel_rank(),
    )
    return out


def _full(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def all_to_all_layout() -> dict[str, Any]:
    """Sequence shards -> head shards -> back, on [b, s/p, h, d]; gradients of the round trip."""
    from ds_parallel.ulysses import seq_all_to_all

    p, r = dist.get_world_size(), dist.get_rank()
    full = _full(0, (2, 8, 4, 3))  # [b, s, h, d]
    shard = full.chunk(p, dim=1)[r].clone().requires_grad_()
    heads = seq_all_to_all(shard, dist.group.WORLD, scatter_dim=2, gather_dim=1)
    back = seq_all_to_all(heads, dist.group.WORLD, scatter_dim=1, gather_dim=2)
    weight = _full(1, tuple(full.shape)).chunk(p, dim=1)[r]
    (back * weight).sum().backward()
    return {
        "heads_ok": torch.equal(heads, full.chunk(p, dim=2)[r]),
        "back_ok": torch.equal(back, shard),
        "grad_ok": torch.equal(shard.grad, weight),
    }


def _attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # [s, b, h, d] (DeepSpeed's default layout) -> causal attention -> [s, b, h, d]
    out = F.scaled_dot_product_attention(
        q.permute(1, 2, 0, 3), k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3), is_causal=True
    )
    return out.permute(2, 0, 1, 3)


def distributed_attention() -> dict[str, float]:
    """DistributedAttention on sequence shards equals attention on the whole sequence (values and grads)."""
    from ds_parallel.ulysses import DistributedAttention

    p, r = dist.get_world_size(), dist.get_rank()
    q, k, v = (_full(s, (8, 2, 4, 3)).requires_grad_() for s in (0, 1, 2))
    ref = _attn(q, k, v)
    weight = _full(3, (8, 2, 4, 3))
    (ref * weight).sum().backward()
    shards = [t.detach().chunk(p, dim=0)[r].clone().requires_grad_() for t in (q, k, v)]
    out = DistributedAttention(_attn, dist.group.WORLD)(*shards, batch_dim_idx=1)
    (out * weight.chunk(p, dim=0)[r]).sum().backward()
    return {
        "out": (out - ref.detach().chunk(p, dim=0)[r]).abs().max().item(),
        **{
            f"grad_{n}": (s.grad - t.grad.chunk(p, dim=0)[r]).abs().max().item()
            for n, s, t in zip("qkv", shards, (q, k, v))
        },
    }


def sp_loss() -> dict[str, float]:
    """The sequence-parallel loss equals the whole sequence's mean; summed shard gradients are p x its gradient."""
    from ds_parallel.ulysses import sequence_parallel_loss, shift_and_shard

    p, r = dist.get_world_size(), dist.get_rank()
    logits = _full(0, (2, 8, 5)).requires_grad_()
    labels = torch.randint(0, 5, (2, 8), generator=torch.Generator().manual_seed(1))
    labels[0, :5] = -100  # rank 0's shard of sample 0 is all prompt: unequal valid counts per shard
    batch = shift_and_shard({"input_ids": labels, "position_ids": labels, "labels": labels}, 0, 1)
    ref = F.cross_entropy(logits.reshape(-1, 5), batch["shift_labels"].reshape(-1), ignore_index=-100)
    ref.backward()
    shard = shift_and_shard({"input_ids": labels, "position_ids": labels, "labels": labels}, r, p)
    local = logits.detach().chunk(p, dim=1)[r].clone().requires_grad_()
    loss = sequence_parallel_loss(
        F.cross_entropy(local.reshape(-1, 5), shard["shift_labels"].reshape(-1), ignore_index=-100),
        shard["shift_labels"],
        dist.group.WORLD,
    )
    loss.backward()
    return {
        "loss": abs(loss.item() - ref.item()),
        "grad": (local.grad / p - logits.grad.chunk(p, dim=1)[r]).abs().max().item(),
    }


def adapter_batches() -> list[dict[str, list]]:
    """Each rank's loader holds other samples; the adapter yields shard ``sp_rank`` of every rank's batch in turn."""
    from ds_parallel.ulysses import UlyssesSPDataLoaderAdapter

    r = dist.get_rank()
    ids = torch.arange(8).reshape(1, 8) + 100 * r
    loader = [
        {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(8).reshape(1, 8), "tag": r}
    ]
    adapter = UlyssesSPDataLoaderAdapter(
        loader, sp_rank=r, sp_group=dist.group.WORLD, sp_world_size=dist.get_world_size(), device="cpu"
    )
    out = [{k: (v.tolist() if torch.is_tensor(v) else v) for k, v in b.items()} for b in adapter]
    assert len(adapter) == dist.get_world_size()
    return out
