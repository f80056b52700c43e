"""Fused projections AutoTP knows the layout of: where q, k, v (or gate, up) sit in one weight.

A fused projection concatenates several matrices along its output features. Splitting it as one matrix would
give rank 0 all of q and half of k, so each block is split on its own (``sections``, layers.py) and a rank
holds its 1/TP of every block, in the same order; the model's forward then cuts the local output the same way
it cuts the full one, provided the attention module's notion of the block sizes is made per-rank.

Layouts, by the class of the module holding the projection (its leaf name alone is ambiguous: CodeGen's
``qkv_proj`` interleaves blocks, Phi-3's concatenates them):
- ``GPT2Attention.c_attn`` (transformers ``Conv1D``, weight ``[hidden, 3 * hidden]``): q, k, v of
  ``split_size`` each, heads contiguous; the forward splits by ``split_size`` and reshapes with ``-1`` heads,
  so ``split_size`` and ``num_heads`` become per-rank. Cross-attention (``c_attn`` holds only k, v next to
  ``q_attn``) is refused.
- ``Phi3Attention.qkv_proj`` (``nn.Linear``): q of ``num_attention_heads * head_dim``, then k and v of
  ``num_key_value_heads * head_dim`` each (GQA). The forward reads ``self.config.num_attention_heads`` and
  ``self.num_key_value_heads``; the module gets a per-rank view of the config (:class:`LocalHeadsConfig`)
  so the model's own config, which is saved with the model, keeps the full counts.
- ``Phi3MLP.gate_up_proj`` (``nn.Linear``): gate then up, halves; the forward's ``chunk(2)`` works as is.

Whole heads per rank (and, with GQA, the q heads of a rank using exactly that rank's k/v heads) follow from
the head counts being divisible by the tensor-parallel size, which autotp.py checks before splitting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ds_parallel.tensor.layers import PartitionError


class LocalHeadsConfig:
    """An attention module's view of the shared model config with this rank's head counts.

    Reads of the overridden names return the per-rank values; every other read and write goes to the shared
    config, so later changes to it (``_attn_implementation``...) still reach the module."""

    def __init__(self, base: Any, **local: int) -> None:
        object.__setattr__(self, "_ds_base", base)
        object.__setattr__(self, "_ds_local", dict(local))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_ds_"):  # not set yet (copy/unpickle): no delegation, no recursion
            raise AttributeError(name)
        local = object.__getattribute__(self, "_ds_local")
        if name in local:
            return local[name]
        return getattr(object.__getattribute__(self, "_ds_base"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._ds_local:
            self._ds_local[name] = value
        else:
            setattr(self._ds_base, name, value)

    def __repr__(self) -> str:
        return f"LocalHeadsConfig({self._ds_local}, base={type(self._ds_base).__name__})"


@dataclass(frozen=True)
class FusedLayout:
    """How one fused projection is split: its blocks' sizes and what its parent must learn per rank."""

    family: str
    sections: tuple[int, ...]
    attention: bool  # the parent's head counts become per-rank (autotp._adjust_heads)
    localize: Callable[[nn.Module, int], None] | None = None  # further per-rank changes to the parent


# The layout functions take the transformers module as Any: they read and write its plain attributes
# (split_size, head_dim, config) by name, which nn.Module's type (tensors and submodules) cannot describe.
def _gpt2_qkv(parent: Any, out_features: int) -> tuple[int, ...]:
    if getattr(parent, "is_cross_attention", False):
        raise PartitionError("GPT-2 cross-attention (c_attn holding only k and v) is not supported")
    size = int(parent.split_size)
    return (size, size, size)


def _gpt2_localize(parent: Any, tp_size: int) -> None:
    parent.split_size //= tp_size  # the forward splits c_attn's local output into q, k, v by it


def _phi3_qkv(parent: Any, out_features: int) -> tuple[int, ...]:
    head_dim, cfg = int(parent.head_dim), parent.config
    q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    return (q, kv, kv)


def _phi3_localize(parent: Any, tp_size: int) -> None:
    cfg = parent.config
    parent.config = LocalHeadsConfig(
        cfg,
        num_attention_heads=cfg.num_attention_heads // tp_size,
        num_key_value_heads=cfg.num_key_value_heads // tp_size,
    )


def _halves(parent: nn.Module, out_features: int) -> tuple[int, ...]:
    return (out_features // 2, out_features - out_features // 2)


# (class name of the parent or one of its bases, leaf name) -> (sections, attention, localize)
_LAYOUTS: dict[
    tuple[str, str],
    tuple[Callable[[nn.Module, int], tuple[int, ...]], bool, Callable[[nn.Module, int], None] | None],
] = {
    ("GPT2Attention", "c_attn"): (_gpt2_qkv, True, _gpt2_localize),
    ("Phi3Attention", "qkv_proj"): (_phi3_qkv, True, _phi3_localize),
    ("Phi3MLP", "gate_up_proj"): (_halves, False, None),
}


def fused_layout(parent: nn.Module, leaf: str, out_features: int, name: str) -> FusedLayout | None:
    """The layout of the fused projection ``parent.<leaf>`` (``name`` in the model), or None when unknown.

    Raises :class:`PartitionError` when the layout is known but this instance does not fit it."""
    for cls in type(parent).__mro__:
        entry = _LAYOUTS.get((cls.__name__, leaf))
        if entry is None:
            continue
        sections_of, attention, localize = entry
        try:
            sections = sections_of(parent, out_features)
        except PartitionError as exc:
            raise PartitionError(f"AutoTP cannot partition '{name}': {exc}") from None
        if sum(sections) != out_features:
            raise PartitionError(
                f"AutoTP cannot partition '{name}': its {cls.__name__} layout {sections} does not "
                f"add up to out_features={out_features}"
            )
        return FusedLayout(f"{cls.__name__}.{leaf}", sections, attention, localize)
    return None


def check_sections(layout: FusedLayout, tp_size: int, name: str) -> None:
    """Every block must split evenly (whole heads come from the head-count checks)."""
    if any(s % tp_size for s in layout.sections):
        raise PartitionError(
            f"AutoTP cannot partition '{name}': the blocks {layout.sections} of its fused "
            f"{layout.family} are not divisible by the tensor-parallel size {tp_size}"
        )
