"""Full views of stage-3 parameters: ``GatheredParameters`` and the consolidated state dict.

Note: [gathered views] Inside ``GatheredParameters`` a parameter built under ``zero.Init`` (not yet
wrapped) *is* full: as in DeepSpeed, its ``.data`` becomes the gathered value, so ``param.data`` and
``module.weight`` both work. A parameter already in a shard unit is a DTensor, which cannot change
its local size; the context instead puts a full ``nn.Parameter`` (fp32, the master values) in every
module attribute that holds it, so read and write through the module (``module.weight``), which is
what DeepSpeed's clients do. On exit, with ``modifier_rank``, that rank's values are broadcast and
each rank keeps its own rows; the unit's gathered copies are dropped so the next forward sees them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

import ds_comm
from ds_zero.stage3 import shards
from ds_zero.stage3.external import register_external_parameter, unregister_external_parameter
from ds_zero.stage3.sharding import OWNED, holders_of, unit_of
from ds_zero.stage3.status import ZeroParamStatus, zero_param

# persistent parameter -> (weak) the masters holder to refresh after a modifier writes it
_NOTHING = torch.empty(0)


def _as_list(params: Any) -> list[Tensor]:
    if params is None:
        return []
    if isinstance(params, Tensor):
        return [params]
    out: list[Tensor] = []
    seen: set[int] = set()
    for p in params if isinstance(params, Iterable) else [params]:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _resolve(params: list[Tensor]) -> list[Tensor]:
    """Map gathered copies to their sharded parameters. While a unit is gathered, its modules hold
    FSDP2's full copies, and a caller may hand those in; changes must reach the shards instead."""
    if all(shards.is_zero3_param(p) or getattr(p, "ds_persist", False) for p in params) or not len(OWNED):
        return params
    twin: dict[int, Tensor] = {}
    for owner, named in list(OWNED.items()):
        for name, sharded in named.items():
            if owner._parameters.get(name) is not None:
                twin[id(owner._parameters[name])] = sharded
    out: list[Tensor] = []
    seen: set[int] = set()
    for p in params:
        p = twin.get(id(p), p)
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _modifier_group(param: Tensor) -> Any:
    return (
        shards.mesh_group(param) if isinstance(param, DTensor) else getattr(param, "ds_process_group", None)
    )


class GatheredParameters:
    """Gather ``params`` for the duration of the context (Note [gathered views]); every rank must enter it.

    ``modifier_rank``: the (global) rank whose changes are kept and broadcast on exit; None: changes
    are discarded. ``fwd_module``: a module whose forward uses these parameters (registered as
    external to it while the context lasts). ``enabled=False``: do nothing.
    """

    def __init__(
        self,
        params: Any,
        modifier_rank: int | None = None,
        fwd_module: nn.Module | None = None,
        enabled: bool = True,
    ) -> None:
        candidates = _resolve(_as_list(params)) if enabled else []
        # Init shards are Parameters (is_init_shard checks), and so are FSDP2's shards (holding DTensors)
        self.params = cast(
            "list[nn.Parameter]",
            [p for p in candidates if shards.is_init_shard(p) or shards.is_unit_shard(p)],
        )
        whole = [p for p in candidates if getattr(p, "ds_persist", False) and not shards.is_unit_shard(p)]
        self.persistent = whole if modifier_rank is not None else []
        self.modifier_rank = modifier_rank
        self.fwd_module = fwd_module
        self._full: dict[int, nn.Parameter] = {}

    def __enter__(self) -> None:
        for p in self.params:
            _bring_in(p)
            full = shards.gather_full(p)
            if isinstance(p, DTensor):
                view = nn.Parameter(full.clone(), requires_grad=p.requires_grad)
                if hasattr(p, "ds_active_sub_modules"):  # clients clear it on module.parameters() here
                    zero_param(view).ds_active_sub_modules = zero_param(p).ds_active_sub_modules
                self._full[id(p)] = view
                self._swap(p, view)
            else:
                p.data = full.to(shards.init_partition(p).device).view(zero_param(p).ds_shape)
                zero_param(p).ds_status = ZeroParamStatus.AVAILABLE
            if self.fwd_module is not None:
                register_external_parameter(self.fwd_module, p)

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.modifier_rank is not None and exc[0] is None:
                self._keep_modifier_values(self.modifier_rank)
        finally:
            for p in self.params:
                if isinstance(p, DTensor):
                    self._swap(p, p)
                    unit = unit_of(p)
                    if unit is not None:
                        unit.reshard()
                else:
                    local = shards.init_partition(p)
                    p.data = torch.empty(0, dtype=local.dtype, device=local.device)
                    zero_param(p).ds_status = ZeroParamStatus.NOT_AVAILABLE
                if self.fwd_module is not None:
                    unregister_external_parameter(self.fwd_module, p)
            self._full.clear()

    def _keep_modifier_values(self, src: int) -> None:
        for p in self.params:
            group = _modifier_group(p)
            if isinstance(p, DTensor):
                full = shards.broadcast_full(self._full[id(p)].detach(), src=src, group=group)
                shards.write_rows(p, full)
            else:
                full = shards.broadcast_full(p.data, src=src, group=group)
                local = shards.init_partition(p)
                local.copy_(shards.flat_slice(full, group=group).to(local.device))
        owners = {}
        for whole in self.persistent:
            with torch.no_grad():
                whole.data.copy_(
                    shards.broadcast_full(whole.data, src=src, group=getattr(whole, "ds_process_group", None))
                )
            ref = getattr(whole, "_ds_persistent_owner", None)  # Note [no weak references to parameters]
            owner = ref() if ref is not None else None
            if owner is not None:
                owners[id(owner)] = owner
        for owner in owners.values():
            owner.refresh_from_model()

    @staticmethod
    def _swap(param: nn.Parameter, value: nn.Parameter) -> None:
        for ref, name in holders_of(param):
            owner = ref()
            if owner is not None:
                owner._parameters[name] = value


def _bring_in(param: Tensor) -> None:
    """A unit shard whose rows are on NVMe: read them in (they may be written here; Note [parameter
    swapping] in :mod:`ds_zero.stage3.nvme_params`)."""
    unit = unit_of(param)
    swapper = getattr(unit, "_ds_param_swapper", None)
    if swapper is not None:
        swapper.touch(unit)


def full_state_dict(
    module: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    exclude_frozen_parameters: bool = False,
    rank0_only: bool = True,
    bring: Callable[[Tensor], None] | None = None,
    copy: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor] | None:
    """``module``'s state dict with every parameter full, on the CPU; gathered one parameter at a time.

    Every rank must call it. With ``rank0_only`` only global rank 0 keeps the result (others get
    None), so no other rank ever holds more than one full parameter. Shared parameters stay shared.
    ``dtype`` casts floating-point parameters (buffers keep theirs). ``bring(param)`` runs before each
    parameter is gathered (offload_param nvme: its unit's rows are read in) and ``copy`` makes each kept
    parameter (default: a CPU copy); Note [bounded parameter checkpoints] in ds_zero.stage3.nvme_params.
    """
    take = copy or (lambda t: t.to("cpu", copy=True))
    keep = not rank0_only or ds_comm.get_rank() == 0
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()  # module attributes must be the shards, not gathered (possibly stale) copies
    by_name = dict(module.named_parameters(remove_duplicate=False))
    out: OrderedDict[str, Tensor] = OrderedDict()
    done: dict[int, Tensor] = {}
    for key, value in module.state_dict().items():
        param = by_name.get(key)
        if param is not None and exclude_frozen_parameters and not param.requires_grad:
            continue
        source = param if param is not None else value
        if id(source) not in done:
            if param is not None and bring is not None:
                bring(param)
            full = shards.gather_full(source) if param is not None else value.detach()
            if param is not None and dtype is not None and full.is_floating_point():
                full = full.to(dtype)
            done[id(source)] = take(full) if keep else _NOTHING
        if keep:
            out[key] = done[id(source)]
    return out if keep else None
