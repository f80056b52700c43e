"""Tensor-parallel linear layers (DeepSpeed's ``deepspeed.module_inject.layers`` names), over ``nn.Linear`` and
transformers' ``Conv1D`` (weight stored transposed), with fused projections split block by block.

A layer takes over an ``nn.Linear``'s own ``Parameter`` objects and narrows their ``.data`` to this rank's
slice, so an optimizer built on ``model.parameters()`` before the split (the HF Trainer does that) still
holds the right tensors. Each split parameter carries ``tensor_model_parallel=True``, ``partition_dim``,
``ds_is_replaced_module=True`` and DeepSpeed's ``gather_params``/``_tp_partition`` methods, which
:class:`GatherReplacedLayerParams` calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ds_parallel.tensor.comm import copy_to_tensor_region, reduce_from_tensor_region

DS_IS_REPLACED_MODULE = "ds_is_replaced_module"
DS_TENSOR_MODEL_PARALLEL = "tensor_model_parallel"

if TYPE_CHECKING:  # typing only: neither class is ever instantiated

    class Conv1D(nn.Module):
        """transformers' ``Conv1D`` as :func:`is_conv1d` recognises it (transformers is not a dependency)."""

        nf: int
        nx: int
        weight: nn.Parameter
        bias: nn.Parameter | None

    class SplitParameter(nn.Parameter):
        """A parameter a :class:`TensorParallelLayer` split: the attributes set on it at run time."""

        partition_dim: int
        _ds_local: Tensor  # while gathered: the local storage to return to
        gather_params: Callable[[list[Tensor]], None]
        _tp_partition: Callable[[list[Tensor]], None]


def split_param(param: Tensor) -> SplitParameter:
    """``param`` itself, typed with the attributes a tensor-parallel layer sets on it."""
    return cast("SplitParameter", param)


class PartitionError(ValueError):
    """A module AutoTP cannot split (sizes not divisible, a fused layout, an unknown layer type)."""


def _split(
    full: Tensor, dim: int, rank: int, size: int, name: str, sections: tuple[int, ...] | None = None
) -> Tensor:
    """This rank's slice of ``full`` along ``dim``: of each section when the tensor fuses several (q, k, v)."""
    blocks = full.split(list(sections), dim=dim) if sections else (full,)
    for block in blocks:
        if block.shape[dim] % size:
            raise PartitionError(
                f"AutoTP cannot partition '{name}': dimension {dim} of shape {tuple(full.shape)} "
                f"(sections {sections}) is not divisible by the tensor-parallel size {size}"
            )
    return torch.cat([block.chunk(size, dim=dim)[rank] for block in blocks], dim=dim).contiguous()


def _gather(shard: Tensor, dim: int, group: Any, sections: tuple[int, ...] | None = None) -> Tensor:
    """The full tensor from every rank's ``shard``; with ``sections``, each rank's piece of each section is put
    back in its section (the inverse of :func:`_split`)."""
    size = dist.get_world_size(group)
    if size == 1:
        return shard.detach().clone()
    parts = [torch.empty_like(shard) for _ in range(size)]
    dist.all_gather(parts, shard.detach().contiguous(), group=group)
    if not sections or len(sections) == 1:
        return torch.cat(parts, dim=dim)
    local = [s // size for s in sections]
    pieces = [part.split(local, dim=dim) for part in parts]
    return torch.cat([pieces[r][j] for j in range(len(sections)) for r in range(size)], dim=dim)


def is_conv1d(module: nn.Module) -> TypeGuard[Conv1D]:
    """Whether ``module`` is a transformers ``Conv1D`` (GPT-2's projections): a linear map whose weight is
    stored transposed, ``[in_features, out_features]``, computing ``x @ weight + bias``."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, Tensor)
        and tuple(weight.shape) == (module.nx, module.nf)
    )


def _project(x: Tensor, weight: Tensor, bias: Tensor | None, transposed: bool) -> Tensor:
    """``x`` times the (local) weight plus ``bias``, in ``nn.Linear``'s or ``Conv1D``'s orientation."""
    if not transposed:
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.addmm(bias, flat, weight) if bias is not None else flat @ weight  # as Conv1D computes it
    return out.view(*x.shape[:-1], weight.shape[1])


class TensorParallelLayer(nn.Module):
    """A linear layer (``nn.Linear`` or a transformers ``Conv1D``) whose weight is split over ``mp_group``.

    ``sections`` (column layers only) are the sizes of the blocks a fused projection concatenates along its
    output features (q, k, v or gate, up); each block is split on its own, so a rank holds its 1/TP of each,
    in the same order, and gathering puts every block back where the unsplit layer has it."""

    partition_dim = 0  # what is split: 0 output features (column) or 1 input features (row), nn.Linear's dims

    def __init__(
        self,
        module: nn.Module,
        mp_group: Any,
        name: str | None = None,
        sections: tuple[int, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.transposed = is_conv1d(module)
        if not isinstance(module, nn.Linear) and not self.transposed:
            raise PartitionError(
                f"AutoTP cannot partition '{name}': {type(module).__name__} is not an nn.Linear "
                "(fused or custom layers need a partition_config layer spec)"
            )
        self.mp_group = mp_group
        self.tp_world_size = dist.get_world_size(mp_group) if dist.is_initialized() else 1
        self.tp_index = dist.get_rank(mp_group) if dist.is_initialized() else 0
        self.name = name
        if self.transposed:
            self.in_features, self.out_features = module.nx, module.nf
        else:
            self.in_features, self.out_features = module.in_features, module.out_features
        if sections is not None and (self.partition_dim != 0 or sum(sections) != self.out_features):
            raise PartitionError(
                f"AutoTP cannot partition '{name}': sections {tuple(sections)} must add up to "
                f"out_features={self.out_features} of a column-parallel layer"
            )
        self.sections = tuple(sections) if sections is not None else None
        # nn.Linear and Conv1D hold both as Parameters (the bias: or None); nn.Module's type cannot say so
        self.weight = cast(nn.Parameter, module.weight)
        self.bias = cast("nn.Parameter | None", module.bias)
        self._tp_partition([p for p in (self.weight, self.bias) if p is not None])
        for p in (self.weight, self.bias):
            if p is not None:
                setattr(p, DS_IS_REPLACED_MODULE, True)
                split_param(p).gather_params = self.gather_params
                split_param(p)._tp_partition = self._tp_partition

    def _dim_of(self, param: Tensor) -> int | None:
        """The dimension of ``param`` that is split (``None``: replicated)."""
        if param is self.weight or param.dim() > 1:
            # Conv1D stores [in, out]: its output features are dim 1
            return 1 - self.partition_dim if self.transposed else self.partition_dim
        return 0

    def _sections_of(self, param: Tensor) -> tuple[int, ...] | None:
        return self.sections  # only column layers have them, and there weight and bias split by output

    def _tp_partition(self, params_list: list[Tensor]) -> None:
        """Narrow each (full) parameter in ``params_list`` to this rank's slice, in place."""
        for p in params_list:
            dim = self._dim_of(p)
            if dim is None:
                setattr(p, DS_TENSOR_MODEL_PARALLEL, False)
                continue
            local = _split(
                p.data, dim, self.tp_index, self.tp_world_size, f"{self.name}", self._sections_of(p)
            )
            home = p.__dict__.pop("_ds_local", None)
            if home is not None:  # back from a gather: write into the storage ZeRO's flat buffer aliases
                with torch.no_grad():
                    home.copy_(local)
                local = home
            p.data = local
            setattr(p, DS_TENSOR_MODEL_PARALLEL, True)
            split_param(p).partition_dim = dim

    @torch.no_grad()
    def gather_params(self, params_list: list[Tensor]) -> None:
        """Replace each split parameter's data by the full tensor (all-gather over ``mp_group``)."""
        for p in params_list:
            if getattr(p, DS_TENSOR_MODEL_PARALLEL, False):
                split_param(
                    p
                )._ds_local = p.data  # the local storage (a view into ZeRO's flat buffer) to return to
                p.data = _gather(p.data, split_param(p).partition_dim, self.mp_group, self._sections_of(p))

    def full_tensor(self, param: Tensor) -> Tensor:
        """The unsplit value of ``param`` (a collective over ``mp_group``); the parameter is left as it is."""
        if getattr(param, DS_TENSOR_MODEL_PARALLEL, False):
            return _gather(
                param.data, split_param(param).partition_dim, self.mp_group, self._sections_of(param)
            )
        return param.detach().clone()

    def extra_repr(self) -> str:  # noqa: D102
        extra = (", conv1d" if self.transposed else "") + (
            f", sections={self.sections}" if self.sections else ""
        )
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"tp={self.tp_index}/{self.tp_world_size}, split_dim={self.partition_dim}{extra}"
        )


class LinearLayer(TensorParallelLayer):
    """Column parallel: output features split; input replicated (its gradient summed over the group)."""

    partition_dim = 0

    def forward(self, input: Tensor) -> Tensor:  # noqa: D102
        return _project(copy_to_tensor_region(input, self.mp_group), self.weight, self.bias, self.transposed)


class LinearAllreduce(TensorParallelLayer):
    """Row parallel: input features split (input already split); one all-reduce of the output; bias replicated."""

    partition_dim = 1

    def _dim_of(self, param: Tensor) -> int | None:
        if param is not self.weight:
            return None  # the bias is added once, after the sum
        return 0 if self.transposed else 1

    def forward(self, input: Tensor) -> Tensor:  # noqa: D102
        out = reduce_from_tensor_region(_project(input, self.weight, None, self.transposed), self.mp_group)
        return out + self.bias if self.bias is not None else out


class LmHeadLinearAllreduce(LinearAllreduce):
    """Row-parallel LM head (DeepSpeed splits ``lm_head`` by input features): the replicated hidden state
    is sliced here, so its gradient is summed over the group first."""

    def forward(self, input: Tensor) -> Tensor:  # noqa: D102
        x = copy_to_tensor_region(input, self.mp_group)
        x = x.chunk(self.tp_world_size, dim=-1)[self.tp_index]
        return super().forward(x)


class GatherReplacedLayerParams:
    """Context manager: inside, the parameters of a replaced (split) layer hold their full tensors; on exit
    they are split again. A no-op for parameters of layers AutoTP did not replace."""

    def __init__(self, params: Iterable[Tensor] | Tensor, module: nn.Module, enabled: bool = True) -> None:
        self.module = module
        self.params = [params] if isinstance(params, Tensor) else list(params)
        self.enabled = enabled and any(getattr(p, DS_IS_REPLACED_MODULE, False) for p in self.params)

    def __enter__(self) -> None:
        if self.enabled:
            split_param(self.params[0]).gather_params(self.params)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            split_param(self.params[0])._tp_partition(self.params)


__all__ = [
    "DS_IS_REPLACED_MODULE",
    "DS_TENSOR_MODEL_PARALLEL",
    "GatherReplacedLayerParams",
    "LinearAllreduce",
    "LinearLayer",
    "LmHeadLinearAllreduce",
    "PartitionError",
    "TensorParallelLayer",
    "is_conv1d",
]
