"""The ``autotuning`` config section as one pydantic model: the launcher's autotuner and the engine's probe
both validate it here.

It lives in ds-launch because the autotuner owns the section and the launcher must stay torch-free
(a login node installs ds-launch alone); ds-engine's config re-uses this model as its ``autotuning``
section. It sits outside the :mod:`ds_launch.autotuning` package so that the engine imports the model
without the autotuner.

Note: [autotuning strict scalars] Flags must be JSON booleans and counts JSON integers (``3.0`` passes,
``true`` and ``"3"`` do not). DeepSpeed reads this section with ``dict.get`` and would treat ``"false"``
as enabled, so a value pydantic's lax mode would coerce is refused with an error naming the key instead.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)


def _integer(value: Any) -> Any:
    # Note [autotuning strict scalars]: bool is an int subclass and pydantic's lax mode parses strings.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected an integer")
    return value


Integer = Annotated[int, BeforeValidator(_integer)]


class AutotuningConfig(BaseModel):
    """``autotuning``: DeepSpeed's autotuner. Runs started by ``deepspeed --autotuning tune|run`` measure the
    steps ``start_profile_step``..``end_profile_step``, write ``metric_path`` and end (see
    :mod:`ds_engine.autotuning_probe`); the search itself is :mod:`ds_launch.autotuning`."""

    # The engine's section base (ds_engine.config.base.ConfigModel, Note [config-base]) has these settings;
    # this model cannot derive from it without importing the engine.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    enabled: StrictBool = False
    """Measure this run for the autotuner (the engine ends the run after ``end_profile_step``)."""
    fast: StrictBool = True
    """Tune only ZeRO stages and micro batch sizes; false also tunes each stage's main knobs."""
    results_dir: str = "autotuning_results"
    """Directory for results."""
    exps_dir: str = "autotuning_exps"
    """Directory for experiment descriptions."""
    overwrite: StrictBool = True
    """Rerun experiments whose results already exist (false: reuse them)."""
    start_profile_step: Integer = Field(3, ge=0)
    """Optimizer steps run before the measurement starts (warm-up)."""
    end_profile_step: Integer = Field(5, ge=0)
    """Last measured step; the run ends after it."""
    metric_path: str | None = None
    """Where the engine writes the metrics (default: ``./autotuning_metric.json``)."""
    tuner_type: Literal["gridsearch", "random", "model_based"] = "gridsearch"
    """Search strategy."""
    tuner_early_stopping: Integer = Field(5, ge=1)
    """Stop a stage's search after this many experiments without improvement."""
    tuner_num_trials: Integer = Field(50, ge=1)
    """Most experiments run."""
    arg_mappings: dict[str, str] | None = None
    """Config key -> script flag, for scripts that take batch settings as arguments (spaces around either
    are dropped)."""
    max_train_batch_size: Integer | None = Field(None, gt=0)
    """Largest global batch tried."""
    min_train_batch_size: Integer = Field(1, gt=0)
    """Smallest global batch tried."""
    max_train_micro_batch_size_per_gpu: Integer = Field(1024, gt=0)
    """Largest micro batch tried."""
    min_train_micro_batch_size_per_gpu: Integer = Field(1, gt=0)
    """Smallest micro batch tried."""
    num_tuning_micro_batch_sizes: Integer = Field(3, gt=0)
    """Micro-batch sizes tried per ZeRO stage."""
    mp_size: Integer = Field(1, gt=0)
    """Model-parallel degree."""
    metric: Literal["latency", "throughput", "flops", "forward", "step"] = "throughput"
    """What is optimised (latency is minimised, the others maximised)."""
    model_info: dict[str, Any] | None = None
    """Model facts (num_params, hidden_size, num_layers, profile); ``profile: true`` asks the engine to
    write them to ``model_info_path`` after the first forward and end the run."""
    model_info_path: str | None = None
    """Where model facts are written (default: ``./autotuning_model_info.json``)."""
    memory_per_device: Integer | None = Field(None, gt=0)
    """(This project's extension.) Bytes one rank may use when the autotuner prunes configurations by the
    ZeRO memory formulas; default: what the profiling run measured (the accelerator's memory; on CPU, host
    memory divided by the node's ranks). DeepSpeed ignores unknown keys here, so configs stay portable."""

    @field_validator("arg_mappings")
    @classmethod
    def _stripped(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # Users write " --bs " as readily as "--bs"; the script's argument list never has the spaces.
        return None if value is None else {k.strip(): v.strip() for k, v in value.items()}

    @model_validator(mode="after")
    def _profile_window(self) -> AutotuningConfig:
        if self.end_profile_step < self.start_profile_step:
            raise ValueError(
                f"end_profile_step {self.end_profile_step} is before start_profile_step "
                f"{self.start_profile_step}"
            )
        return self

    @property
    def lower_is_better(self) -> bool:
        """Latency is minimised; throughput and FLOPS are maximised."""
        return self.metric == "latency"
