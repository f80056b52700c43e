"""DeepSpeed's ``deepspeed.comm.configure`` / ``log_summary`` over :mod:`ds_comm.comms_log`.

``log_summary()`` prints DeepSpeed's table on rank 0: per op (and caller, in debug mode) and message
size, the count, total and mean latency (ms) and the mean algorithmic / bus bandwidth (Gbps); means
drop the top and bottom 10% as DeepSpeed's do.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from ds_comm import comms_log
from ds_comm.bandwidth import bandwidth_gbps, convert_size

_COLUMNS = (
    "Comm. Op",
    "Message Size",
    "Count",
    "Total Latency(ms)",
    "Avg Latency(ms)",
    "tput_avg (Gbps)",
    "busbw_avg (Gbps)",
)


def _section(deepspeed_config: Any) -> dict[str, Any]:
    if deepspeed_config is None:
        return {}
    raw = getattr(deepspeed_config, "comms_logger", None)
    if raw is None and isinstance(deepspeed_config, dict):
        raw = deepspeed_config.get("comms_logger")
    if isinstance(raw, dict):
        return raw
    return raw.model_dump() if raw is not None and hasattr(raw, "model_dump") else {}


def configure(
    deepspeed_config: Any = None,
    enabled: bool | None = None,
    prof_all: bool | None = None,
    prof_ops: list[str] | None = None,
    verbose: bool | None = None,
    debug: bool | None = None,
) -> None:
    """Turn the collective log on or off, from a DeepSpeed config's ``comms_logger`` section or arguments
    (an argument wins over the section)."""
    section = _section(deepspeed_config)

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else section.get(key, default)

    if not pick(enabled, "enabled", False):
        comms_log.disable()
        return
    comms_log.enable(
        verbose=bool(pick(verbose, "verbose", False)),
        prof_all=bool(pick(prof_all, "prof_all", True)),
        prof_ops=list(pick(prof_ops, "prof_ops", []) or []),
        debug=bool(pick(debug, "debug", False)),
    )


def _trim_mean(values: list[float]) -> float:
    ordered = sorted(values)
    cut = int(len(ordered) * 0.1)
    kept = ordered[cut : len(ordered) - cut] or ordered
    return sum(kept) / len(kept) if kept else 0.0


def summary_by_size() -> dict[str, dict[int, dict[str, Any]]]:
    """DeepSpeed's ``return_dict`` summary: ``{log_name: {msg_size: {count, total_latency_ms, ...}}}``."""
    grouped: dict[str, dict[int, list[comms_log.CommRecord]]] = {}
    for rec in comms_log.records():
        grouped.setdefault(rec.log_name, {}).setdefault(rec.nbytes, []).append(rec)
    table: dict[str, dict[int, dict[str, Any]]] = {}
    for name, sizes in grouped.items():
        for size, recs in sorted(sizes.items()):
            rates = [bandwidth_gbps(r.op, r.nbytes, r.seconds, r.group_size) for r in recs]
            latencies = [r.seconds * 1e3 for r in recs]
            table.setdefault(name, {})[size] = {
                "count": len(recs),
                "total_latency_ms": sum(latencies),
                "avg_latency_ms": _trim_mean(latencies),
                "tput_avg_gbps": _trim_mean([a for a, _ in rates]),
                "busbw_avg_gbps": _trim_mean([b for _, b in rates]),
                "msg_size_bytes": size,
                "msg_size_str": convert_size(size),
            }
    return table


def format_summary(table: dict[str, dict[int, dict[str, Any]]]) -> str:
    """The printed table (DeepSpeed's layout: 20-character columns, one block per op)."""
    lines = ["".join(f"{c: <20}" for c in _COLUMNS)]
    for name, sizes in table.items():
        lines.append(name)
        for row in sizes.values():
            lines.append(
                f"{' ': <20}{row['msg_size_str']: <20}{row['count']: <20}{row['total_latency_ms']: <20.2f}"
                f"{row['avg_latency_ms']: <20.2f}{row['tput_avg_gbps']: <20.2f}{row['busbw_avg_gbps']: <20.2f}"
            )
    return "\n".join(lines)


def log_summary(show_straggler: bool = False, return_dict: bool = False) -> dict[str, Any] | None:
    """Print (rank 0) the collectives logged on this rank; with ``return_dict``, return DeepSpeed's
    dictionary (``summary``, ``straggler_analysis``, ``metadata``). Unlike DeepSpeed this needs no barrier:
    each rank reports its own log."""
    from ds_comm.collectives import get_rank, get_world_size

    table = summary_by_size()
    if get_rank() == 0:
        print(format_summary(table), flush=True)
    if show_straggler:
        # Straggler analysis compares latencies across ranks with extra collectives; not built here.
        logging.getLogger("ds_comm").warning(
            "log_summary(show_straggler=True): straggler analysis is not built"
        )
    if not return_dict:
        return None
    return {
        "summary": table,
        "straggler_analysis": None,
        "metadata": {
            "world_size": get_world_size(),
            "rank": get_rank(),
            "timestamp": datetime.now().isoformat(),
        },
    }
