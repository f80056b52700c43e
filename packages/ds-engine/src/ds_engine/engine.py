"""``DeepSpeedEngine``: forward, backward, step, checkpoints, with DeepSpeed's attribute names.

The engine counts micro-steps and decides accumulation boundaries; the optimizer step itself
(gradient reduction, loss scaling, clipping, master weights) belongs to the trainer that
:func:`ds_zero.wrap` composes for the configured stage, which is also ``engine.optimizer``.

Note: [micro-steps] ``step()`` is called after every micro-batch. It steps the optimizer only at an
accumulation boundary (every ``gradient_accumulation_steps``-th call, or where the client set it with
``set_gradient_accumulation_boundary``); ``global_steps`` counts boundaries, overflow-skipped ones
included (``skipped_steps`` counts those), and the LR schedule moves only on applied steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

import ds_comm
from ds_accel import get_accelerator
from ds_engine import autotp, checkpoint, components, lazy_dynamo, moe, moe_checkpoint
from ds_engine.accessors import EngineAccessors
from ds_engine.autocast import autocast_if_enabled, init_autocast_params
from ds_engine.autotuning_probe import AutotuningProbe
from ds_engine.compile import EngineCompile
from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError, choose_config_source, read_config_source
from ds_engine.dataloader import DeepSpeedDataLoader
from ds_engine.log import get_logger
from ds_engine.monitor import MonitorMaster
from ds_engine.progress import ProgressReporter
from ds_engine.step_guard import StepGuard
from ds_engine.timers import EngineTimers, NoopTimer, SynchronizedWallClockTimer, ThroughputTimer
from ds_engine.topology import build_topology, sequence_parallel_size_of
from ds_engine.zero_policy import model_dtype, policy_from_config
from ds_zero import StageNotAvailable, Trainer, apply_leaf_config, wrap

logger = get_logger()


class DeepSpeedEngine(EngineAccessors, EngineCompile, nn.Module):
    """The training engine ``deepspeed.initialize`` returns (DeepSpeed's getters: :mod:`ds_engine.accessors`)."""

    def __init__(
        self,
        *,
        args: Any = None,
        model: nn.Module | None = None,
        optimizer: Any = None,
        model_parameters: Any = None,
        training_data: Any = None,
        lr_scheduler: Any = None,
        mpu: Any = None,
        dist_init_required: bool | None = None,
        collate_fn: Any = None,
        config: Any = None,
        config_params: Any = None,
        config_class: DeepSpeedConfig | None = None,
        dont_change_device: bool = False,
    ) -> None:
        super().__init__()
        if model is None:
            raise ValueError("deepspeed.initialize needs a model (model=...)")
        ds_comm.init_distributed(dist_init_required=dist_init_required, verbose=False)
        lazy_dynamo.install()  # Note [lazy dynamo]: before the first optimizer is built
        self.mpu = mpu
        # the mesh needs the sequence- and tensor-parallel sizes before the config can reconcile the batch
        if config_class is None:
            source = choose_config_source(args=args, config=config, config_params=config_params)
            config_sp = sequence_parallel_size_of(read_config_source(source))
            config_tp = autotp.tensor_parallel_size(model, source)  # Note [autotp in the engine]
            self._setup_topology(mpu, args, config_sp, config_tp)
            # DeepSpeed 0.19 counts AutoTP ranks in train_batch_size (its config sees the whole world; the HF
            # Trainer fills it so): micro * accumulation * dp * tp. Data still splits over dp ranks only.
            config_class = DeepSpeedConfig(source, mpu, world_size=self.dp_world_size * self.tp_world_size)
        else:
            config_tp = autotp.tensor_parallel_size(model, config_class)
            self._setup_topology(mpu, args, config_class.sequence_parallel_size, config_tp)
        self._config = config_class
        self.config: dict[str, Any] = config_class.config_dict
        get_logger(self._config.log_level)
        accel = get_accelerator()
        self.device = accel.device(self.local_rank)
        if not dont_change_device:
            model.to(self.device)
        self.module = model
        autotp.split_model(self)  # before the broadcast and ZeRO: both see the local shards
        if self.torch_autocast_enabled():  # Note [torch autocast] in ds_engine.autocast
            init_autocast_params(
                model, self.torch_autocast_dtype(), self.torch_autocast_lower_precision_safe_modules()
            )
        leaf = self._config.zero_optimization.leaf_module  # flags only; stage 3 reads them (as DeepSpeed)
        apply_leaf_config(model, classes=leaf.classes, names=leaf.names, name_suffixes=leaf.name_suffixes)
        # Note [engine and experts] in ds_engine.moe: expert groups first, experts broadcast in their own groups.
        self.moe_layers = moe.setup_expert_parallel(
            model,
            sequence_parallel_size=self.sequence_parallel_size,
            use_data_before_expert_parallel_=self._config.use_data_before_expert_parallelism,
        )
        self.has_moe_layers, self.num_experts = (
            bool(self.moe_layers),
            [m.num_experts for m in self.moe_layers],
        )
        components.broadcast_module(model, group=self.dp_group, exclude=moe.expert_param_ids(model))
        moe.broadcast_experts(model)
        if self.has_moe_layers and not isinstance(optimizer, torch.optim.Optimizer):
            model_parameters = moe.moe_model_parameters(model_parameters, model)
        self.checkpoint_group = checkpoint.make_checkpoint_group()
        self.client_optimizer, self.client_lr_scheduler = optimizer, lr_scheduler
        self.basic_optimizer = components.basic_optimizer(
            optimizer, model_parameters, model, self._config, self.device
        )
        self.optimizer: Trainer | None = self._wrap_optimizer()
        autotp.attach_norm(self)  # the gradient norm over the whole split model
        self._inference_shards = self._shard_inference_only() if self.optimizer is None else None
        self.lr_scheduler = components.lr_scheduler(
            lr_scheduler, self._config, self.optimizer, self.basic_optimizer
        )
        self.collate_fn = collate_fn
        self.training_dataloader = self.deepspeed_io(training_data) if training_data is not None else None
        zf = self._config.zero_optimization.zenflow
        if self.training_dataloader is not None and self.optimizer is not None and zf is not None:
            # ZenFlow's epoch selection counts this loader's steps, as DeepSpeed's (Note [zenflow] in ds_zero)
            from ds_engine.zero_policy import zenflow_select_interval

            self.optimizer.set_select_interval(zenflow_select_interval(zf, len(self.training_dataloader)))
        self.global_steps = self.global_samples = self.skipped_steps = self.micro_steps = 0
        self._is_gradient_accumulation_boundary: bool | None = None
        self.inside_no_sync_ctxt = False
        self._step_applied = False
        self._guard = StepGuard(
            max_consecutive_skips=self._config.max_consecutive_skipped_steps, rank=self.global_rank
        )  # Note [call order], Note [skipped steps]
        self._losses: list[torch.Tensor] = []
        self.monitor = MonitorMaster(
            self._config, rank=self.global_rank
        )  # tensorboard/csv/wandb/comet, rank 0
        self.progress = ProgressReporter(
            num_params=sum(p.numel() for p in model.parameters()), dp_world_size=self.dp_world_size
        )
        # DeepSpeed's named timers (wall_clock_breakdown), driven per phase by one small object.
        self.timers = SynchronizedWallClockTimer() if self._config.wall_clock_breakdown else NoopTimer()
        self._walltime = EngineTimers(self.timers)
        self.flops_profiler = _flops_profile(self)
        # DeepSpeed's samples/s timer, which clients read (DeepSpeed-Chat) and which prints DeepSpeed's
        # RunningAvgSamplesPerSec line on rank 0 every steps_per_print (``timers.throughput``).
        self.tput_timer = ThroughputTimer(
            self._config.timers.throughput,
            batch_size=self.train_batch_size(),
            steps_per_output=self.steps_per_print(),
        )
        self.autotuning = AutotuningProbe.for_engine(self)  # Note [autotuning protocol]
        ds_comm.configure(self._config.model)
        if self._config.dump_state and self.global_rank == 0:
            logger.info("DeepSpeedEngine config: %s", self._config.model.model_dump_json(by_alias=True))

    # --- construction helpers --------------------------------------------------------------------------
    def _setup_topology(self, mpu: Any, args: Any, config_sp: int = 1, config_tp: int = 1) -> None:
        self.global_rank = ds_comm.get_rank()
        self.world_size = ds_comm.get_world_size()
        topo = build_topology(mpu, config_sp, config_tp)  # Note [sp groups] in ds_engine.topology
        self.mesh, self.dp_group, self.dp_rank = topo.mesh, topo.shard_group, topo.dp_rank
        self.dp_world_size, self.seq_dp_world_size = topo.dp_world_size, topo.seq_dp_world_size
        self.seq_data_parallel_group = topo.shard_group
        self.sequence_parallel_size, self.seq_parallel_group = (
            topo.sequence_parallel_size,
            topo.seq_parallel_group,
        )
        self.mp_world_size = topo.tensor_parallel_size
        self.tp_world_size, self.tp_group = topo.tensor_parallel_size, topo.tensor_parallel_group
        arg_rank = getattr(args, "local_rank", None) if args is not None else None
        self.local_rank = (
            arg_rank if isinstance(arg_rank, int) and arg_rank >= 0 else ds_comm.get_local_rank()
        )

    def _wrap_optimizer(self) -> Any:
        """The trainer the configured ZeRO stage composes around the basic optimizer (None without one)."""
        # Any until ds_zero's side agrees (issue 13): wrap() is declared to return ZeroTrainer, whose
        # read-only cur_scale/defaults/state do not yet satisfy the Trainer protocol's settable members.
        if self.basic_optimizer is None:
            return None
        policy = policy_from_config(self._config)
        try:
            reductions = (
                moe.group_reductions(self.basic_optimizer, self.dp_world_size)
                if self.has_moe_layers
                else None
            )  # Note [engine and experts]
            return wrap(
                self.module, self.basic_optimizer, policy=policy, group=self.dp_group, reductions=reductions
            )
        except StageNotAvailable as exc:
            raise DeepSpeedConfigError(f"'zero_optimization.stage' {policy.stage}: {exc}") from None

    def _shard_inference_only(self) -> Any:
        """An engine without an optimizer runs in the configured precision; at stage 3 its parameters
        are still sharded and gathered per forward, as DeepSpeed's ZeRO-Offload wrapper does (TRL's
        reference model; a ``zero.Init`` model has nothing to run with otherwise)."""
        dtype = model_dtype(self._config)
        if self.zero_optimization_stage() != 3:
            if dtype != torch.float32:
                self.module.to(dtype)
            return None
        from ds_zero import shard_for_inference

        return shard_for_inference(self.module, policy=policy_from_config(self._config), group=self.dp_group)

    # --- training ------------------------------------------------------------------------------------
    def is_gradient_accumulation_boundary(self) -> bool:
        """Whether the current micro-step completes an accumulation (Note [micro-steps])."""
        if self._is_gradient_accumulation_boundary is not None:
            return self._is_gradient_accumulation_boundary
        return (self.micro_steps + 1) % self.gradient_accumulation_steps() == 0

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        """Override the boundary decision (the client drives accumulation)."""
        self._is_gradient_accumulation_boundary = is_boundary

    def _sync_now(self) -> bool:
        return not self.inside_no_sync_ctxt and self.is_gradient_accumulation_boundary()

    def _require_optimizer(self, what: str) -> Trainer:
        """The trainer, for a call that needs one; an engine built without an optimizer refuses it."""
        if self.optimizer is None:
            raise RuntimeError(
                f"engine.{what}() needs an optimizer: pass optimizer= or a config 'optimizer' section"
            )
        return self.optimizer

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Run the module (casting float inputs to fp16 when ``fp16.auto_cast``)."""
        if self.optimizer is not None:
            self.optimizer.check_states_home("forward")
            self.optimizer.set_gradient_accumulation_boundary(self._sync_now())
        if self._config.fp16.enabled and self._config.fp16.auto_cast:
            inputs, kwargs = _cast_floats((inputs, kwargs), torch.float16)
        tokens = _token_count(inputs, kwargs)
        self.progress.on_forward(tokens)
        self.tput_timer.start()
        self._walltime.start("forward")
        if self.flops_profiler:
            self.flops_profiler.before_forward(self.global_steps)
        with (
            self.autotuning.watch_forward(self.module) if self.autotuning else nullcontext(),
            autocast_if_enabled(self),
        ):
            out = self.module(*inputs, **kwargs)
        if self.flops_profiler:
            self.flops_profiler.after_forward()
        self._walltime.stop("forward")
        if self.autotuning:
            self.autotuning.after_forward(self, tokens)
        return out

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss times the fp16 loss scale, for clients that call ``loss.backward()`` themselves."""
        trainer = self._require_optimizer("scale")
        trainer.set_gradient_accumulation_boundary(self._sync_now())
        self._guard.on_client_backward()
        return trainer.scale_if_loss(loss)

    def backward(
        self, loss: torch.Tensor, retain_graph: bool = False, scale_wrt_gas: bool = True
    ) -> torch.Tensor:
        """Backward of ``loss`` (divided by the accumulation steps when ``scale_wrt_gas``); returns that loss."""
        trainer = self._require_optimizer("backward")
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("engine.backward(loss) needs a scalar loss tensor")
        self._guard.on_backward(at_boundary=self._sync_now())
        if scale_wrt_gas and self.gradient_accumulation_steps() > 1:
            loss = loss / self.gradient_accumulation_steps()
        self._losses.append(loss.detach() * (self.gradient_accumulation_steps() if scale_wrt_gas else 1))
        trainer.set_gradient_accumulation_boundary(self._sync_now())
        self._walltime.start("backward")
        self._walltime.start("backward_inner")  # Note [backward_allreduce] in ds_engine.timers
        trainer.backward(loss, retain_graph=retain_graph)
        self._walltime.stop("backward_inner")
        self._walltime.stop("backward")
        return loss

    def step(self, lr_kwargs: dict[str, Any] | None = None) -> None:
        """End a micro-step; at a boundary, step the optimizer and (if applied) the LR schedule."""
        if self.inside_no_sync_ctxt:
            raise RuntimeError("engine.step() inside engine.no_sync() is not allowed")
        trainer = self._require_optimizer("step")
        boundary = self.is_gradient_accumulation_boundary()
        self._guard.on_step(at_boundary=boundary, gradients_arrived=trainer.gradients_arrived)
        if boundary:
            self._walltime.start("step")
            self._step_applied = trainer.step()
            if self._step_applied:
                if self.lr_scheduler is not None:
                    self.lr_scheduler.step(**(lr_kwargs or {}))
            else:
                self.skipped_steps += 1
            self.global_steps += 1
            self.global_samples += self.train_batch_size()
            self._walltime.stop("step")
            if self.flops_profiler:
                self.flops_profiler.after_step()
            self._report()
            self._guard.after_step(
                at_boundary=True,
                applied=self._step_applied,
                global_step=self.global_steps,
                loss_scaled=self.fp16_enabled(),
            )
            if self.autotuning:
                self.autotuning.after_step(self)
        self.tput_timer.stop(global_step=boundary, report_speed=self.global_rank == 0)
        self.micro_steps += 1

    def _report(self) -> None:
        from ds_engine.reporting import report_step

        report_step(self)

    def get_wall_clock_timers(self) -> dict[str, float]:
        """DeepSpeed's snapshot of the ``wall_clock_breakdown`` timers (ms) for the latest optimizer step."""
        return self._walltime.last_step_ms

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every accumulated gradient (``set_to_none=False``: zero them in place, as on any torch Module)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=set_to_none)
        for p in self.module.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate locally without communicating (stages 0 and 1)."""
        if self.zero_optimization_stage() >= 2:
            raise RuntimeError(f"no_sync() is incompatible with ZeRO stage {self.zero_optimization_stage()}")
        previous, self.inside_no_sync_ctxt = self.inside_no_sync_ctxt, True
        try:
            if self.optimizer is not None:
                with self.optimizer.no_sync():
                    yield
            else:
                yield
        finally:
            self.inside_no_sync_ctxt = previous

    def deepspeed_io(
        self,
        dataset: Any,
        batch_size: int | None = None,
        route: str = "train",
        pin_memory: bool = True,
        data_sampler: Any = None,
        collate_fn: Any = None,
        num_local_io_workers: int | None = None,
    ) -> Any:
        """A data loader over ``dataset`` for this data-parallel rank (see :mod:`ds_engine.dataloader`)."""
        if data_sampler is None and route in ("eval", "predict"):
            from torch.utils.data import DistributedSampler

            data_sampler = DistributedSampler(
                dataset, num_replicas=self.dp_world_size, rank=self.dp_rank, shuffle=False
            )
        # dp_rank: the data axis (the ranks of one sequence-parallel group read the same samples)
        return DeepSpeedDataLoader(
            dataset=dataset,
            batch_size=batch_size or self.train_micro_batch_size_per_gpu(),
            dp_world_size=self.dp_world_size,
            dp_rank=self.dp_rank,
            collate_fn=collate_fn or self.collate_fn,
            data_sampler=data_sampler,
            drop_last=self._config.dataloader_drop_last,
            pin_memory=pin_memory,
            num_workers=num_local_io_workers or 0,
        )

    # --- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(
        self,
        save_dir: str,
        tag: Any = None,
        client_state: dict[str, Any] | None = None,
        save_latest: bool = True,
        exclude_frozen_parameters: bool = False,
    ) -> bool:
        """Save model, optimizer, LR schedule and counters (plus ``client_state``); every rank must call it."""
        if getattr(self, "has_moe_layers", False):  # Note [expert files]: before the manifest and `latest`
            moe_checkpoint.save_experts(self, save_dir, tag)
        return checkpoint.save(
            self, save_dir, tag, client_state or {}, save_latest, exclude_frozen_parameters
        )

    def load_checkpoint(
        self,
        load_dir: str,
        tag: Any = None,
        load_module_strict: bool = True,
        load_optimizer_states: bool = True,
        load_lr_scheduler_states: bool = True,
        load_module_only: bool = False,
        custom_load_fn: Any = None,
    ) -> tuple[Any, Any]:
        """Restore a checkpoint; returns ``(path, client_state)``, or ``(None, None)`` if there is none.
        ``custom_load_fn(src=module_state_dict, dst=module)``, if given, loads the module's weights."""
        self.moe_optimizer_loaded = (
            False  # set by the MoE optimizer-state load (Note [expert optimizer state])
        )
        if getattr(self, "has_moe_layers", False) and custom_load_fn is None:
            custom_load_fn = moe_checkpoint.shared_weights_loader(load_module_strict)  # Note [expert files]
        path, client_state = checkpoint.load(
            self,
            load_dir,
            tag,
            load_module_strict=load_module_strict,
            load_optimizer_states=load_optimizer_states,
            load_lr_scheduler_states=load_lr_scheduler_states,
            load_module_only=load_module_only,
            custom_load_fn=custom_load_fn,
        )
        if path is not None and getattr(self, "has_moe_layers", False):  # Note [expert files]
            moe_checkpoint.load_experts(self, path)
            if self.optimizer is not None and not self.moe_optimizer_loaded:
                self.optimizer.refresh_fp32_params()  # masters follow the experts' weights
        return path, client_state

    def module_state_dict(
        self,
        destination: Any = None,
        prefix: str = "",
        keep_vars: bool = False,
        exclude_frozen_parameters: bool = False,
    ) -> dict[str, Any]:
        """The module's state dict."""
        sd = self.module.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if exclude_frozen_parameters:
            frozen = {prefix + n for n, p in self.module.named_parameters() if not p.requires_grad}
            sd = type(sd)((k, v) for k, v in sd.items() if k not in frozen)
        return sd

    def load_module_state_dict(self, checkpoint: dict[str, Any], strict: bool = True, **_: Any) -> None:
        """Load a module state dict (``checkpoint["module"]``)."""
        self.module.load_state_dict(checkpoint["module"], strict=strict)

    def _zero3_consolidated_16bit_state_dict(
        self, exclude_frozen_parameters: bool = False
    ) -> dict[str, Any] | None:
        """The full model state dict in the training dtype. Below stage 3 every rank holds it; at stage 3
        it is gathered (every rank must call this) and only rank 0 gets it, others None."""
        if self.optimizer is not None:
            return self.optimizer.consolidated_16bit_state_dict(
                exclude_frozen_parameters=exclude_frozen_parameters
            )
        if self._inference_shards is not None:
            return self._inference_shards.full_state_dict(exclude_frozen_parameters=exclude_frozen_parameters)
        return self.module_state_dict(exclude_frozen_parameters=exclude_frozen_parameters)

    # --- moving states off the accelerator between phases (RLHF loops) ------------------------------
    def offload_states(
        self, include: Any = None, device: Any = "cpu", pin_memory: bool = True, non_blocking: bool = False
    ) -> None:
        """Move the named training states (``OffloadStateTypeEnum``; all when None) to host memory until
        :meth:`reload_states` (see :mod:`ds_zero.state_offload`). Training in between is an error."""
        from ds_engine.offload_enums import OffloadDeviceEnum

        trainer = self._require_optimizer("offload_states")
        if self._config.zero_optimization.offload_param_device != "none":
            raise ValueError(
                "engine.offload_states() cannot move states while 'zero_optimization.offload_param' "
                "already keeps parameters off the accelerator"
            )
        device = OffloadDeviceEnum(device)
        if device == OffloadDeviceEnum.none:
            logger.warning("engine.offload_states(device='none'): nothing to do")
            return
        if device == OffloadDeviceEnum.nvme:
            raise ValueError("engine.offload_states(device='nvme') is not supported; use device='cpu'")
        trainer.offload_states(
            include=include, device=device, pin_memory=pin_memory, non_blocking=non_blocking
        )

    def reload_states(self, non_blocking: bool = False) -> None:
        """Put every state :meth:`offload_states` moved back on the accelerator."""
        self._require_optimizer("reload_states").reload_states(non_blocking=non_blocking)

    def _consolidated_16bit_state_dict(
        self, exclude_frozen_parameters: bool = False
    ) -> dict[str, Any] | None:
        """DeepSpeed's name for the gathered 16-bit state dict where weights are partitioned (stage 3):
        rank 0 gets it, the others None; every rank must call it. Below stage 3 it is an error, as in
        DeepSpeed (every rank already holds the weights: use ``module_state_dict()``). With AutoTP the split
        weights are all-gathered into the plain model's state dict (Note [autotp in the engine])."""
        if getattr(self, "tp_world_size", 1) > 1:
            return autotp.consolidated_state_dict(self, exclude_frozen_parameters)
        if self.zero_optimization_stage() != 3:
            raise ValueError(
                "_consolidated_16bit_state_dict() applies only where weights are partitioned (ZeRO "
                f"stage 3); this engine runs stage {self.zero_optimization_stage()}: use "
                "engine.module_state_dict()"
            )
        return self._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters)

    def empty_partition_cache(self) -> None:
        """Drop every gathered (full) copy of stage-3 parameters and return the memory to the allocator;
        the next forward gathers again. Below stage 3 there is nothing to drop."""
        import gc

        owner = self.optimizer if self.optimizer is not None else self._inference_shards
        if owner is None or self.zero_optimization_stage() != 3:
            return
        owner.empty_partition_cache()
        gc.collect()
        get_accelerator().empty_cache()

    def save_16bit_model(
        self, save_dir: str, save_filename: str = "pytorch_model.bin", exclude_frozen_parameters: bool = False
    ) -> bool:
        """Write the model's weights (in its training dtype) to ``save_dir/save_filename`` on rank 0.

        At stage 3 this needs ``stage3_gather_16bit_weights_on_model_save`` (as in DeepSpeed): without it
        nothing is written and False is returned; use ``zero_to_fp32`` on a checkpoint instead."""
        import os

        if self.zero_optimization_stage() == 3 and not self.zero_gather_16bit_weights_on_model_save():
            logger.warning(
                "save_16bit_model: stage 3 without stage3_gather_16bit_weights_on_model_save; "
                "nothing saved (use zero_to_fp32 on a checkpoint)"
            )
            return False
        if getattr(self, "tp_world_size", 1) > 1:  # full weights, loadable into the plain model
            state = autotp.consolidated_state_dict(self, exclude_frozen_parameters)
        else:
            state = self._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters)
        if self.global_rank == 0:
            checkpoint.atomic_torch_save(state, os.path.join(save_dir, save_filename))
        return True

    def destroy(self) -> None:
        """Release hooks and monitors."""
        if self.optimizer is not None:
            self.optimizer.close()
        if self._inference_shards is not None:
            self._inference_shards.close()
        self.monitor.close()

    def __getattr__(self, name: str) -> Any:
        # DeepSpeed forwards unknown attributes to the wrapped module (engine.generate(...), engine.config_x).
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "module" in modules and hasattr(modules["module"], name):
                return getattr(modules["module"], name)
            raise


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple):
        return tuple(_cast_floats(o, dtype) for o in obj)
    if isinstance(obj, list):
        return [_cast_floats(o, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    return obj


def _token_count(inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Tokens in a forward: the first integer tensor's size, else the first tensor's batch size."""
    tensors = [t for t in (*inputs, *kwargs.values()) if isinstance(t, torch.Tensor)]
    for t in tensors:
        if not t.is_floating_point() and t.dtype != torch.bool:
            return t.numel()
    return int(tensors[0].shape[0]) if tensors and tensors[0].dim() > 0 else 1


def _flops_profile(engine: DeepSpeedEngine) -> Any:
    """The ``flops_profiler`` section's profile, or None; its module (torch's flop counter, which pulls in
    triton: ~0.2 s) is imported only when the section is enabled."""
    if not engine._config.flops_profiler.enabled:
        return None
    from ds_engine.profiling.engine_hook import EngineProfile

    return EngineProfile.for_engine(engine)
