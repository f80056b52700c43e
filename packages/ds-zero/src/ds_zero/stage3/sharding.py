"""Turn a model into stage-3 shard units with FSDP2's ``fully_shard``, following a :class:`UnitPlan`.

What this module owns beyond ``fully_shard``: the unit rule's outcome (which modules, which parameters
stay whole, which units stay gathered), fp32 shards (Note [shards are masters]), models built under
``zero.Init`` (each unit is gathered from its Init shards just before it is sharded again, so the
whole model is never materialised), DeepSpeed's ``ds_*`` attributes, and ``load_state_dict`` of
full tensors into the shards.

Note: [shards are masters] A unit's sharded parameters are kept in fp32 whatever the compute dtype
(in ``master_dtype`` with ``bf16_master_weights_and_grads``, Note [low-precision masters]):
FSDP2 casts them to ``param_dtype`` as it gathers. So the shard is at once the parameter's only
persistent copy and the optimizer's fp32 master (no second copy), and gradients, reduced in
``reduce_dtype`` (Note [gradient dtypes] in :mod:`ds_zero.dtypes`), come back shard-sized in the shard's dtype.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Set as AbstractSet
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor

import ds_comm
from ds_zero import shm_collectives
from ds_zero.dtypes import grad_dtypes
from ds_zero.entry import StageNotAvailable
from ds_zero.policy import ZeroPolicy
from ds_zero.stage3 import nvme_params, shards
from ds_zero.stage3.comm_log import log_unit_collectives
from ds_zero.stage3.external import external_parameters
from ds_zero.stage3.gathered_status import output_embeddings, tag_gathered_parameters
from ds_zero.stage3.hpz import shared_secondary_mesh
from ds_zero.stage3.leaf import mark_fine_grained, z3_leaf_module
from ds_zero.stage3.mesh_release import release_at_teardown
from ds_zero.stage3.plan import UnitPlan, plan_units
from ds_zero.stage3.policy import hpz_group_size, stage3_of, unit_cap
from ds_zero.stage3.status import ZeroParamStatus, full_numel, mark, zero_param

if TYPE_CHECKING:

    class ShardUnit(FSDPModule, nn.Module):
        """A module after ``fully_shard``: FSDP2 swaps its class for a subclass of both (typing only)."""


# Note [no weak references to parameters]: FSDP2 and nn.Module._apply (``model.cpu()``, as Lightning's
# teardown calls) swap parameter tensors, which torch refuses for a tensor that has weak references.
# So the bookkeeping lives on the parameter (``_ds_unit``: the unit that manages it, which
# GatheredParameters reshards after writing; ``_ds_holders``: the module attributes that hold it, where
# GatheredParameters puts full views) and, keyed weakly by module, in OWNED (module -> its sharded
# parameters by attribute name).
OWNED: weakref.WeakKeyDictionary[nn.Module, dict[str, DTensor]] = weakref.WeakKeyDictionary()


def unit_of(param: Any) -> Any:
    """The FSDP unit that manages ``param`` (None for a parameter that is not sharded)."""
    return getattr(param, "_ds_unit", None)


def holders_of(param: Any) -> list[tuple[weakref.ref, str]]:
    """(module, attribute name) pairs that hold ``param``."""
    return getattr(param, "_ds_holders", [])


@dataclass
class ShardedModel:
    """A model after :func:`shard_model`."""

    module: nn.Module
    plan: UnitPlan
    mesh: DeviceMesh
    group: Any
    replaced: dict[int, nn.Parameter]  # id(parameter before) -> parameter after (for the optimizer)
    names: dict[int, str]  # id(parameter after) -> its name in the model
    status_hooks: list[Any] = field(default_factory=list)  # Note [gathered status]: one per unit

    @property
    def units(self) -> list[ShardUnit]:
        return cast("list[ShardUnit]", self.plan.units)  # shard_model applied fully_shard to each

    def reshard(self) -> None:
        """Drop every gathered copy (after the shards changed outside FSDP's knowledge)."""
        for unit in self.units:
            unit.reshard()


def make_mesh(group: Any) -> DeviceMesh:
    """A 1-D device mesh over the data-parallel ``group`` (None: the world)."""
    device_type = shards.comm_device(group).type
    if group is None:
        mesh = init_device_mesh(device_type, (ds_comm.get_world_size(),))
    else:
        mesh = DeviceMesh.from_group(group, device_type)
    release_at_teardown(mesh)
    return mesh


def _fsdp_policies(policy: ZeroPolicy) -> tuple[MixedPrecisionPolicy, OffloadPolicy]:
    mp = policy.mixed_precision
    reduce = grad_dtypes(mp, 3).reduce  # Note [gradient dtypes]: as at every stage
    if mp.low_precision:
        mixed = MixedPrecisionPolicy(param_dtype=mp.param_dtype, reduce_dtype=reduce)
    else:
        mixed = MixedPrecisionPolicy(reduce_dtype=reduce)
    devices = {policy.offload.optimizer_device, policy.offload.param_device}
    if policy.offload.param_device == "nvme":
        # Note [parameter swapping] in ds_zero.stage3.nvme_params: the shards live on the CPU as with cpu,
        # and their storage is released and reallocated, so they are not page-locked
        return mixed, CPUOffloadPolicy(pin_memory=False)
    # offload_optimizer nvme: the shards (the masters) live in CPU memory as with cpu; the optimizer
    # states go to NVMe (ds_zero.nvme_swapper)
    if "cpu" in devices or "nvme" in devices:
        return mixed, CPUOffloadPolicy(pin_memory=policy.offload.pin_memory and torch.cuda.is_available())
    return mixed, OffloadPolicy()


def _owned_slots(module: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    return [(m, name, p) for m in module.modules() for name, p in m._parameters.items() if p is not None]


def _materialise(param: nn.Parameter, device: torch.device) -> None:
    """Give an Init-sharded parameter its full value again (every rank must call it)."""
    param.data = shards.gather_full(param).to(device)
    nvme_params.drop_partition(param)  # zero.Init(remote_device="nvme"): its file is not needed any more
    zero_param(param).ds_tensor = None
    zero_param(param).ds_status = ZeroParamStatus.AVAILABLE


def _prepare_unit_params(
    unit: nn.Module, persistent: set[int], device: torch.device, dtype: torch.dtype = torch.float32
) -> list[nn.Parameter]:
    """The parameters ``fully_shard(unit)`` will take, full and in ``dtype`` (fp32: Note [shards are masters])."""
    taken, seen = [], set()
    for p in unit.parameters():
        if id(p) in seen or id(p) in persistent or isinstance(p, DTensor):
            continue
        seen.add(id(p))
        if shards.is_init_shard(p):
            _materialise(p, device)
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
        taken.append(p)
    return taken


def _secondary_size(policy: ZeroPolicy, group: Any) -> int:
    """hpZ's secondary group size over ``group`` (Note [hpZ] in :mod:`ds_zero.stage3.policy`); 1: off."""
    world = ds_comm.get_world_size(group)
    size = hpz_group_size(policy, world_size=world)
    if size in (1, world):  # a secondary group of all the data-parallel ranks is the primary one
        return 1
    if world != ds_comm.get_world_size():
        # FSDP2 builds the secondary groups with new_group over the data-parallel ranks only, which
        # every rank of the world would have to call with the same ranks: not so for several groups.
        raise StageNotAvailable(
            "zero_optimization.zero_hpz_partition_size > 1 with a data-parallel group "
            "smaller than the world (other parallel axes) is not built"
        )
    return size


def shard_model(
    module: nn.Module,
    *,
    policy: ZeroPolicy,
    group: Any = None,
    shard_dtype: torch.dtype = torch.float32,
    secondary: bool = True,
) -> ShardedModel:
    """Plan the units of ``module`` and shard them, children first (every rank must call it).

    ``shard_dtype``: the dtype of the shards; fp32 for training (Note [shards are masters]), the model's
    dtype for a forward-only model (Note [inference shards] in :mod:`ds_zero.stage3.inference`).
    ``secondary``: apply ``zero_hpz_partition_size`` (Note [hpZ]; a forward-only model has no backward
    for it to serve)."""
    s3 = stage3_of(policy)
    hpz = _secondary_size(policy, group) if secondary else 1
    numel = sum(full_numel(p) for p in {id(p): p for p in module.parameters()}.values())
    cap = unit_cap(policy, world_size=ds_comm.get_world_size(group), model_numel=numel)
    mark_fine_grained(module, s3.module_granularity_threshold)
    plan = plan_units(
        module,
        cap=cap,
        persistence_threshold=s3.param_persistence_threshold,
        model_persistence_threshold=s3.model_persistence_threshold,
        max_reuse_distance=s3.max_reuse_distance,
        max_live=s3.max_live_parameters,
        external=external_parameters,
        keep_in_root=output_embeddings(module),
    )
    mesh = make_mesh(group)
    device = shards.comm_device(group)
    # Set up now (collective), not inside the first gather; rows sized to the largest unit's fp32 bytes.
    largest = max((sum(full_numel(p) for p in unit.parameters()) for unit in plan.units), default=0)
    shm_collectives.setup(mesh.get_group(), device, 4 * largest)
    mixed, offload = _fsdp_policies(policy)
    persistent = {id(p) for p in plan.persistent}
    for p in plan.persistent:
        if shards.is_init_shard(p):
            _materialise(p, device)
        mark(p, shape=p.shape, group=group, persist=True, status=ZeroParamStatus.AVAILABLE)
    before = _owned_slots(module)
    # passed only when there are any: a torch without the argument still shards models with none
    ignored: dict[str, Any] = {"ignored_params": set(plan.persistent)} if plan.persistent else {}
    if ignored and "ignored_params" not in inspect.signature(fully_shard).parameters:
        raise StageNotAvailable(
            f"stage 3 keeps {len(persistent)} small parameter(s) whole, which needs torch >= 2.7 "
            "(fully_shard(ignored_params=...)); set stage3_param_persistence_threshold to 0"
        )
    with shared_secondary_mesh() if hpz > 1 else nullcontext():  # Note [one secondary mesh]
        for unit in plan.units:
            taken = _prepare_unit_params(unit, persistent, device, shard_dtype)
            root = unit is module
            fully_shard(
                unit,
                mesh=mesh,
                mp_policy=mixed,
                offload_policy=offload,
                **ignored,
                reshard_after_forward=_after_forward(root, id(unit) in plan.keep_gathered, hpz),
            )
            log_unit_collectives(unit)
            for p in taken:  # the optimizer may still hold the old objects: free their full values now
                if not isinstance(
                    p, DTensor
                ):  # (under swap_module_params_on_conversion the object is reused)
                    p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    unused = getattr(module, "set_reduce_scatter_unused_params", None)  # torch >= 2.10
    if unused is not None:
        unused(True)  # parameters unused on a rank reduce as zeros, as in stage 2, rather than hang
    if not policy.reduce.average:
        for unit in cast("list[ShardUnit]", plan.units):
            divide = (
                getattr(unit, "set_gradient_divide_factor", None) or unit.set_reduce_scatter_divide_factor
            )
            divide(1.0)
    replaced, names = _rebind(module, before, plan, group)
    _mark_leaf_parameters(module)  # on the parameters fully_shard put in place
    status_hooks = tag_gathered_parameters(plan.units, OWNED)  # Note [gathered status]
    return ShardedModel(
        module=module,
        plan=plan,
        mesh=mesh,
        group=group,
        replaced=replaced,
        names=names,
        status_hooks=status_hooks,
    )


def cast_whole_tensors(
    module: nn.Module, dtype: torch.dtype, *, keep: AbstractSet[int] = frozenset()
) -> None:
    """After sharding: floating buffers and the parameters that stay whole (persistent ones), except those
    in ``keep`` (ids), follow the model's dtype; the shards keep theirs (Note [shards are masters])."""
    with torch.no_grad():
        for m in module.modules():
            for name, buf in m._buffers.items():
                if buf is not None and buf.is_floating_point() and buf.dtype != dtype:
                    m._buffers[name] = buf.to(dtype)
            for p in m._parameters.values():
                if (
                    p is not None
                    and not isinstance(p, DTensor)
                    and id(p) not in keep
                    and p.is_floating_point()
                    and p.dtype != dtype
                ):
                    p.data = p.data.to(dtype)


def _after_forward(root: bool, kept: bool, hpz: int) -> bool | int | None:
    """``fully_shard``'s ``reshard_after_forward`` for a unit: the root and kept units stay gathered
    into backward; the others reshard to all ranks, or to hpZ's secondary group (Note [hpZ])."""
    if root:
        return None
    if kept:
        return False
    return hpz if hpz > 1 else True


def _mark_leaf_parameters(module: nn.Module) -> None:
    """DeepSpeed's ``ds_z3_leaf_module`` on each parameter under a leaf (what ``z3_leaf_parameter`` reads)."""
    for leaf in (m for m in module.modules() if z3_leaf_module(m)):
        for p in leaf.parameters():
            zero_param(p).ds_z3_leaf_module = leaf


def _rebind(
    module: nn.Module, before: list[tuple[nn.Module, str, nn.Parameter]], plan: UnitPlan, group: Any
) -> tuple[dict[int, nn.Parameter], dict[int, str]]:
    """Old -> new parameter objects; ``ds_*`` attributes, unit owners and load hooks on the new ones."""
    replaced: dict[int, nn.Parameter] = {}
    for owner, name, old in before:
        new = owner._parameters[name]
        assert new is not None  # fully_shard replaces parameters, it does not remove them
        replaced[id(old)] = new
        if new is not old and getattr(old, "ds_id", None) is not None:
            zero_param(new).ds_id = zero_param(old).ds_id
    unit_of_module: dict[int, nn.Module] = {}
    for unit in plan.units:  # children first: a module's innermost unit wins
        for m in unit.modules():
            unit_of_module.setdefault(id(m), unit)
    for owner in module.modules():
        # is_unit_shard, not isinstance: to mypy no Parameter is also a DTensor (their stubs conflict), so
        # it would skip such a branch as unreachable; FSDP2's parameters are both.
        mine = {name: p for name, p in owner._parameters.items() if p is not None and shards.is_unit_shard(p)}
        if mine:
            owner.register_load_state_dict_pre_hook(partial(_load_full_into_shards, mine))
        for name, p in mine.items():
            zero_param(p)._ds_holders = [*holders_of(p), (weakref.ref(owner), name)]
            OWNED.setdefault(owner, {})[name] = p
            if unit_of(p) is None:
                zero_param(p)._ds_unit = unit_of_module[id(owner)]
                mark(p, shape=p.shape, group=group, persist=False, status=ZeroParamStatus.NOT_AVAILABLE)
    names = {id(p): name for name, p in module.named_parameters()}
    return replaced, names


def _load_full_into_shards(
    sharded: dict[str, DTensor], module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """``load_state_dict`` pre-hook: turn full tensors for sharded parameters into this rank's rows."""
    for name, param in sharded.items():
        if module._parameters.get(name) is not param:  # the unit is gathered: load into the shards
            unit_of(param).reshard()
        swapper = getattr(unit_of(param), "_ds_param_swapper", None)
        if swapper is not None:  # offload_param nvme: the rows are read in before the load writes them
            swapper.touch(unit_of(param))
        key = prefix + name
        value = state_dict.get(key)
        if value is None or isinstance(value, DTensor) or value.shape != param.shape:
            continue  # a wrong shape is left for nn.Module to report
        group = shards.mesh_group(param)
        start, end = shards.row_range(param.shape[0], ds_comm.get_world_size(group), ds_comm.get_rank(group))
        local = param.to_local()
        rows = value[start:end].to(device=local.device, dtype=local.dtype)
        state_dict[key] = DTensor.from_local(
            rows,
            param.device_mesh,
            param.placements,
            run_check=False,
            shape=param.shape,
            stride=param.stride(),
        )
