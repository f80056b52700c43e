"""DeepSpeed's number formatting for profiles: ``number_to_string(1.5e9) == "1.5 G"`` and friends.

The outputs match ``deepspeed.profiling.flops_profiler``'s helpers (same units, rounding and suffixes),
because scripts parse or print them next to DeepSpeed's own logs.
"""

from __future__ import annotations

DEFAULT_PRECISION = 2

# Unit prefix -> magnitude, largest first: the automatic choice takes the first one the number reaches.
_AUTO_UNITS: tuple[tuple[str, float], ...] = (
    ("T", 1e12),
    ("G", 1e9),
    ("M", 1e6),
    ("K", 1e3),
    ("", 1.0),
    ("m", 1e-3),
)
_NAMED_UNITS = {"T": 1e12, "G": 1e9, "M": 1e6, "K": 1e3, "m": 1e-3, "u": 1e-6}


def _pick_unit(num: float) -> tuple[str, float]:
    if num == 0:
        return "", 1.0
    for unit, magnitude in _AUTO_UNITS:
        if num >= magnitude:
            return unit, magnitude
    return "u", 1e-6


def number_to_string(num: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    """``num`` scaled to a unit prefix (T, G, M, K, '', m, u; chosen from the size when ``units`` is None)."""
    if units is None:
        units, magnitude = _pick_unit(num)
    else:
        magnitude = _NAMED_UNITS.get(units, 1.0)
    return f"{round(num / magnitude, precision):g} {units}"


def macs_to_string(macs: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    """``"1.2 GMACs"``."""
    return number_to_string(macs, units=units, precision=precision) + "MACs"


def flops_to_string(flops: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    """``"1.2 GFLOPS"``."""
    return number_to_string(flops, units=units, precision=precision) + "FLOPS"


def bytes_to_string(b: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    """``"1.2 GB"``."""
    return number_to_string(b, units=units, precision=precision) + "B"


def params_to_string(params_num: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    """``"124.44 M"``; billions are written ``B`` (``units="B"`` asks for them)."""
    giga = units.replace("B", "G") if units else units
    return number_to_string(params_num, units=giga, precision=precision).replace("G", "B").strip()


def duration_to_string(duration: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    """Seconds: ``"12.5 ms"``."""
    return number_to_string(duration, units=units, precision=precision) + "s"
