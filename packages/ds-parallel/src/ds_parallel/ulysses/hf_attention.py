"""``UlyssesSPAttentionHF``: Ulysses around a Hugging Face attention function, registered by name.

Hugging Face models look their attention function up by ``config._attn_implementation`` in
``transformers``' ``ALL_ATTENTION_FUNCTIONS`` (an ``AttentionInterface``) on every forward.
:meth:`UlyssesSPAttentionHF.register_with_transformers` replaces the entry of the model's own
implementation (``"sdpa"``, ``"flash_attention_2"``...) with the sequence-parallel wrapper, as DeepSpeed
does, so every other code path keyed on that name stays as it is.

HF calls attention with ``[b, h, s/p, d]`` (heads before sequence) and expects ``[b, s/p, h, d]`` back.
The wrapper exchanges q, k, v to ``[b, h/p, s, d]`` (Note [all-to-all layout]), calls the core function
with no mask (a causal mask for the whole sequence is what the core builds itself with ``is_causal``;
the one HF made is for the local shard and is wrong after the exchange), and exchanges the context back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ds_parallel.ulysses.all_to_all import seq_all_to_all

# Need a full [s, s] mask (no is_causal fallback): they cannot run on gathered sequences without one.
UNWRAPPABLE = ("eager", "paged|eager")


class SequenceParallelConfigError(ValueError):
    """A sequence-parallel setup that cannot run, found before any compute."""


def check_heads(attn_head_count: int, kv_head_count: int, sp: int) -> None:
    """Heads must split over the sequence-parallel ranks; KV heads must split or be replicated evenly."""
    if attn_head_count % sp:
        raise SequenceParallelConfigError(
            f"attention head count {attn_head_count} is not divisible by sequence_parallel_size {sp}"
        )
    if kv_head_count % sp and sp % kv_head_count:
        raise SequenceParallelConfigError(
            f"key/value head count {kv_head_count} is not divisible by sequence_parallel_size {sp} (nor divides it)"
        )


class UlyssesSPAttentionHF(nn.Module):
    """Sequence-parallel wrapper of an HF attention function ``attn(module, q, k, v, mask, **kw)``."""

    def __init__(
        self,
        attn: Any,
        batch_size: int,
        attn_head_count: int,
        attn_head_size: int,
        kv_head_count: int,
        num_hidden_layers: int,
        process_group: Any,
        seq_length_is_variable: bool = False,
        local_seq_length: int | None = None,
        global_seq_length: int | None = None,
        disable_in_eval: bool = False,
    ) -> None:
        super().__init__()
        self.attn = attn
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.sp_rank = dist.get_rank(process_group)
        check_heads(attn_head_count, kv_head_count, self.world_size)
        self.batch_size = batch_size
        self.attn_head_count, self.attn_head_size = attn_head_count, attn_head_size
        self.global_kv_head_count = kv_head_count
        self.num_hidden_layers = num_hidden_layers
        self.seq_length_is_variable = seq_length_is_variable
        self.local_seq_length, self.global_seq_length = local_seq_length, global_seq_length
        self.disable_in_eval = disable_in_eval
        self.core_attn_implementation: str | None = None
        self.local_q_head_count = attn_head_count // self.world_size
        # Fewer KV heads than ranks (MQA, some GQA): each KV head is repeated so every rank gets one.
        self.kv_replication_factor = max(1, self.world_size // kv_head_count)
        self.local_kv_head_count = max(1, kv_head_count // self.world_size)

    def _check_shapes(self, query: torch.Tensor, key: torch.Tensor) -> None:
        b, h, s, d = query.shape
        if h != self.attn_head_count or key.shape[1] != self.global_kv_head_count or d != self.attn_head_size:
            raise ValueError(
                f"Ulysses: got query {tuple(query.shape)} and key {tuple(key.shape)} "
                f"([batch, heads, seq, head_dim]); expected {self.attn_head_count} query heads and "
                f"{self.global_kv_head_count} key/value heads of size {self.attn_head_size}"
            )
        if not self.seq_length_is_variable and s != self.local_seq_length:
            raise ValueError(
                f"Ulysses: local sequence length {s} differs from the registered seq_length "
                f"{self.global_seq_length} / {self.world_size} = {self.local_seq_length}; register "
                f"with seq_length_is_variable=True for variable lengths"
            )

    def _gather_position_ids(self, kwargs: dict[str, Any]) -> None:
        # Varlen kernels (flash attention) read position_ids to find packed documents: give them the
        # whole sequence's, in shard order, as the gathered q/k/v are.
        pos = kwargs.get("position_ids")
        if pos is None or self.world_size == 1:
            return
        parts = [torch.empty_like(pos) for _ in range(self.world_size)]
        dist.all_gather(parts, pos.contiguous(), group=self.process_group)
        kwargs["position_ids"] = torch.cat(parts, dim=-1)

    def forward(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        """``[b, h, s/p, d]`` q, k, v in; ``([b, s/p, h * d], weights)`` out, as HF attention functions."""
        if self.disable_in_eval and not module.training:
            return self.attn(module, query, key, value, attention_mask, *args, **kwargs)
        self._check_shapes(query, key)
        if self.kv_replication_factor > 1:
            key = key.repeat_interleave(self.kv_replication_factor, dim=1)
            value = value.repeat_interleave(self.kv_replication_factor, dim=1)
        self._gather_position_ids(kwargs)
        group = self.process_group
        q, k, v = (seq_all_to_all(t, group, scatter_dim=1, gather_dim=2) for t in (query, key, value))
        if self.kv_replication_factor > 1:
            # nn.Module.__setattr__'s stub takes tensors and modules only; any value is stored at run time
            module.num_key_value_groups = q.shape[1] // k.shape[1]  # type: ignore[assignment]
        context, weights = self.attn(module, q, k, v, None, *args, **kwargs)  # [b, s, h/p, d]
        out = seq_all_to_all(context, group, scatter_dim=1, gather_dim=2)  # [b, s/p, h, d]
        return out.reshape(*out.shape[:2], -1), weights

    @classmethod
    def register_with_transformers(
        cls,
        model_name_or_path: Any,
        core_attn_implementation: str,
        sequence_parallel_size: int,
        micro_batch_size: int,
        seq_length: int | None = None,
        seq_length_is_variable: bool = True,
        disable_in_eval: bool = False,
        max_length: int | None = None,
    ) -> Any:
        """Wrap ``core_attn_implementation`` in transformers' attention registry and return the ``mpu``.

        Returns ``None`` when ``sequence_parallel_size`` is 1. ``model_name_or_path`` is a model (or
        anything with ``.config``) or a name/path ``AutoConfig`` reads. Every check runs before any
        group is used: head counts, the attention implementation, the sequence length."""
        from ds_parallel.ulysses.registration import register

        return register(
            cls,
            model_name_or_path=model_name_or_path,
            core_attn_implementation=core_attn_implementation,
            sequence_parallel_size=sequence_parallel_size,
            micro_batch_size=micro_batch_size,
            seq_length=seq_length if seq_length is not None else max_length,
            seq_length_is_variable=seq_length_is_variable,
            disable_in_eval=disable_in_eval,
        )
