"""The engine's side of autotuning: measure an experiment, write what was measured, end the run.

Note: [autotuning protocol] ``deepspeed --autotuning`` (:mod:`ds_launch.autotuning`) runs the user's own
script once per experiment with a config whose ``autotuning`` section is enabled. The engine then does,
as DeepSpeed's does:

* with ``model_info.profile: true``: after the first forward, rank 0 writes ``model_info_path`` (JSON:
  ``num_params``, ``trainable_num_params``, ``activation_mem_per_gpu``, ``memory_per_device``) and every
  rank ends (exit status 0);
* otherwise: optimizer steps ``start_profile_step + 1`` .. ``end_profile_step + 1`` are timed (the first
  ``start_profile_step`` steps are warm-up), rank 0 writes ``metric_path`` (JSON: ``latency`` in ms per
  optimizer step, ``throughput`` in samples/s, ``FLOPS_per_gpu``/``flops``, and the batch settings that
  produced them) and every rank ends after step ``end_profile_step + 1``.

A script that finishes before that simply leaves no metric file, which the autotuner reports. Timing is
wall clock between optimizer-step boundaries (after synchronizing the accelerator), so it includes the
script's own data loading: the end-to-end speed a user will see. FLOPS are an estimate (``6 * parameters
* tokens``, as the progress line), since no FLOPs profiler runs here.

Activation memory is the bytes of tensors autograd saves for backward during the first forward
(``torch.autograd.graph.saved_tensors_hooks``), parameters excluded: exact on every device, where a
memory-counter difference would be blurred by the allocator (and is unavailable on CPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from ds_accel import get_accelerator
from ds_engine.checkpoint.files import atomic_write_text
from ds_engine.config.features import AutotuningConfig
from ds_engine.log import get_logger

if TYPE_CHECKING:
    from ds_engine.engine import DeepSpeedEngine

logger = get_logger()

DEFAULT_METRIC_FILE = "autotuning_metric.json"
DEFAULT_MODEL_INFO_FILE = "autotuning_model_info.json"


def _write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")  # the checkpoint code's one atomic writer


def memory_per_device() -> int:
    """Bytes one rank may use: the accelerator's memory, or on CPU the host's shared by the node's ranks."""
    accel = get_accelerator()
    total = int(accel.total_memory())
    if accel.device_name() == "cpu":
        local = os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or "1"
        total //= max(1, int(local)) if local.isdigit() else 1
    return total


class SavedTensorCounter:
    """Counts the bytes autograd saves for backward (each storage once, parameters excluded)."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self._skip = {p.untyped_storage().data_ptr() for p in params if p.numel() > 0}
        self._seen: set[int] = set()
        self.nbytes = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._skip and key not in self._seen:
            self._seen.add(key)
            self.nbytes += storage.nbytes()
        return tensor

    @contextlib.contextmanager
    def counting(self) -> Iterator[SavedTensorCounter]:
        """Count saved tensors of the autograd graph built inside this block."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self


class AutotuningProbe:
    """Measures one autotuning experiment inside the engine (Note [autotuning protocol])."""

    def __init__(self, *, config: AutotuningConfig, global_rank: int, num_params: int) -> None:
        self.config = config
        self.global_rank = global_rank
        self.num_params = num_params
        self.profile_model_info = bool((config.model_info or {}).get("profile", False))
        self.metric_path = config.metric_path or os.path.join(os.getcwd(), DEFAULT_METRIC_FILE)
        self.model_info_path = config.model_info_path or os.path.join(os.getcwd(), DEFAULT_MODEL_INFO_FILE)
        self._counter: SavedTensorCounter | None = None
        self._t0: float | None = None
        self._tokens = 0

    @classmethod
    def for_engine(cls, engine: DeepSpeedEngine) -> AutotuningProbe | None:
        """A probe when the config's ``autotuning`` section is enabled, else None."""
        config: AutotuningConfig = engine._config.model.autotuning
        if not config.enabled:
            return None
        probe = cls(
            config=config,
            global_rank=engine.global_rank,
            num_params=sum(_full_numel(p) for p in engine.module.parameters()),
        )
        if engine.global_rank == 0:
            what = (
                "writes the model facts to " + probe.model_info_path + " after the first forward"
                if probe.profile_model_info
                else f"times optimizer steps {config.start_profile_step + 1}-{config.end_profile_step + 1}, writes "
                f"{probe.metric_path}"
            )
            logger.info(
                "autotuning is enabled: this run %s and then ends (remove 'autotuning' from the config "
                "to train normally)",
                what,
            )
        return probe

    # --- forward ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def watch_forward(self, module: torch.nn.Module) -> Iterator[None]:
        """Around the module call: count the first forward's saved activations when profiling."""
        if self.profile_model_info and self._counter is None:
            self._counter = SavedTensorCounter(list(module.parameters()))
            with self._counter.counting():
                yield
            return
        yield

    def after_forward(self, engine: DeepSpeedEngine, tokens: int) -> None:
        """After a forward: finish a profiling run, or count tokens inside the measured window."""
        if self.profile_model_info:
            self._finish_model_info(engine)
        if self._t0 is None and self.config.start_profile_step == 0:
            self._t0 = self._now()  # no warm-up asked: the window opens at the first forward
        if self._t0 is not None:
            self._tokens += tokens

    def _finish_model_info(self, engine: DeepSpeedEngine) -> None:
        assert self._counter is not None
        if self.global_rank == 0:
            trainable = sum(_full_numel(p) for p in engine.module.parameters() if p.requires_grad)
            info = {
                "num_params": self.num_params * engine.mp_world_size,
                "trainable_num_params": trainable * engine.mp_world_size,
                "activation_mem_per_gpu": self._counter.nbytes,
                "memory_per_device": memory_per_device(),
                "train_micro_batch_size_per_gpu": engine.train_micro_batch_size_per_gpu(),
                "rank": 0,
            }
            _write_json_atomic(self.model_info_path, info)
            logger.info("autotuning: wrote model info to %s", self.model_info_path)
        _end_run()

    # --- step -------------------------------------------------------------------------------------
    def after_step(self, engine: DeepSpeedEngine) -> None:
        """After each optimizer step (``engine.global_steps`` already counts it): open/close the window."""
        step = engine.global_steps
        if step == self.config.start_profile_step and self._t0 is None:
            self._t0 = self._now()
            self._tokens = 0
        elif step == self.config.end_profile_step + 1 and self._t0 is not None:
            elapsed = max(self._now() - self._t0, 1e-9)
            measured = step - self.config.start_profile_step
            if self.global_rank == 0:
                _write_json_atomic(self.metric_path, self._metrics(engine, elapsed, measured))
                logger.info("autotuning: wrote metrics to %s", self.metric_path)
            _end_run()

    def _metrics(self, engine: DeepSpeedEngine, elapsed: float, steps: int) -> dict[str, Any]:
        latency_ms = 1e3 * elapsed / steps
        flops = 6.0 * self.num_params * self._tokens / elapsed  # this rank's tokens: FLOP/s per GPU
        return {
            "latency": latency_ms,
            "throughput": engine.train_batch_size() * 1e3 / latency_ms,
            "FLOPS_per_gpu": flops,
            "flops": flops,
            "profiled_steps": steps,
            "start_profile_step": self.config.start_profile_step,
            "end_profile_step": self.config.end_profile_step,
            "train_batch_size": engine.train_batch_size(),
            "train_micro_batch_size_per_gpu": engine.train_micro_batch_size_per_gpu(),
            "gradient_accumulation_steps": engine.gradient_accumulation_steps(),
            "zero_stage": engine.zero_optimization_stage(),
            "world_size": engine.world_size,
            "num_params": self.num_params,
        }

    @staticmethod
    def _now() -> float:
        get_accelerator().synchronize()
        return time.perf_counter()


def _full_numel(param: torch.nn.Parameter) -> int:
    # A stage-3 parameter may hold only its shard locally; ds_numel is its full size.
    return int(getattr(param, "ds_numel", param.numel()))


def _end_run() -> None:
    """End the experiment on this rank as DeepSpeed does (``exit()``).

    Every rank is past the same step; they meet once more and take the process group down before exiting,
    since a gloo group torn down by interpreter exit can abort the process (``terminate called without an
    active exception``) and turn a measured experiment into a failed one.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    raise SystemExit(0)
