"""``deepspeed.initialize`` and ``deepspeed.add_config_arguments``."""

from __future__ import annotations

import argparse
from typing import Any

import ds_comm
from ds_comm.rank_exit import install_exit_hook
from ds_engine.config import DeepSpeedConfig
from ds_engine.engine import DeepSpeedEngine


def initialize(
    args: Any = None,
    model: Any = None,
    optimizer: Any = None,
    model_parameters: Any = None,
    training_data: Any = None,
    lr_scheduler: Any = None,
    distributed_port: int = 29500,
    mpu: Any = None,
    dist_init_required: bool | None = None,
    collate_fn: Any = None,
    config: Any = None,
    mesh_param: Any = None,
    config_params: Any = None,
) -> tuple[DeepSpeedEngine, Any, Any, Any]:
    """Build the engine; returns ``(engine, engine.optimizer, engine.training_dataloader, engine.lr_scheduler)``.

    The config comes from exactly one of ``config``, ``config_params`` or ``args.deepspeed_config``.
    The process group is initialised here when it is not yet (``dist_init_required=False`` skips that).
    """
    # Before the config is read: a config mistake then prints as one line (Note [user errors]).
    install_exit_hook()
    if model is None:
        raise ValueError("deepspeed.initialize needs a model (model=...)")
    if mesh_param is not None:
        raise NotImplementedError(
            "deepspeed.initialize(mesh_param=...) (tensor/sequence parallel meshes) is not supported yet"
        )
    ds_comm.init_distributed(
        distributed_port=distributed_port, dist_init_required=dist_init_required, verbose=False
    )
    engine_class = DeepSpeedEngine
    from ds_parallel.pipe import PipelineModule

    if isinstance(model, PipelineModule):  # DeepSpeed returns its PipelineEngine for a PipelineModule
        from ds_engine.pipe_engine import PipelineEngine

        engine_class = PipelineEngine
    engine = engine_class(
        args=args,
        model=model,
        optimizer=optimizer,
        model_parameters=model_parameters,
        training_data=training_data,
        lr_scheduler=lr_scheduler,
        mpu=mpu,
        dist_init_required=dist_init_required,
        collate_fn=collate_fn,
        config=config,
        config_params=config_params,
    )
    return engine, engine.optimizer, engine.training_dataloader, engine.lr_scheduler


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add DeepSpeed's ``--deepspeed`` and ``--deepspeed_config`` (and the old ``--deepscale*``) flags."""
    group = parser.add_argument_group("DeepSpeed", "DeepSpeed configurations")
    group.add_argument(
        "--deepspeed",
        default=False,
        action="store_true",
        help="Enable DeepSpeed (a flag for the user's script; the engine does not read it)",
    )
    group.add_argument(
        "--deepspeed_config", default=None, type=str, help="DeepSpeed JSON configuration file."
    )
    group.add_argument("--deepscale", default=False, action="store_true", help=argparse.SUPPRESS)
    group.add_argument("--deepscale_config", default=None, type=str, help=argparse.SUPPRESS)
    return parser


__all__ = ["DeepSpeedConfig", "DeepSpeedEngine", "add_config_arguments", "initialize"]
