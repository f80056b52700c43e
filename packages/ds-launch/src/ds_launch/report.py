"""``ds_report``: what is installed and what this machine offers (versions, accelerator, backends, kernels).

Unlike the launcher this command may import torch (it reports torch's versions), but only when it
runs: importing this module stays cheap. Each line is computed independently, so one broken
component shows up as that line's error instead of ending the report.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from collections.abc import Callable
from typing import Annotated

import typer

PACKAGES = ("deepspeed", "ds-accel", "ds-comm", "ds-kernels", "ds-zero", "ds-engine", "ds-launch")
# The optimizer ops ds-kernels provides (DeepSpeed's names), and whether each has a Triton GPU kernel.
OPS = {"FusedAdam": True, "FusedLamb": True, "DeepSpeedCPUAdam": False}
_WIDTH = 34
_RULE = "-" * 50


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _line(name: str, value: str) -> str:
    return f"{name} {'.' * max(2, _WIDTH - len(name))} {value}"


def _safe(compute: Callable[[], str], errors: list[str], what: str) -> str:
    try:
        return compute()
    except Exception as err:  # noqa: BLE001 - a report must survive any one broken component
        errors.append(f"{what}: {type(err).__name__}: {err}")
        return "[ERROR]"


def _torch_lines(errors: list[str]) -> list[str]:
    import torch

    lines = [
        _line("torch install path", os.path.dirname(torch.__file__)),
        _line("torch version", torch.__version__),
        _line("torch cuda version", str(torch.version.cuda)),
        _line("torch hip version", str(getattr(torch.version, "hip", None))),
    ]
    import torch.distributed as dist

    if dist.is_available():
        checks = {
            "gloo": dist.is_gloo_available,
            "nccl": dist.is_nccl_available,
            "mpi": dist.is_mpi_available,
        }
        xccl = getattr(dist, "is_xccl_available", None)
        if xccl is not None:
            checks["xccl"] = xccl
        status = ", ".join(f"{name} [{'YES' if check() else 'NO'}]" for name, check in checks.items())
    else:
        status = "torch.distributed is not available in this torch build"
    lines.append(_line("torch.distributed backends", status))
    return lines


def _accelerator_lines(errors: list[str]) -> tuple[list[str], str]:
    from ds_accel import get_accelerator

    accel = get_accelerator()
    name = accel.device_name()
    lines = [
        _line(
            "accelerator", _safe(lambda: f"{name} ({accel.device_count()} device(s))", errors, "accelerator")
        ),
        _line(
            "communication backend", _safe(accel.communication_backend_name, errors, "communication backend")
        ),
        _line(
            "bf16 / fp16 supported",
            _safe(
                lambda: f"{accel.is_bf16_supported()} / {accel.is_fp16_supported()}", errors, "dtype support"
            ),
        ),
    ]
    return lines, name


def _op_lines(accelerator: str) -> list[str]:
    """Which backend each op would run on here; ds-kernels is located, not imported (no dependency)."""
    kernels = importlib.util.find_spec("ds_kernels") is not None
    triton = importlib.util.find_spec("triton") is not None
    gpu = accelerator in ("cuda", "xpu")
    lines = [_RULE, "op name ................ backend (nothing is compiled or JIT-built)", _RULE]
    for op, has_triton in OPS.items():
        if not kernels:
            status = "[NO] ds-kernels is not installed"
        elif has_triton and triton and gpu:
            status = "[YES] triton kernel"
        else:
            status = "[YES] torch fused kernel"
        lines.append(f"{op} {'.' * max(2, 22 - len(op))} {status}")
    return lines


def build_report(*, hide_operator_status: bool = False, hide_errors_and_warnings: bool = False) -> str:
    """The whole report as text."""
    errors: list[str] = []
    lines = [_RULE, "DeepSpeed general environment info:"]
    lines.append(_line("python version", f"{platform.python_version()} ({sys.executable})"))
    for package in PACKAGES:
        lines.append(_line(f"{package} version", _version(package)))
    try:
        lines += _torch_lines(errors)
    except Exception as err:  # noqa: BLE001
        errors.append(f"torch: {type(err).__name__}: {err}")
        lines.append(_line("torch version", "[ERROR]"))
    accelerator = "cpu"
    try:
        accel_lines, accelerator = _accelerator_lines(errors)
        lines += accel_lines
    except Exception as err:  # noqa: BLE001
        errors.append(f"accelerator: {type(err).__name__}: {err}")
    for name in ("triton", "mpi4py"):
        lines.append(_line(f"{name} version", _version(name)))
    lines.append(
        _line(
            "pdsh / mpirun",
            f"{shutil.which('pdsh') or 'not found'} / {shutil.which('mpirun') or 'not found'}",
        )
    )
    if os.path.isdir("/dev/shm"):
        stats = os.statvfs("/dev/shm")
        lines.append(
            _line("shared memory (/dev/shm) size", f"{stats.f_frsize * stats.f_blocks / 2**30:.2f} GB")
        )
    if not hide_operator_status:
        lines += _op_lines(accelerator)
    if errors and not hide_errors_and_warnings:
        lines += [_RULE, "errors:"] + [f"  {error}" for error in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point of ``ds_report``."""
    app = typer.Typer(add_completion=False, rich_markup_mode=None)

    @app.command()
    def ds_report(
        hide_operator_status: Annotated[
            bool, typer.Option("--hide_operator_status", help="Suppress the op table.")
        ] = False,
        hide_errors_and_warnings: Annotated[
            bool, typer.Option("--hide_errors_and_warnings", help="Suppress the errors section.")
        ] = False,
    ) -> None:
        sys.stdout.write(
            build_report(
                hide_operator_status=hide_operator_status, hide_errors_and_warnings=hide_errors_and_warnings
            )
        )

    command = typer.main.get_command(app)
    try:
        code = command.main(
            args=sys.argv[1:] if argv is None else argv, prog_name="ds_report", standalone_mode=False
        )
    except typer.TyperException as err:
        print(f"ds_report: error: {err.format_message()}", file=sys.stderr)
        sys.exit(err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
