"""Automatic partitioning (AutoTP) of Hugging Face transformer blocks, and DeepSpeed 0.19's user layer specs.

Default rules, by the leaf name of each ``nn.Linear`` (the names Llama, Mistral, Qwen2/3, Gemma, Phi and
Falcon/GPT-NeoX-style blocks use):
- column (output features split): attention q/k/v, MLP up/gate/fc1;
- row (input features split, one all-reduce): attention output, MLP down/fc2;
- ``lm_head``/``embed_out``: row parallel, as DeepSpeed (replicated when tied to the input embedding);
- embeddings, norms and every other layer stay replicated.
transformers' ``Conv1D`` (GPT-2: weight stored ``[in, out]``) is split like an ``nn.Linear`` by the same names
(``c_fc`` column, ``c_proj`` row).
Fused projections (``qkv_proj``, ``gate_up_proj``, ``c_attn``, ``query_key_value``, ``Wqkv``, ``W_pack``) are split
block by block where fused.py knows their layout (GPT-2 ``c_attn``, Phi-3 ``qkv_proj`` and ``gate_up_proj``); any
other raises :class:`PartitionError` naming the module.

Attention modules get their head counts (``num_heads``, ``num_key_value_heads``...) divided by the
tensor-parallel size, so forwards that read them reshape the local q/k/v correctly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ds_parallel.tensor.fused import FusedLayout, check_sections, fused_layout
from ds_parallel.tensor.layers import (
    LinearAllreduce,
    LinearLayer,
    LmHeadLinearAllreduce,
    PartitionError,
    TensorParallelLayer,
    is_conv1d,
)

COLUMN_NAMES = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "gate_proj",
        "up_proj",
        "fc1",
        "w1",
        "w3",
        "query",
        "key",
        "value",
        "dense_h_to_4h",
        "wi",
        "wi_0",
        "wi_1",
        "c_fc",
    }
)
ROW_NAMES = frozenset(
    {"o_proj", "down_proj", "dense", "fc2", "w2", "out_proj", "wo", "dense_4h_to_h", "c_proj"}
)
HEAD_NAMES = frozenset({"lm_head", "embed_out"})
FUSED_NAMES = frozenset({"qkv_proj", "gate_up_proj", "c_attn", "query_key_value", "Wqkv", "W_pack"})
HEAD_ATTRS = (
    "num_heads",
    "num_key_value_heads",
    "num_attention_heads",
    "num_kv_heads",
    "n_heads",
    "n_head",
    "num_attn_heads",
)


@dataclass
class LayerSpec:
    """One entry of ``partition_config.layer_specs``: parameter-name regexes and how to split them."""

    patterns: list[str]
    partition_type: str  # "row", "column" or "skip"
    shape: Any = None
    partition_dim: int | None = None

    def matches(self, param_name: str) -> bool:
        """Whether ``param_name`` (``module.path.weight``) matches one of the patterns."""
        return any(re.match(p, param_name) for p in self.patterns)


@dataclass
class PartitionPlan:
    """User specs (first match wins) and whether the default rules apply to what they leave."""

    specs: list[LayerSpec] = field(default_factory=list)
    use_default_specs: bool = True

    @classmethod
    def from_config(cls, partition_config: dict[str, Any] | None) -> PartitionPlan:
        """Read DeepSpeed 0.19's ``tensor_parallel.partition_config``."""
        if not partition_config:
            return cls()
        specs = []
        for i, raw in enumerate(partition_config.get("layer_specs", []) or []):
            kind = str(raw.get("partition_type", "")).lower()
            if kind not in ("row", "column", "skip"):
                raise PartitionError(
                    f"tensor_parallel.partition_config.layer_specs[{i}].partition_type "
                    f"{raw.get('partition_type')!r}: expected 'row', 'column' or 'skip'"
                )
            patterns = raw.get("patterns") or []
            if isinstance(patterns, str):
                patterns = [patterns]
            specs.append(LayerSpec(list(patterns), kind, raw.get("shape"), raw.get("partition_dim")))
        return cls(specs, bool(partition_config.get("use_default_specs", True)))

    def decide(self, name: str, module: nn.Module) -> str:
        """``"column"``, ``"row"``, ``"head"``, ``"fused"`` (a fused projection's name) or ``"skip"``."""
        for spec in self.specs:
            if spec.matches(f"{name}.weight"):
                if spec.shape is not None:
                    raise PartitionError(
                        f"AutoTP cannot partition '{name}': sub-parameter layer specs (shape="
                        f"{spec.shape}) for fused projections are not supported here"
                    )
                return spec.partition_type
        if not self.use_default_specs or not _is_projection(module):
            return "skip"
        leaf = name.rsplit(".", 1)[-1]
        if leaf in FUSED_NAMES:
            return "fused"
        if leaf in HEAD_NAMES:
            return "head"
        if leaf in COLUMN_NAMES:
            return "column"
        if leaf in ROW_NAMES:
            return "row"
        return "skip"


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a ``Conv1D``."""
    if is_conv1d(module):
        return module.nx, module.nf
    assert isinstance(module, nn.Linear)  # callers check _is_projection first
    return module.in_features, module.out_features


def _resolve_fused(model: nn.Module, name: str, module: nn.Module) -> FusedLayout:
    """The known layout of the fused projection at ``name``, or the error naming it."""
    parent, _, leaf = name.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    layout = fused_layout(holder, leaf, _features(module)[1], name) if _is_projection(module) else None
    if layout is None:
        raise PartitionError(
            f"AutoTP cannot partition '{name}': fused projection '{leaf}' in "
            f"{type(holder).__name__} has no known per-sub-matrix layout (known: GPT-2 c_attn, "
            "Phi-3 qkv_proj and gate_up_proj); give tensor_parallel.partition_config layer_specs "
            "that skip it or unfuse the model"
        )
    return layout


def _tied_to_input_embedding(model: nn.Module, module: nn.Module) -> bool:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return emb is not None and getattr(emb, "weight", None) is getattr(module, "weight", object())


def _adjust_heads(model: nn.Module, touched: set[str], tp_size: int) -> None:
    """Divide the head counts of the parents of split q/k/v layers (checked divisible first)."""
    for parent in sorted(touched):
        mod = model.get_submodule(parent) if parent else model
        for attr in HEAD_ATTRS:
            value = getattr(mod, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                if value % tp_size:
                    raise PartitionError(
                        f"AutoTP cannot partition '{parent}': {attr}={value} is not divisible by "
                        f"the tensor-parallel size {tp_size}"
                    )
                setattr(mod, attr, value // tp_size)


def _check_heads(model: nn.Module, tp_size: int) -> None:
    """Heads must split evenly: q/k/v slices must hold whole heads (GQA: whole key/value heads)."""
    cfg = getattr(model, "config", None)
    for attr in ("num_attention_heads", "num_key_value_heads"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value % tp_size:
            raise PartitionError(
                f"AutoTP cannot partition '{type(model).__name__}': config.{attr}={value} is not "
                f"divisible by the tensor-parallel size {tp_size}"
            )


def partition_model(
    model: nn.Module, tp_group: Any, tp_size: int, partition_config: dict[str, Any] | None = None
) -> list[str]:
    """Replace the model's linear layers by tensor-parallel ones in place; returns the replaced names.

    Every rank of ``tp_group`` must hold the same full weights (checked nowhere: the engine broadcasts)."""
    if tp_size <= 1:
        return []
    _check_heads(model, tp_size)
    plan = PartitionPlan.from_config(partition_config)
    decisions: list[tuple[str, str]] = []
    layouts: dict[str, FusedLayout] = {}
    for name, module in model.named_modules():
        if not name or isinstance(module, TensorParallelLayer):
            continue
        kind = plan.decide(name, module)
        if kind == "fused":
            layouts[name] = _resolve_fused(model, name, module)
            kind = "column"
        if kind == "head" and _tied_to_input_embedding(model, module):
            kind = "skip"  # DeepSpeed leaves a head tied to the embedding replicated
        if kind != "skip":
            decisions.append((name, kind))
    # Check every division before changing anything, so a failure leaves the model whole.
    for name, kind in decisions:
        module = model.get_submodule(name)
        if not _is_projection(module):
            raise PartitionError(
                f"AutoTP cannot partition '{name}': {type(module).__name__} is not an nn.Linear"
            )
        in_features, out_features = _features(module)
        features = out_features if kind == "column" else in_features
        if name in layouts:
            check_sections(layouts[name], tp_size, name)
        if features % tp_size:
            raise PartitionError(
                f"AutoTP cannot partition '{name}': {'out' if kind == 'column' else 'in'}_features="
                f"{features} is not divisible by the tensor-parallel size {tp_size}"
            )
    touched = {
        name.rpartition(".")[0]
        for name, kind in decisions
        if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "query", "key", "value")
        or (name in layouts and layouts[name].attention)
    }
    for parent in touched:  # validate before the split
        mod = model.get_submodule(parent) if parent else model
        for attr in HEAD_ATTRS:
            value = getattr(mod, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value % tp_size:
                raise PartitionError(
                    f"AutoTP cannot partition '{parent}': {attr}={value} is not divisible by the "
                    f"tensor-parallel size {tp_size}"
                )
    cls_of = {"column": LinearLayer, "row": LinearAllreduce, "head": LmHeadLinearAllreduce}
    for name, kind in decisions:
        parent, _, leaf = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        sections = layouts[name].sections if name in layouts else None
        setattr(holder, leaf, cls_of[kind](getattr(holder, leaf), tp_group, name=name, sections=sections))
    _adjust_heads(model, touched, tp_size)
    for name, layout in layouts.items():
        if layout.localize is not None:
            parent = name.rpartition(".")[0]
            layout.localize(model.get_submodule(parent) if parent else model, tp_size)
    return [name for name, _ in decisions]
