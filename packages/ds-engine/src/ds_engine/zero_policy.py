"""Translate a validated config into the :class:`ds_zero.ZeroPolicy` the trainer is composed from."""

from __future__ import annotations

import torch

from ds_engine.autocast import autocast_dtype_of
from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError
from ds_engine.config.zero import ZenFlowConfig, ZeroConfig
from ds_zero import LossScalePolicy, MixedPrecisionPolicy, OffloadPolicy, ReducePolicy, ZeroPolicy
from ds_zero.policy import NvmePolicy, ParamNvmePolicy, ZenFlowPolicy

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def dtype_of(name: str | None) -> torch.dtype | None:
    """The torch dtype a config dtype name means (None stays None)."""
    return None if name is None else _DTYPES[name]


def model_dtype(cfg: DeepSpeedConfig) -> torch.dtype:
    """The dtype the model trains in: fp16, bf16 or fp32."""
    if cfg.fp16.enabled:
        return torch.float16
    if cfg.bf16.enabled:
        return torch.bfloat16
    return torch.float32


def _mixed_precision(cfg: DeepSpeedConfig) -> MixedPrecisionPolicy:
    param = model_dtype(cfg)
    declared = dtype_of(cfg.data_types.param_dtype)
    if declared is not None and declared != param:
        raise DeepSpeedConfigError(
            f"'data_types.param_dtype' is {cfg.data_types.param_dtype} but the fp16/bf16 sections select {param}"
        )
    accum = dtype_of(cfg.data_types.grad_accum_dtype)  # None: each stage's default (Note [gradient dtypes])
    master, states = torch.float32, torch.float32
    if cfg.bf16.enabled and cfg.bf16.bf16_master_weights_and_grads:  # Note [low-precision masters] in ds_zero
        if int(cfg.zero_optimization.stage) == 0:
            raise DeepSpeedConfigError(
                "'bf16.bf16_master_weights_and_grads' needs ZeRO stage 1, 2 or 3 "
                "('zero_optimization.stage' is 0)"
            )
        master = torch.bfloat16
        states = torch.bfloat16 if cfg.bf16.bf16_optimizer_states else torch.float32
    return MixedPrecisionPolicy(
        param_dtype=param,
        accum_dtype=accum,
        reduce_dtype=dtype_of(cfg.communication_data_type),
        master_dtype=master,
        optimizer_state_dtype=states,
    )


def _loss_scale(cfg: DeepSpeedConfig) -> LossScalePolicy | None:
    fp16 = cfg.fp16
    if not fp16.enabled:
        return _autocast_loss_scale(cfg)
    return LossScalePolicy(
        dynamic=fp16.dynamic,
        static_scale=fp16.loss_scale or 1.0,
        initial_scale=2.0**fp16.initial_scale_power,
        window=fp16.loss_scale_window,
        hysteresis=fp16.hysteresis,
        consecutive_hysteresis=fp16.consecutive_hysteresis,
        min_scale=fp16.min_loss_scale,
    )


def _autocast_loss_scale(cfg: DeepSpeedConfig) -> LossScalePolicy | None:
    """fp16 autocast scales the loss as ``torch.amp.GradScaler`` does (Note [torch autocast])."""
    autocast = cfg.torch_autocast
    if not autocast.enabled or autocast_dtype_of(autocast.dtype) != torch.float16:
        return None
    return LossScalePolicy(
        dynamic=True,
        initial_scale=2.0**16,
        window=2000,
        hysteresis=1,
        min_scale=2.0**-24,
        raise_at_min_scale=False,
    )


def _pin_memory(zero: ZeroConfig) -> bool:
    """Page-locked offload buffers: the optimizer section's flag, else the parameter section's (stage 3
    offloads both through one placement, Note in ds_zero.stage3.policy), else DeepSpeed's default."""
    for section in (zero.offload_optimizer, zero.offload_param):
        if section is not None and section.device != "none":
            return bool(section.pin_memory)
    return True


def _nvme(cfg: DeepSpeedConfig) -> NvmePolicy | None:
    """Where and how optimizer states are swapped with ``offload_optimizer.device: nvme`` (with ``aio``)."""
    section = cfg.zero_optimization.offload_optimizer
    if section is None or section.device != "nvme":
        return None
    aio = cfg.aio
    return NvmePolicy(
        path=str(section.nvme_path or ""),
        buffer_count=section.buffer_count,
        pipeline_read=section.pipeline_read,
        pipeline_write=section.pipeline_write,
        block_size=aio.block_size,
        queue_depth=aio.queue_depth,
        threads=aio.intra_op_parallelism,
    )


def _param_nvme(cfg: DeepSpeedConfig) -> ParamNvmePolicy | None:
    """Where and how stage-3 parameter shards are swapped with ``offload_param.device: nvme`` (with ``aio``)."""
    section = cfg.zero_optimization.offload_param
    if section is None or section.device != "nvme":
        return None
    aio = cfg.aio
    return ParamNvmePolicy(
        path=str(section.nvme_path or ""),
        buffer_count=section.buffer_count,
        max_in_cpu=section.max_in_cpu,
        block_size=aio.block_size,
        queue_depth=aio.queue_depth,
        threads=aio.intra_op_parallelism,
    )


def zenflow_select_interval(zf: ZenFlowConfig, steps_per_epoch: int | None = None) -> int:
    """Steps between column selections (0: select once), DeepSpeed's rule: ``step`` takes
    ``select_interval`` as steps; ``epoch`` (and ``auto``, which is ``epoch`` with an interval of 1)
    multiplies it by the epoch length: ``steps_per_epoch`` (the engine's data loader), else the
    section's ``steps_per_epoch``, else unknown, and then selection happens once."""
    if zf.select_strategy == "step":
        return int(zf.select_interval)
    epochs = 1 if zf.select_strategy == "auto" else int(zf.select_interval)
    length = steps_per_epoch or zf.steps_per_epoch
    return epochs * length if length else 0


def zenflow_policy(cfg: DeepSpeedConfig, steps_per_epoch: int | None = None) -> ZenFlowPolicy | None:
    """ZenFlow's resolved schedule (``zero_optimization.zenflow``), None without the section."""
    zf = cfg.zero_optimization.zenflow
    if zf is None:
        return None
    if cfg.gradient_accumulation_steps != 1:
        raise DeepSpeedConfigError(
            "'zero_optimization.zenflow' accumulates over its update_interval: 'gradient_accumulation_steps' "
            f"must be 1 (got {cfg.gradient_accumulation_steps})"
        )
    update = int(zf.update_interval)  # "auto" was refused by ZENFLOW_KEYS
    select = zenflow_select_interval(zf, steps_per_epoch)
    if select and select < update:
        raise DeepSpeedConfigError(
            f"'zero_optimization.zenflow.select_interval': {select} steps between selections is less than "
            f"update_interval ({update})"
        )
    return ZenFlowPolicy(
        topk_ratio=zf.topk_ratio,
        select_interval=select,
        update_interval=update,
        overlap_step=zf.overlap_step,
        offload=zf.offload,
        full_warm_up_rounds=zf.full_warm_up_rounds,
    )


def policy_from_config(cfg: DeepSpeedConfig) -> ZeroPolicy:
    """The ZeRO policy a config describes (stage, precision, loss scaling, reduction, offload, clipping)."""
    zero = cfg.zero_optimization
    stage = int(zero.stage)
    policy_class, extra = ZeroPolicy, {}
    if stage == 3:
        from ds_zero import Stage3Policy, Zero3Policy

        policy_class = Zero3Policy
        extra["stage3"] = Stage3Policy(
            prefetch_bucket_numel=int(zero.prefetch_bucket_size),
            param_persistence_threshold=int(zero.param_persistence_threshold),
            max_live_parameters=int(zero.max_live_parameters),
            max_reuse_distance=int(zero.max_reuse_distance),
            gather_16bit_weights_on_model_save=bool(zero.gather_16bit_weights_on_model_save),
            model_persistence_threshold=int(zero.model_persistence_threshold),
            module_granularity_threshold=int(zero.module_granularity_threshold),
            hpz_partition_size=max(1, int(zero.zero_hpz_partition_size)),  # 0 is off too, as in DeepSpeed
        )
    return policy_class(
        **extra,
        stage=stage,
        mixed_precision=_mixed_precision(cfg),
        loss_scale=_loss_scale(cfg),
        reduce=ReducePolicy(
            # unset: adapted to the transport (Note [adaptive buckets] in ds_zero.policy)
            bucket_numel=zero.reduce_bucket_size if "reduce_bucket_size" in zero.model_fields_set else None,
            average=cfg.gradient_allreduce_op == "mean",
            prescale=cfg.prescale_gradients,
            predivide_factor=cfg.gradient_predivide_factor,
            # Stage 0 always overlaps its all-reduce with backward: same numbers, earlier communication.
            overlap=True if stage == 0 else bool(zero.overlap_comm),
            reduce_scatter=zero.reduce_scatter,
        ),
        offload=OffloadPolicy(
            optimizer_device=zero.offload_optimizer_device,
            param_device=zero.offload_param_device,
            pin_memory=_pin_memory(zero),
            nvme=_nvme(cfg),
            param_nvme=_param_nvme(cfg),
        ),
        clip_grad=cfg.gradient_clipping,
        zenflow=zenflow_policy(cfg),
        # Note [non-finite gradients] in ds_zero.trainer: every precision; bf16 may opt out explicitly.
        check_overflow=not (cfg.bf16.enabled and not cfg.bf16.check_grad_overflow),
    )
