"""``UlyssesSPDataLoaderAdapter``: every rank of a sequence-parallel group gets its shard of one batch.

Note: [sp batches] The ranks of a sequence-parallel group each draw one batch from their own loader;
the batches are exchanged, and then the group works through them together, one per iteration: in
iteration ``i`` every rank holds shard ``sp_rank`` of batch ``i``. So the adapter yields ``sp`` times as
many iterations as the loader it wraps, and every sample is trained on exactly once, as DeepSpeed.

Labels are shifted before sharding (``shift_labels[t] = labels[t + 1]``, ``-100`` after the last token)
so the token at the edge of a shard still predicts the first token of the next shard; ``labels`` is
removed (a model given ``labels`` would shift again, inside the shard).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
import torch.distributed as dist

IGNORE_INDEX = -100


def shift_and_shard(batch: dict[str, Any], sp_rank: int, sp_world_size: int) -> dict[str, Any]:
    """This rank's sequence shard of ``batch`` (tensors ``[batch, seq, ...]``; other values copied)."""
    if "input_ids" not in batch:
        raise ValueError("Ulysses sequence parallelism needs input_ids in every batch")
    if "position_ids" not in batch:
        raise ValueError(
            "Ulysses sequence parallelism needs position_ids in every batch, so every token keeps "
            "its global position after sharding (torch.arange(seq_len) per sample; reset at "
            "document boundaries for packed samples)"
        )
    seq = batch["input_ids"].shape[1]
    if seq % sp_world_size:
        raise ValueError(
            f"sequence length {seq} does not split over sequence_parallel_size {sp_world_size}; pad "
            f"batches to a multiple of {sp_world_size}"
        )
    out = dict(batch)
    if "labels" in out:
        labels = out.pop("labels")
        out["shift_labels"] = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[
            ..., 1:
        ].contiguous()
    chunk = seq // sp_world_size
    for key, value in out.items():
        if torch.is_tensor(value) and value.dim() >= 2:
            if value.shape[1] != seq:
                raise ValueError(
                    f"{key} has shape {tuple(value.shape)}; every tensor must be [batch, {seq}, ...]"
                )
            out[key] = value[:, chunk * sp_rank : chunk * (sp_rank + 1)].contiguous()
    return out


class UlyssesSPDataLoaderAdapter:
    """Wraps a data loader; yields this rank's sequence shards (Note [sp batches])."""

    def __init__(self, dl: Any, sp_rank: int, sp_group: Any, sp_world_size: int, device: Any) -> None:
        self.dl = dl
        self.sp_rank, self.sp_group, self.sp_world_size = sp_rank, sp_group, sp_world_size
        self.device = device
        self.iter = iter(dl)
        self.micro_batches: deque[dict[str, Any]] = deque()

    def __len__(self) -> int:
        return len(self.dl) * self.sp_world_size

    def __iter__(self) -> UlyssesSPDataLoaderAdapter:
        return self

    def __next__(self) -> dict[str, Any]:
        if not self.micro_batches:
            self.refill()
        return self.micro_batches.popleft()

    def refill(self) -> None:
        """Draw one batch here, exchange with the group, and queue this rank's shard of each."""
        try:
            batch = next(self.iter)
        except StopIteration:
            self.iter = iter(self.dl)  # the next epoch starts afresh
            raise
        cpu = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in dict(batch).items()}
        gathered: list[Any] = [None] * self.sp_world_size
        dist.all_gather_object(gathered, cpu, group=self.sp_group)
        for one in gathered:
            shard = shift_and_shard(one, self.sp_rank, self.sp_world_size)
            self.micro_batches.append(
                {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in shard.items()}
            )
