"""DeepSpeed's engine getters (``engine.train_batch_size()``, ``engine.get_lr()``, ...), which clients call.

They read the validated config, the optimizer and the process group; the engine mixes them in.
"""

from __future__ import annotations

from typing import Any

import ds_comm
from ds_engine.config import DeepSpeedConfig, reconcile_batch
from ds_zero import Trainer


class EngineAccessors:
    """DeepSpeed's getter methods; expects ``_config``, ``optimizer``, ``dp_group``, ``dp_world_size``
    and ``_step_applied`` (set by the engine)."""

    _config: DeepSpeedConfig
    optimizer: Trainer | None
    dp_group: Any
    dp_world_size: int
    _step_applied: bool

    def train_batch_size(self) -> int:
        """Global batch per optimizer step."""
        return self._config.train_batch_size

    def train_micro_batch_size_per_gpu(self) -> int:
        """Samples per rank per micro-step."""
        return self._config.train_micro_batch_size_per_gpu

    def gradient_accumulation_steps(self) -> int:
        """Micro-steps per optimizer step."""
        return self._config.gradient_accumulation_steps

    def get_batch_info(self) -> tuple[int, int, int]:
        """(train_batch_size, micro batch per rank, accumulation steps)."""
        return (
            self.train_batch_size(),
            self.train_micro_batch_size_per_gpu(),
            self.gradient_accumulation_steps(),
        )

    def set_train_batch_size(self, train_batch_size: int) -> None:
        """Change the global batch by changing accumulation (the micro batch stays)."""
        self._config.batch = reconcile_batch(
            train_batch_size=train_batch_size,
            micro_batch_per_gpu=self.train_micro_batch_size_per_gpu(),
            gradient_accumulation_steps=None,
            dp_world_size=self.dp_world_size,
        )

    def set_train_micro_batch_size(self, micro_batch_size: int) -> None:
        """Change the micro batch (accumulation stays; the global batch follows)."""
        self._config.batch = reconcile_batch(
            train_batch_size=None,
            micro_batch_per_gpu=micro_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps(),
            dp_world_size=self.dp_world_size,
        )

    def zero_optimization_stage(self) -> int:
        """The ZeRO stage."""
        return self._config.zero_optimization_stage

    def zero_optimization(self) -> bool:
        """Whether a ZeRO stage above 0 runs."""
        return self._config.zero_enabled

    def torch_autocast_enabled(self) -> bool:
        """Whether forward runs under ``torch.autocast`` (the ``torch_autocast`` section)."""
        return self._config.torch_autocast.enabled

    def torch_autocast_dtype(self) -> Any:
        """The ``torch.autocast`` dtype (None: the accelerator's autocast default)."""
        from ds_engine.autocast import autocast_dtype_of

        return autocast_dtype_of(self._config.torch_autocast.dtype)

    def torch_autocast_lower_precision_safe_modules(self) -> list[str]:
        """Module classes whose parameters carry the autocast dtype as ``comm_dtype``."""
        from ds_engine.autocast import default_lower_precision_modules

        names = self._config.torch_autocast.lower_precision_safe_modules
        return list(names) if names is not None else default_lower_precision_modules()

    def fp16_enabled(self) -> bool:
        """Whether fp16 training is on."""
        return self._config.fp16_enabled

    def bfloat16_enabled(self) -> bool:
        """Whether bf16 training is on."""
        return self._config.bfloat16_enabled

    def gradient_clipping(self) -> float:
        """The global-norm clip (0: none)."""
        return self._config.gradient_clipping

    def steps_per_print(self) -> int | None:
        """Optimizer steps between progress lines (None: never)."""
        return self._config.steps_per_print

    def wall_clock_breakdown(self) -> bool:
        """Whether forward/backward/step are timed."""
        return self._config.wall_clock_breakdown

    def dynamic_loss_scale(self) -> bool:
        """Whether fp16 loss scaling is dynamic."""
        return self.fp16_enabled() and self._config.fp16.dynamic

    def loss_scale(self) -> float:
        """The current loss scale (1.0 without fp16)."""
        return self.optimizer.cur_scale if self.optimizer is not None else 1.0

    def optimizer_name(self) -> str | None:
        """The config optimizer's type."""
        return self._config.optimizer.type if self._config.optimizer else None

    def scheduler_name(self) -> str | None:
        """The config scheduler's type."""
        return self._config.scheduler.type if self._config.scheduler else None

    def get_lr(self) -> list[float]:
        """The learning rate of each param group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups] if self.optimizer is not None else []

    def get_mom(self) -> list[Any]:
        """The momentum (``betas`` or ``momentum``) of each param group."""
        if self.optimizer is None:
            return []
        return [g.get("betas", g.get("momentum")) for g in self.optimizer.param_groups]

    def get_global_grad_norm(self) -> float | None:
        """The global gradient norm of the last applied step (before clipping)."""
        return self.optimizer.get_global_grad_norm() if self.optimizer is not None else None

    def was_step_applied(self) -> bool:
        """Whether the last boundary's optimizer step was applied (not skipped for an overflow)."""
        return self._step_applied

    def get_data_parallel_rank(self) -> int:
        """This rank in the data-parallel group."""
        return ds_comm.get_rank(self.dp_group)

    def get_sequence_parallel_group(self) -> Any:
        """The sequence-parallel group (``None`` without sequence parallelism; Note [sp groups])."""
        return getattr(self, "seq_parallel_group", None)

    def get_model_parallel_rank(self) -> int:
        """This rank in the tensor-parallel group (AutoTP), else 0."""
        group = getattr(self, "tp_group", None)
        return ds_comm.get_rank(group) if group is not None else 0

    def elasticity_enabled(self) -> bool:
        """``elasticity.enabled``: the batch triple came from the elastic computation."""
        return bool(self._config.model.elasticity.enabled)

    def autotuning_enabled(self) -> bool:
        """``autotuning.enabled``: this run measures its profile steps for the autotuner."""
        return bool(self._config.model.autotuning.enabled)

    def zero_gather_16bit_weights_on_model_save(self) -> bool:
        """``zero_optimization.stage3_gather_16bit_weights_on_model_save``."""
        return self._config.zero_optimization.gather_16bit_weights_on_model_save
