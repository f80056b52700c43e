"""``DistributedAttention``: any attention function, run on whole sequences of a shard of the heads.

DeepSpeed's Megatron-style wrapper (``deepspeed.sequence.layer.DistributedAttention``): inputs are a
rank's sequence shard in ``[s/p, b, h, d]`` (the default ``scatter_idx=2, gather_idx=0``) or any layout
where ``scatter_idx`` names the head dimension and ``gather_idx`` the sequence dimension
(``[b, s/p, h, d]``: ``scatter_idx=2, gather_idx=1``). The local attention sees ``[s, b, h/p, d]`` and its
output goes back to ``[s/p, b, h, d]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ds_parallel.ulysses.all_to_all import seq_all_to_all


class DistributedAttention(nn.Module):
    """Ulysses all-to-all around ``local_attention`` over ``sequence_process_group``."""

    def __init__(
        self,
        local_attention: Any,
        sequence_process_group: Any,
        scatter_idx: int = 2,
        gather_idx: int = 0,
        sp_stream: Any = None,
    ) -> None:
        super().__init__()
        self.local_attn = local_attention
        self.spg = sequence_process_group
        self.scatter_idx = scatter_idx
        self.gather_idx = gather_idx
        # Accepted for DeepSpeed's signature; the exchange runs on the default stream (no overlap).
        self.sp_stream = sp_stream

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        batch_dim_idx: int = 1,
        rotary_pos_emb: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Exchange q, k, v to head shards, attend, exchange the context back to sequence shards.

        ``batch_dim_idx`` is accepted for DeepSpeed's signature; the exchange does not need it."""
        if rotary_pos_emb is not None:
            raise NotImplementedError(
                "DistributedAttention(rotary_pos_emb=...) is not supported: apply the "
                "rotary embedding before the call (positions are global in each shard)"
            )
        q, k, v = (
            seq_all_to_all(t, self.spg, self.scatter_idx, self.gather_idx) for t in (query, key, value)
        )
        context = self.local_attn(q, k, v, *args, **kwargs)
        return seq_all_to_all(context, self.spg, self.gather_idx, self.scatter_idx)
