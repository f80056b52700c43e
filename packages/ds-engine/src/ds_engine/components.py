"""What the engine constructor assembles: the basic optimizer, the LR schedule, the replicated start.

DeepSpeed's rules: a client optimizer (instance, or callable taking the model parameters) wins over
the config's; a client LR schedule (instance, or callable taking the basic optimizer) wins over the
config's; without either, the engine has none.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

import ds_comm
from ds_engine.builders import build_optimizer, build_scheduler
from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError
from ds_zero import shm_collectives

logger = logging.getLogger("ds_engine")


def _drop_empty_groups(optimizer: torch.optim.Optimizer) -> None:
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if len(g["params"]) > 0]


def _check_duplicates(optimizer: torch.optim.Optimizer) -> None:
    seen: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in seen:
                raise ValueError("a parameter appears in more than one optimizer param group")
            seen.add(id(p))


def basic_optimizer(
    client: Any, model_parameters: Any, module: nn.Module, cfg: DeepSpeedConfig, device: torch.device
) -> torch.optim.Optimizer | None:
    """The torch optimizer the trainer wraps: the client's, the client callable's, or the config's."""
    params = model_parameters if model_parameters is not None else [p for p in module.parameters()]
    if client is not None:
        if isinstance(client, torch.optim.Optimizer):
            optimizer = client
        elif callable(client):
            optimizer = client(params)
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(
                    f"the optimizer callable returned a {type(optimizer).__name__}, not a torch Optimizer"
                )
        else:
            raise TypeError(f"optimizer must be a torch Optimizer or a callable, got {type(client).__name__}")
        if cfg.optimizer is not None:
            logger.warning(
                "both a client optimizer and a config 'optimizer' section were given; using the client's"
            )
    elif cfg.optimizer is not None:
        optimizer = build_optimizer(cfg.optimizer, params, on_cpu=device.type == "cpu")
    else:
        return None
    _drop_empty_groups(optimizer)
    _check_duplicates(optimizer)
    return optimizer


def lr_scheduler(client: Any, cfg: DeepSpeedConfig, engine_optimizer: Any, basic: Any) -> Any:
    """The LR schedule the engine steps: the client's, the client callable's, or the config's."""
    if client is not None:
        if isinstance(client, type) or (callable(client) and not hasattr(client, "step")):
            return client(basic)
        if cfg.scheduler is not None:
            logger.warning(
                "both a client LR scheduler and a config 'scheduler' section were given; using the client's"
            )
        return client
    if cfg.scheduler is None:
        return None
    if engine_optimizer is None:
        raise DeepSpeedConfigError(
            "'scheduler' needs an optimizer (a config 'optimizer' section or a client one)"
        )
    return build_scheduler(cfg.scheduler, engine_optimizer)


def _broadcast_on_host(tensors: list[torch.Tensor], group: Any) -> bool:
    """Broadcast through shared memory where every rank of ``group`` is on this host (Note
    [shared-memory collectives] in ds_zero.shm_collectives): for a 100M-parameter model on 2 CPU ranks
    gloo's flatten, loopback send and unflatten took ~0.7 s of the start. False where c10d must serve."""
    on_cpu = all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)
    largest = max((t.numel() * t.element_size() for t in tensors), default=0)
    host = shm_collectives.setup(group, "cpu", largest) if on_cpu else None  # collective: every rank
    if host is None:
        return False
    with torch.no_grad():
        host.broadcast(tensors, src=0)
    return True


def broadcast_module(module: nn.Module, *, group: Any = None, exclude: set[int] | None = None) -> None:
    """Make every rank start from rank 0's parameters and buffers (one broadcast per dtype and device);
    tensors whose ``id`` is in ``exclude`` (expert parameters, which differ by rank) are left alone."""
    if ds_comm.get_world_size(group) == 1:
        return
    src = ds_comm.get_global_rank(group, 0) if group is not None else 0
    skip = exclude or set()
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.numel() > 0 and id(t) not in skip]
    if _broadcast_on_host(tensors, group):
        return
    buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        buckets.setdefault((t.dtype, t.device), []).append(t)
    with torch.no_grad():
        for members in buckets.values():
            flat = _flatten_dense_tensors([t.detach() for t in members])
            ds_comm.broadcast(flat, src, group=group)
            for t, synced in zip(members, _unflatten_dense_tensors(flat, members)):
                t.copy_(synced)
