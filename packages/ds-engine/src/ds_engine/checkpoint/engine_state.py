"""What a checkpoint saves and restores of an engine: the one typed seam between the checkpoint code and
``DeepSpeedEngine`` (which implements it, as ``PipelineEngine`` does), so that neither reads the other's
internals unchecked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

if TYPE_CHECKING:
    from ds_engine.config import DeepSpeedConfig
    from ds_zero import Trainer


class StatefulScheduler(Protocol):
    """An LR schedule as a checkpoint sees it (the config's, or any client schedule with torch's methods)."""

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class CheckpointedEngine(Protocol):
    """The engine's attributes and getters that :mod:`ds_engine.checkpoint.engine_io` and the expert
    checkpoint modules read, and the counters a load writes back."""

    # the counters a checkpoint restores (Note [micro-steps] in ds_engine.engine)
    global_steps: int
    global_samples: int
    skipped_steps: int
    # set where a load restored the experts' optimizer state (Note [expert optimizer state])
    moe_optimizer_loaded: bool

    @property
    def module(self) -> nn.Module: ...
    @property
    def optimizer(self) -> Trainer | None: ...
    @property
    def lr_scheduler(self) -> StatefulScheduler | None: ...
    @property
    def _config(self) -> DeepSpeedConfig: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def checkpoint_group(self) -> Any: ...  # a gloo ProcessGroup, or None in a one-process world
    @property
    def seq_dp_world_size(self) -> int: ...  # the ranks holding optimizer shards
    @property
    def mp_world_size(self) -> int: ...  # AutoTP's tensor-parallel size: one model file per tensor rank
    @property
    def has_moe_layers(self) -> bool: ...

    def get_data_parallel_rank(self) -> int: ...
    def get_model_parallel_rank(self) -> int: ...
    def zero_optimization_stage(self) -> int: ...
    def train_batch_size(self) -> int: ...
