"""Full (unsplit) weights of a tensor-parallel model: what ``save_16bit_model`` writes.

Every rank of the tensor-parallel group must call :func:`full_state_dict` (it all-gathers each split
parameter, in ``named_modules`` order, which is the same on every rank).
"""

from __future__ import annotations

from torch import Tensor, nn

from ds_parallel.tensor.layers import TensorParallelLayer


def is_tensor_parallel(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is split by AutoTP."""
    return any(isinstance(m, TensorParallelLayer) for m in model.modules())


def full_state_dict(model: nn.Module, state_dict: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``model.state_dict()`` (or ``state_dict`` with the same keys) with each split tensor replaced by
    its full value; keys follow the plain model (the replaced layers keep ``weight``/``bias`` names)."""
    out = dict(model.state_dict() if state_dict is None else state_dict)
    for name, module in model.named_modules():
        if not isinstance(module, TensorParallelLayer):
            continue
        for pname, param in (("weight", module.weight), ("bias", module.bias)):
            if param is None:
                continue
            key = f"{name}.{pname}" if name else pname
            full = module.full_tensor(param)
            if key in out:
                out[key] = full.to(out[key].dtype)
    return out
