"""The printed profile: DeepSpeed's summary lines, the top modules per depth, and the module tree."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ds_engine.profiling.formatting import (
    DEFAULT_PRECISION,
    duration_to_string,
    flops_to_string,
    macs_to_string,
    number_to_string,
    params_to_string,
)
from ds_engine.profiling.profiler import (
    get_module_duration,
    get_module_flops,
    get_module_macs,
    get_module_params,
)

if TYPE_CHECKING:
    from ds_engine.engine import DeepSpeedEngine
    from ds_engine.profiling.profiler import FlopsProfiler

_LINE = "{:<70}  {:<8}"
_NOTATIONS = (
    "Notations:\ndata parallel size (dp_size), model parallel size(mp_size),\n"
    "number of parameters (params), number of multiply-accumulate operations(MACs),\n"
    "number of floating-point operations (flops), floating-point operations per second (FLOPS),\n"
    "fwd latency (forward propagation latency), bwd latency (backward propagation latency),\n"
    "step (weights update latency), iter latency (sum of fwd, bwd and step latency)\n"
)


def _engine_lines(engine: DeepSpeedEngine) -> list[str]:
    return [
        _LINE.format("world size: ", engine.world_size),
        _LINE.format("data parallel size: ", engine.dp_world_size),
        _LINE.format("model parallel size: ", engine.mp_world_size),
        _LINE.format("batch size per GPU: ", engine.train_micro_batch_size_per_gpu()),
    ]


def _timing_lines(engine: DeepSpeedEngine, recompute_fwd_factor: float, flops: int, fwd: float) -> list[str]:
    """bwd/step/iter latency from the engine's ``wall_clock_breakdown`` timers (DeepSpeed's lines)."""
    from ds_engine.timers import BACKWARD_GLOBAL_TIMER, STEP_GLOBAL_TIMER

    factor = 2 + recompute_fwd_factor
    bwd = engine.timers(BACKWARD_GLOBAL_TIMER).elapsed(False) / 1000.0
    step = engine.timers(STEP_GLOBAL_TIMER).elapsed(False) / 1000.0
    it = fwd + bwd + step
    samples = engine.train_micro_batch_size_per_gpu() * engine.world_size
    safe = lambda x: x if x > 0 else float("inf")  # noqa: E731 - a zero latency prints 0 FLOPS, not an error
    return [
        _LINE.format("bwd latency: ", duration_to_string(bwd)),
        _LINE.format(
            f"bwd FLOPS per GPU = {factor:g} * fwd flops per GPU / bwd latency: ",
            flops_to_string(factor * flops / safe(bwd)),
        ),
        _LINE.format(
            f"fwd+bwd FLOPS per GPU = {factor + 1:g} * fwd flops per GPU / (fwd+bwd latency): ",
            flops_to_string((factor + 1) * flops / safe(fwd + bwd)),
        ),
        _LINE.format("step latency: ", duration_to_string(step)),
        _LINE.format("iter latency: ", duration_to_string(it)),
        _LINE.format(
            f"FLOPS per GPU = {factor + 1:g} * fwd flops per GPU / iter latency: ",
            flops_to_string((factor + 1) * flops / safe(it)),
        ),
        _LINE.format("samples/second: ", round(samples / safe(it), DEFAULT_PRECISION)),
    ]


def render_summary(prof: FlopsProfiler, profile_step: int) -> list[str]:
    """The header block: sizes, params, MACs, FLOPs and latencies."""
    engine = prof.ds_engine
    model = prof.model
    flops, macs, params = get_module_flops(model), get_module_macs(model), get_module_params(model)
    mp = engine.mp_world_size if engine is not None else 1
    timed = engine if engine is not None and engine.wall_clock_breakdown() else None
    fwd = get_module_duration(model)
    if timed is not None:
        from ds_engine.timers import FORWARD_GLOBAL_TIMER

        fwd = timed.timers(FORWARD_GLOBAL_TIMER).elapsed(False) / 1000.0 or fwd
    lines = [
        "",
        "-------------------------- DeepSpeed Flops Profiler --------------------------",
        f"Profile Summary at step {profile_step}:",
        _NOTATIONS,
    ]
    if engine is not None:
        lines += _engine_lines(engine)
    lines += [
        _LINE.format("params per GPU: ", params_to_string(params)),
        _LINE.format("params of model = params per GPU * mp_size: ", params_to_string(params * mp)),
        _LINE.format("fwd MACs per GPU: ", macs_to_string(macs)),
        _LINE.format("fwd flops per GPU: ", number_to_string(flops)),
        _LINE.format("fwd flops of model = fwd flops per GPU * mp_size: ", number_to_string(flops * mp)),
        _LINE.format("fwd latency: ", duration_to_string(fwd)),
        _LINE.format(
            "fwd FLOPS per GPU = fwd flops per GPU / fwd latency: ",
            flops_to_string(flops / fwd if fwd > 0 else 0),
        ),
    ]
    if timed is not None:
        lines += _timing_lines(timed, prof.recompute_fwd_factor, flops, fwd)
    return lines


def render_aggregated(model: nn.Module, *, module_depth: int, top_modules: int) -> str:
    """Top module types by params, MACs and latency at each depth (DeepSpeed's aggregated profile)."""
    per_depth: dict[int, dict[str, list[float]]] = {}

    def walk(module: nn.Module, depth: int) -> None:
        row = per_depth.setdefault(depth, {}).setdefault(type(module).__name__, [0, 0, 0.0])
        row[0] += get_module_macs(module)
        row[1] += get_module_params(module)
        row[2] += get_module_duration(module)
        for child in module.children():
            walk(child, depth + 1)

    walk(model, 0)
    depth = len(per_depth) - 1 if module_depth == -1 else module_depth
    lines = [f"Top {top_modules} modules in terms of params, MACs or fwd latency at different model depths:"]

    def top(rows: dict[str, list[float]], index: int, fmt: Any) -> dict[str, str]:
        ranked = sorted(rows.items(), key=lambda kv: kv[1][index], reverse=True)[:top_modules]
        return {name: fmt(vals[index]) for name, vals in ranked}

    for d in range(min(depth, len(per_depth))):
        rows = per_depth[d]
        lines += [
            f"depth {d}:",
            f"    params      - {top(rows, 1, params_to_string)}",
            f"    MACs        - {top(rows, 0, macs_to_string)}",
            f"    fwd latency - {top(rows, 2, duration_to_string)}",
        ]
    return "\n".join(lines)


def _percent(part: float, whole: float) -> float:
    return round(100 * part / whole, DEFAULT_PRECISION) if whole else 0


def render_tree(model: nn.Module, *, module_depth: int) -> str:
    """Each module with its params, MACs, latency and FLOPS (and percentages of the totals)."""
    total_params = get_module_params(model)
    total_macs, total_time = get_module_macs(model), get_module_duration(model)
    lines: list[str] = []

    def walk(module: nn.Module, name: str, depth: int) -> None:
        params = get_module_params(module)
        macs, flops, secs = get_module_macs(module), get_module_flops(module), get_module_duration(module)
        extra = module.extra_repr()
        items = [
            f"{params_to_string(params)} = {_percent(params, total_params):g}% Params",
            f"{macs_to_string(macs)} = {_percent(macs, total_macs):g}% MACs",
            f"{duration_to_string(secs)} = {_percent(secs, total_time):g}% latency",
            flops_to_string(round(flops / secs, DEFAULT_PRECISION) if secs else 0),
        ] + ([extra] if extra else [])
        lines.append("  " * depth + f"({name}): {type(module).__name__}({', '.join(items)})")
        if module_depth == -1 or depth < module_depth:
            for child_name, child in module.named_children():
                walk(child, child_name, depth + 1)

    walk(model, "model", 0)
    return "\n".join(lines)


def render_profile(
    prof: FlopsProfiler, *, profile_step: int, module_depth: int, top_modules: int, detailed: bool
) -> str:
    """The whole printed profile."""
    lines = render_summary(prof, profile_step)
    lines += [
        "",
        "----------------------------- Aggregated Profile per GPU -----------------------------",
        render_aggregated(prof.model, module_depth=module_depth, top_modules=top_modules),
    ]
    if detailed:
        lines += [
            "",
            "------------------------------ Detailed Profile per GPU ------------------------------",
            "Each module profile is listed after its name in the following order: \nparams, percentage of "
            "total params, MACs, percentage of total MACs, fwd latency, percentage of total fwd latency, "
            "fwd FLOPS",
            "",
            render_tree(prof.model, module_depth=module_depth),
        ]
    lines.append("------------------------------------------------------------------------------")
    return "\n".join(lines)
