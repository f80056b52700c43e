"""What clients see of a stage-3 parameter while its unit is gathered, and where the LM head lives.

Note: [head in the root unit] Fused-loss clients (TRL's DPO/GRPO/SFT chunked log-probs, Liger) read
``model.get_output_embeddings().weight`` inside the model's forward without calling the head module.
DeepSpeed's clients then check ``param.ds_status`` and gather it with ``GatheredParameters`` when it
is not ``AVAILABLE``. If the head were a unit of its own, its weight would still be a sharded DTensor
there (FSDP2 gathers a unit only around that unit's forward), TRL would take its FSDP2 path
(``full_tensor()``) and then read ``ds_status`` off a plain tensor. So the output embeddings are kept
in the root unit (rule 3 of :mod:`ds_zero.stage3.plan`): gathered for the whole forward, which costs
little, since the head is the last module forward runs and stays gathered into backward anyway
(``stage3_max_reuse_distance``).

Note: [gathered status] While a unit is gathered, FSDP2 puts plain full ``nn.Parameter`` objects in
the modules; they carry the sharded parameter's ``ds_*`` attributes with ``ds_status`` set to
``AVAILABLE``, as DeepSpeed's gathered parameters do. FSDP2 keeps one such object per parameter for
the life of the model, so they are tagged at their first forward only.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn
from torch.distributed.tensor import DTensor

from ds_zero.stage3.status import ZeroParamStatus, zero_param

_COPIED = ("ds_id", "ds_shape", "ds_numel", "ds_process_group", "ds_z3_leaf_module")


def output_embeddings(module: nn.Module) -> list[nn.Module]:
    """The model's output embeddings (a Hugging Face model's ``get_output_embeddings()``), if any."""
    get = getattr(module, "get_output_embeddings", None)
    if not callable(get):
        return []
    try:
        head = get()
    except (NotImplementedError, AttributeError):
        return []
    return [head] if isinstance(head, nn.Module) else []


def tag_gathered_parameters(
    units: Sequence[nn.Module], owned: Mapping[nn.Module, dict[str, DTensor]]
) -> list[Any]:
    """After each unit's gather, mark its full parameters ``AVAILABLE`` (Note [gathered status]); returns
    the hook handles (generation takes them out with the other forward hooks: ds_zero.stage3.offload_view)."""
    handles = []
    for unit in units:
        entries = [
            (weakref.ref(owner), name)
            for owner in unit.modules()
            for name in owned.get(owner, {})
            if zero_param(owned[owner][name])._ds_unit is unit
        ]
        if entries:  # runs after FSDP2's gather (not prepended)
            handles.append(unit.register_forward_pre_hook(_tagger(entries, owned)))
    return handles


def _tagger(
    entries: list[tuple[Any, str]], owned: Mapping[nn.Module, dict[str, DTensor]]
) -> Callable[..., None]:
    def hook(_module: nn.Module, _args: Any) -> None:
        owner, name = entries[0][0](), entries[0][1]
        first = None if owner is None else owner._parameters.get(name)
        if (
            first is None
            or isinstance(first, DTensor)
            or getattr(first, "ds_status", None) is ZeroParamStatus.AVAILABLE
        ):
            return  # not gathered (hooks taken out), or tagged at an earlier forward
        for ref, attr in entries:
            module = ref()
            full = None if module is None else module._parameters.get(attr)
            if full is None or isinstance(full, DTensor):
                continue
            sharded = owned[module][attr]
            for key in _COPIED:
                if hasattr(sharded, key):
                    setattr(full, key, getattr(sharded, key))
            full.ds_persist = False
            full.ds_status = ZeroParamStatus.AVAILABLE

    return hook
