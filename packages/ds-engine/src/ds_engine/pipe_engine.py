"""``PipelineEngine``: ``deepspeed.initialize`` on a ``PipelineModule`` (``train_batch``, ``eval_batch``).

Note: [pipeline step] ``train_batch`` runs ``gradient_accumulation_steps`` micro-batches in the 1F1B order
(ds_parallel.pipe.schedule) with point-to-point sends between adjacent stages, all with the data-parallel
reduction off; then it sums tied weights' gradients over their tie groups (Note [tied layers]), and steps
the ZeRO trainer, which averages over the stage's data-parallel group and clips by the whole pipeline's
norm (ds_parallel.pipe.norm). The tie reduction cannot run inside backward: the other copy's stage is
still waiting for this stage's gradient send, so a collective there would deadlock.

On ``torch.distributed.pipelining``: its ``PipelineStage`` + ``Schedule1F1B`` do run on gloo (checked with a
2-rank smoke run). This engine still drives its own 1F1B order because it must interleave DeepSpeed's
steps with the schedule: the ZeRO trainer's loss scale and no-reduction boundary, the tie reduction after
the last backward, DeepSpeed's ``loss_fn(outputs, labels)`` with labels read from the same data iterator
on the last stage, and error messages naming stage and micro-batch. Moving onto ``Schedule1F1B`` (its
``step`` hands back control after the last backward, where the tie sum and the step fit) was measured
side by side: at parity, not faster; why this order stays is Note [hand-written 1F1B] in
ds_parallel.pipe.schedule.
"""

from __future__ import annotations

from typing import Any

import torch

import ds_comm
from ds_engine.config import DeepSpeedConfigError
from ds_engine.engine import DeepSpeedEngine
from ds_parallel.pipe import PipelineModule, p2p
from ds_parallel.pipe.norm import pipeline_norm
from ds_parallel.pipe.schedule import one_f_one_b
from ds_zero import Trainer


class PipelineEngine(DeepSpeedEngine):
    """The engine of a ``PipelineModule``: one stage per rank, ``train_batch`` drives the whole pipeline."""

    module: PipelineModule  # checked in __init__

    def __init__(self, *, has_bool_tensors: bool = False, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if not isinstance(model, PipelineModule):
            raise TypeError("PipelineEngine needs a deepspeed.pipe.PipelineModule")
        if model.mpu().get_slice_parallel_world_size() > 1:
            raise NotImplementedError(
                "a pipeline topology with a 'model' (tensor-slicing) axis > 1 is not supported "
                "yet; use PipeDataParallelTopology"
            )
        kwargs["mpu"] = _StageMpu(model.mpu())
        super().__init__(**kwargs)
        stage = self.zero_optimization_stage()
        if stage >= 2:
            raise DeepSpeedConfigError(
                f"'zero_optimization.stage' {stage}: ZeRO-2 and ZeRO-3 are incompatible with "
                "pipeline parallelism (as in DeepSpeed); use stage 0 or 1"
            )
        self.grid = model.mpu()
        self.num_stages, self.stage_id = model.num_stages, self.grid.get_stage_id()
        self.micro_batches = self.gradient_accumulation_steps()
        self.data_iterator: Any = None
        self.has_bool_tensors = has_bool_tensors
        interval = (
            self._config.model.pipeline.activation_checkpoint_interval
        )  # DeepSpeed: the config wins when > 0
        if interval > 0:
            model.set_checkpoint_interval(interval)
        if self.optimizer is not None:
            self.optimizer.norm_fn = pipeline_norm(
                self.optimizer, self.grid.get_pipe_parallel_group(), model.replicated_tied_params()
            )
        self.agg_train_loss: torch.Tensor | None = None

    # --- stage facts ---------------------------------------------------------------------------------
    def is_first_stage(self) -> bool:
        """Whether this rank runs the first stage (reads inputs)."""
        return self.stage_id == 0

    def is_last_stage(self) -> bool:
        """Whether this rank runs the last stage (computes the loss)."""
        return self.stage_id == self.num_stages - 1

    def set_dataiterator(self, iterator: Any) -> None:
        """The iterator ``train_batch``/``eval_batch`` read ``(inputs, labels)`` micro-batches from."""
        self.data_iterator = iterator

    def _peer(self, stage: int) -> int:
        return self.grid.stage_to_global(stage)

    # --- the schedule (Note [pipeline step]) -------------------------------------------------------------
    def _fail(self, what: str, mb: int, exc: BaseException) -> RuntimeError:
        return RuntimeError(
            f"pipeline stage {self.stage_id} (rank {self.global_rank}), micro-batch {mb}: "
            f"{what} failed: {exc}"
        )

    def _links(self, micro_batches: int, train: bool) -> p2p.StageLinks:
        """This batch's transfers to and from the neighbouring stages (Note [early receives] in
        ds_parallel.pipe.p2p)."""
        return p2p.StageLinks(
            None if self.is_first_stage() else self._peer(self.stage_id - 1),
            None if self.is_last_stage() else self._peer(self.stage_id + 1),
            micro_batches,
            train,
            self.module.dynamic_shape,
        )

    def _inputs(self, mb: int, batch: Any, train: bool, links: p2p.StageLinks) -> Any:
        if self.is_first_stage():
            x = batch[0]
            if isinstance(x, (tuple, list)):
                return tuple(t.to(self.device) if isinstance(t, torch.Tensor) else t for t in x)
            return x.to(self.device)
        got = links.activation(mb)
        got = tuple(t.to(self.device).requires_grad_(train and t.is_floating_point()) for t in got)
        return got[0] if len(got) == 1 else got

    def _forward(self, mb: int, train: bool, state: dict[int, Any], links: p2p.StageLinks) -> None:
        needs_batch = self.is_first_stage() or self.is_last_stage()
        # the user's (inputs, labels) micro-batch, of any structure; middle stages read none
        batch: Any = next(self.data_iterator) if needs_batch else None
        try:
            inputs = self._inputs(mb, batch, train, links)
            # A received activation is a leaf; the stage gets a non-leaf copy so that a first in-place layer
            # (ReLU(inplace=True)) works, while the leaf collects the gradient to send back.
            fed = (
                inputs
                if self.is_first_stage() or not train
                else (tuple(t.clone() for t in inputs) if isinstance(inputs, tuple) else inputs.clone())
            )
            out = self.module(fed)
            if self.is_last_stage() and self.module.loss_fn is not None:
                labels = batch[1]
                labels = labels.to(self.device) if isinstance(labels, torch.Tensor) else labels
                out = self.module.loss_fn(out, labels)
            if not self.is_last_stage():
                links.send_activation(mb, p2p.as_tuple(out))
        except Exception as exc:  # name the stage and micro-batch (Note [pipeline step])
            raise self._fail("forward", mb, exc) from exc
        state[mb] = (inputs, out)

    def _backward(self, trainer: Trainer, mb: int, state: dict[int, Any], links: p2p.StageLinks) -> None:
        inputs, out = state.pop(mb)
        try:
            if self.is_last_stage():
                loss = out / self.micro_batches if self.micro_batches > 1 else out
                torch.autograd.backward(trainer.scale_if_loss(loss))
            else:
                # one gradient per floating-point output, by construction (StageLinks.send_activation)
                grads = links.gradients(mb)
                outs = [o for o in p2p.as_tuple(out) if o.is_floating_point()]
                pairs = [(o, g.to(o.device)) for o, g in zip(outs, grads) if o.requires_grad]
                if pairs:
                    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        except Exception as exc:
            raise self._fail("backward", mb, exc) from exc
        if not self.is_first_stage():
            ins = [t for t in p2p.as_tuple(inputs) if t.is_floating_point()]
            links.send_gradients(tuple(t.grad if t.grad is not None else torch.zeros_like(t) for t in ins))

    def _reduce_tied_grads(self, trainer: Trainer) -> None:
        for param, group in self.module.get_tied_weights_and_groups():
            if group is None:
                continue
            ds_comm.all_reduce(trainer.accumulated_grad(param), group=group)

    def _aggregate_loss(self, losses: list[torch.Tensor]) -> torch.Tensor:
        """The batch's mean loss on every rank: averaged over data-parallel replicas, sent from the last stage."""
        if self.is_last_stage():
            loss = torch.stack([x.detach().float().reshape(()) for x in losses]).mean().reshape(1).cpu()
            if self.dp_world_size > 1:
                ds_comm.all_reduce(loss, group=self.dp_group)
                loss /= self.dp_world_size
        else:
            loss = torch.zeros(1)
        if self.num_stages > 1:
            ds_comm.broadcast(
                loss, self._peer(self.num_stages - 1), group=self.grid.get_pipe_parallel_group()
            )
        return loss[0]

    def train_batch(self, data_iter: Any = None) -> torch.Tensor:
        """Train on one global batch (``gradient_accumulation_steps`` micro-batches); returns its mean loss."""
        trainer = self._require_optimizer("train_batch")
        if data_iter is not None:
            self.set_dataiterator(data_iter)
        if self.data_iterator is None and self.training_dataloader is not None:
            # DeepSpeed: initialize(training_data=...) feeds train_batch() when no iterator is given
            from ds_engine.dataloader import RepeatingLoader

            self.set_dataiterator(iter(RepeatingLoader(self.training_dataloader)))
        if self.data_iterator is None and (self.is_first_stage() or self.is_last_stage()):
            raise ValueError(
                "train_batch() needs a data iterator: train_batch(data_iter=...) or set_dataiterator()"
            )
        self.module.train()
        trainer.set_gradient_accumulation_boundary(False)  # Note [pipeline step]: no reduction yet
        state: dict[int, Any] = {}
        links = self._links(self.micro_batches, train=True)
        losses = []
        for kind, mb in one_f_one_b(self.stage_id, self.num_stages, self.micro_batches):
            if kind == "F":
                self._forward(mb, True, state, links)
                if self.is_last_stage():
                    losses.append(state[mb][1])
            else:
                self._backward(trainer, mb, state, links)
        links.finish()
        self._reduce_tied_grads(trainer)
        trainer.set_gradient_accumulation_boundary(True)
        applied = trainer.step()
        if applied and self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.skipped_steps += 0 if applied else 1
        self.global_steps += 1
        self.micro_steps += self.micro_batches
        self.global_samples += self.train_batch_size()
        self.agg_train_loss = self._aggregate_loss(losses)
        return self.agg_train_loss

    def eval_batch(
        self,
        data_iter: Any,
        return_logits: bool = False,
        compute_loss: bool = True,
        reduce_output: str | None = "avg",
        bcast_loss: bool = True,
        num_micro_batches: int | None = None,
    ) -> Any:
        """Forward ``num_micro_batches`` (default: accumulation steps) micro-batches; the mean loss
        (every rank gets it with ``bcast_loss``), and the last stage's outputs with ``return_logits``."""
        self.module.eval()
        self.set_dataiterator(data_iter)
        micro = num_micro_batches or self.micro_batches
        state: dict[int, Any] = {}
        links = self._links(micro, train=False)
        outs = []
        saved_fn = self.module.loss_fn
        if not compute_loss:
            self.module.loss_fn = None
        try:
            with torch.no_grad():
                for mb in range(micro):
                    self._forward(mb, False, state, links)
                    outs.append(state.pop(mb)[1])
        finally:
            self.module.loss_fn = saved_fn
        links.finish()
        result: Any = outs if self.is_last_stage() else None
        if compute_loss and reduce_output == "avg":
            result = (
                self._aggregate_loss(outs)
                if bcast_loss
                else (torch.stack([o.float() for o in outs]).mean() if self.is_last_stage() else None)
            )
        return (result, outs if self.is_last_stage() else None) if return_logits else result

    # --- checkpoints (ds_engine.pipe_checkpoint: one file per layer) ------------------------------------
    def save_checkpoint(
        self,
        save_dir: str,
        tag: Any = None,
        client_state: dict[str, Any] | None = None,
        save_latest: bool = True,
        exclude_frozen_parameters: bool = False,
    ) -> bool:
        """Save in DeepSpeed's pipeline layout (``layer_NN-model_states.pt``); every rank must call it."""
        from ds_engine import pipe_checkpoint

        return pipe_checkpoint.save(self, save_dir, tag, client_state or {}, save_latest)

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
        """Load a pipeline checkpoint saved at any number of stages; returns ``(path, client_state)``."""
        from ds_engine import pipe_checkpoint

        if custom_load_fn is not None:
            raise NotImplementedError("load_checkpoint(custom_load_fn=...) with a PipelineModule")
        return pipe_checkpoint.load(
            self,
            load_dir,
            tag,
            load_optimizer_states=load_optimizer_states,
            load_lr_scheduler_states=load_lr_scheduler_states,
            load_module_only=load_module_only,
            strict=load_module_strict,
        )

    # --- what a pipeline does not offer ----------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: a pipeline runs whole batches (``train_batch``/``eval_batch``), as in DeepSpeed."""
        raise RuntimeError("Only train_batch() is accessible in pipeline mode.")

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        """Refused (see :meth:`forward`)."""
        raise RuntimeError("Only train_batch() is accessible in pipeline mode.")

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Refused (see :meth:`forward`)."""
        raise RuntimeError("Only train_batch() is accessible in pipeline mode.")


class _StageMpu:
    """What the base engine reads from an ``mpu``, for one stage: its data-parallel group, and no model
    parallelism within the stage (the grid's "model parallel" spans the stages, which hold different layers)."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid

    def get_data_parallel_group(self) -> Any:
        return self.grid.get_data_parallel_group()

    def get_data_parallel_world_size(self) -> int:
        return self.grid.get_data_parallel_world_size()

    def get_data_parallel_rank(self) -> int:
        return self.grid.get_data_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return 1

    def get_model_parallel_rank(self) -> int:
        return 0

    def get_model_parallel_group(self) -> Any:
        return self.grid.get_slice_parallel_group()
