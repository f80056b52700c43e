"""FLOPs and MACs of the aten ops a forward runs, observed with a ``TorchDispatchMode``.

Matrix products, convolutions and attention use torch's own formulas (``torch.utils.flop_counter``'s
registry: ``2 * MACs``). Around them, the ops DeepSpeed's profiler also charges are counted with its
conventions, so totals agree with it:

* activations (relu, gelu, silu, elu, leaky_relu, relu6, prelu) and softmax: one FLOP per input element;
* layer/group norm: 5 per element (4 without affine weights); batch norm: the same in training, 2 (1)
  in eval;
* pooling: one per input element; a convolution's bias: one per output element.

Note: [where counts differ from DeepSpeed] DeepSpeed patches Python functions, so it charges
``torch.add``/``torch.mul`` calls but not ``a + b``, and an ``addmm``'s bias add; at the aten level the
two spellings are one op, so neither is charged here. ``adaptive_avg_pool`` to 1x1 runs as ``aten.mean``
and is not charged either. These are element-wise terms, far below 1% of a model whose cost is in
matrix products.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _numel(t: Any) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _per_input(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    return _numel(args[0]), 0


def _norm_affine(weight: Any, numel: int) -> tuple[int, int]:
    return numel * (5 if isinstance(weight, torch.Tensor) else 4), 0


def _layer_norm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    weight = args[2] if len(args) > 2 else kwargs.get("weight")
    return _norm_affine(weight, _numel(args[0]))


def _group_norm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    return _norm_affine(args[1] if len(args) > 1 else None, _numel(args[0]))


def _batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    training = bool(args[5]) if len(args) > 5 else bool(kwargs.get("training", False))
    affine = isinstance(weight, torch.Tensor)
    per_element = (5 if affine else 4) if training else (2 if affine else 1)
    return _numel(args[0]) * per_element, 0


def _batch_norm_eval(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    return _numel(args[0]) * (2 if isinstance(args[1], torch.Tensor) else 1), 0


def _registry_flops(packet: Any) -> Callable[..., tuple[int, int]]:
    formula = flop_counter.flop_registry[packet]

    def count(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
        flops = int(formula(*args, **kwargs, out_val=out))
        return flops, flops // 2

    return count


def _convolution(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    flops, macs = _registry_flops(aten.convolution)(args, kwargs, out)
    bias = args[2] if len(args) > 2 else None
    result = out[0] if isinstance(out, (tuple, list)) else out
    return flops + (_numel(result) if isinstance(bias, torch.Tensor) else 0), macs


def _cpu_flash_attention(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    # torch's registry knows the CUDA attention kernels; the CPU one computes the same two products.
    q, k, v = args[:3]
    flops = int(flop_counter.sdpa_flop_count(q.shape, k.shape, v.shape))
    return flops, flops // 2


def _build_rules() -> dict[Any, Callable[..., tuple[int, int]]]:
    rules: dict[Any, Callable[..., tuple[int, int]]] = {}
    for packet in flop_counter.flop_registry:
        # Forward ops only (the profile covers a forward); flex attention is a higher-order op, not aten.
        if "backward" in str(packet) or not isinstance(packet, torch._ops.OpOverloadPacket):
            continue
        rules[packet] = _registry_flops(packet)
    rules[aten.convolution] = _convolution
    rules[aten._convolution] = _convolution
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        rules[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_attention
    for op in (
        aten.relu,
        aten.gelu,
        aten.silu,
        aten.elu,
        aten.leaky_relu,
        aten.hardtanh,
        aten._prelu_kernel,
        aten._softmax,
        aten.max_pool1d,
        aten.max_pool2d_with_indices,
        aten.max_pool3d_with_indices,
        aten.avg_pool2d,
        aten.avg_pool3d,
        aten._adaptive_avg_pool2d,
        aten._adaptive_avg_pool3d,
        aten.adaptive_max_pool2d,
        aten.adaptive_max_pool3d,
    ):
        rules[op] = _per_input
    rules[aten.native_layer_norm] = _layer_norm
    rules[aten.native_group_norm] = _group_norm
    rules[aten.native_batch_norm] = _batch_norm
    rules[aten._native_batch_norm_legit] = _batch_norm
    rules[aten._native_batch_norm_legit_no_training] = _batch_norm_eval
    return rules


RULES = _build_rules()


class OpCounter(TorchDispatchMode):
    """Charges each counted op's (FLOPs, MACs) to ``sink`` (a callable taking both)."""

    def __init__(self, sink: Callable[[int, int], None]) -> None:
        super().__init__()
        self.sink = sink

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = RULES.get(func.overloadpacket)
        if rule is not None:
            flops, macs = rule(args, kwargs, out)
            self.sink(flops, macs)
        return out
