"""DeepSpeed's ``deepspeed.comm.configure`` / ``log_summary`` over :mod:`ds_comm.comms_log`."""

from __future__ import annotations

from typing import Any

from ds_comm import comms_log


def configure(deepspeed_config: Any = None, enabled: bool | None = None, prof_all: bool | None = None,
              prof_ops: list[str] | None = None, verbose: bool | None = None, debug: bool | None = None) -> None:
    """Turn the collective log on or off, from a DeepSpeed config's ``comms_logger`` section or arguments."""
    section: dict[str, Any] = {}
    if deepspeed_config is not None:
        raw = getattr(deepspeed_config, "comms_logger", None)
        if raw is None and isinstance(deepspeed_config, dict):
            raw = deepspeed_config.get("comms_logger")
        section = raw if isinstance(raw, dict) else (raw.model_dump() if hasattr(raw, "model_dump") else {})
    on = enabled if enabled is not None else bool(section.get("enabled", False))
    loud = verbose if verbose is not None else bool(section.get("verbose", False))
    if on:
        comms_log.enable(verbose=loud)
    else:
        comms_log.disable()


def log_summary(show_straggler: bool = False) -> str:
    """Print and return a table of logged collectives: count, bytes and time per op."""
    rows = comms_log.summary()
    lines = [f"{'op':<26}{'count':>8}{'MB':>12}{'ms':>12}"]
    for op, row in sorted(rows.items()):
        lines.append(f"{op:<26}{int(row['count']):>8}{row['bytes'] / 2**20:>12.3f}{row['seconds'] * 1e3:>12.3f}")
    text = "\n".join(lines)
    print(text)
    return text
