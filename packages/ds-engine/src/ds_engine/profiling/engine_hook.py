"""The ``flops_profiler`` config section applied: one profiled step on rank 0.

At global step ``profile_step`` every forward on rank 0 is profiled (each restarts the profile, so the
printed figures are one micro-batch's forward, as DeepSpeed's are); after that optimizer step the profile
is printed (or written to ``output_file``) with the engine's world sizes and timers, then removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ds_engine.profiling.profiler import FlopsProfiler

if TYPE_CHECKING:
    from ds_engine.config.monitoring import FlopsProfilerConfig
    from ds_engine.engine import DeepSpeedEngine


class EngineProfile:
    """Drives a :class:`FlopsProfiler` from the engine's forward and step."""

    def __init__(self, engine: DeepSpeedEngine, cfg: FlopsProfilerConfig) -> None:
        self.cfg = cfg
        self.profiler = FlopsProfiler(
            engine.module, ds_engine=engine, recompute_fwd_factor=cfg.recompute_fwd_factor
        )
        self._rank0 = engine.global_rank == 0

    @classmethod
    def for_engine(cls, engine: DeepSpeedEngine) -> EngineProfile | None:
        """The profile the config asks for, or None."""
        cfg = engine._config.flops_profiler
        return cls(engine, cfg) if cfg.enabled else None

    def before_forward(self, global_steps: int) -> None:
        """Start (or restart) counting if this is the profiled step."""
        if self._rank0 and global_steps == self.cfg.profile_step:
            self.profiler.start_profile()

    def after_forward(self) -> None:
        """Stop counting; the figures stay until the step is printed."""
        if self.profiler.started:
            self.profiler.stop_profile()

    def after_step(self) -> None:
        """Print the profile of the step that just ended, then drop it."""
        if not self.profiler.started:
            return
        cfg = self.cfg
        self.profiler.print_model_profile(
            profile_step=cfg.profile_step,
            module_depth=cfg.module_depth,
            top_modules=cfg.top_modules,
            detailed=cfg.detailed,
            output_file=cfg.output_file,
        )
        self.profiler.end_profile()
