"""The command that runs one experiment: this launcher again, on the same resources, with the user's script
and arguments, the experiment's config in place of the user's, and ``arg_mappings`` applied."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ds_launch.autotuning.settings import ConfigArgument
from ds_launch.options import LaunchOptions

# Options the experiments do not inherit: they are about this (tuning) process, or set per experiment
# (each experiment's output is kept in its own result folder instead of --enable_each_rank_log).
_NOT_INHERITED = {
    "autotuning",
    "save_pid",
    "master_port",
    "user_script",
    "user_args",
    "quiet",
    "enable_each_rank_log",
}
LAUNCHER = (sys.executable, "-c", "from ds_launch.cli import main; main()")


def launcher_flags(options: LaunchOptions) -> list[str]:
    """The ``deepspeed`` flags ``options`` hold that differ from the defaults (experiments inherit them)."""
    defaults = LaunchOptions()
    out: list[str] = []
    for spec in fields(LaunchOptions):
        value = getattr(options, spec.name)
        if spec.name in _NOT_INHERITED or value == getattr(defaults, spec.name):
            continue
        if isinstance(value, bool):
            out.append(f"--{spec.name}")
        else:
            out += [f"--{spec.name}", str(value)]
    return out


def find_key(config: Mapping[str, Any], key: str) -> Any:
    """The value of ``key`` anywhere in a nested config (top level first), or None."""
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, Mapping):
            found = find_key(value, key)
            if found is not None:
                return found
    return None


def apply_arg_mappings(
    args: Sequence[str], mappings: Mapping[str, str], config: Mapping[str, Any]
) -> list[str]:
    """Set each mapped script flag to the config's value (replacing ``--flag V`` / ``--flag=V``, or appending)."""
    out = list(args)
    for key, flag in mappings.items():
        value = find_key(config, key)
        if value is None or value == "auto":
            continue
        text = str(value)
        for i, arg in enumerate(out):
            if arg == flag and i + 1 < len(out):
                out[i + 1] = text
                break
            if arg.startswith(flag + "="):
                out[i] = f"{flag}={text}"
                break
        else:
            out += [flag, text]
    return out


@dataclass(frozen=True)
class LaunchCommand:
    """Everything needed to start the user's job with another config."""

    flags: tuple[str, ...]
    master_port: int
    user_script: str
    user_args: tuple[str, ...]
    config_arg: ConfigArgument
    arg_mappings: Mapping[str, str]

    @classmethod
    def from_options(
        cls, options: LaunchOptions, config_arg: ConfigArgument, arg_mappings: Mapping[str, str]
    ) -> LaunchCommand:
        """The user's launch, minus ``--autotuning``."""
        return cls(
            tuple(launcher_flags(options)),
            options.master_port,
            options.user_script,
            options.user_args,
            config_arg,
            dict(arg_mappings),
        )

    def port(self, index: int) -> int:
        """A distinct rendezvous port per experiment (a just-closed port may linger in TIME_WAIT)."""
        return 1024 + (self.master_port - 1024 + 1 + index) % (65536 - 1024)

    def script_args(self, config_path: str, config: Mapping[str, Any]) -> list[str]:
        """The user's arguments with ``config_path`` as the config and the mapped flags set."""
        return apply_arg_mappings(
            self.config_arg.replaced(self.user_args, config_path), self.arg_mappings, config
        )

    def deepspeed_args(self, config_path: str, config: Mapping[str, Any], port: int) -> list[str]:
        """``deepspeed`` arguments (no program name) for one run."""
        return [
            *self.flags,
            "--master_port",
            str(port),
            self.user_script,
            *self.script_args(config_path, config),
        ]

    def argv(self, config_path: str, config: Mapping[str, Any], port: int) -> list[str]:
        """The command that runs it through this launcher."""
        return [*LAUNCHER, *self.deepspeed_args(config_path, config, port)]

    @staticmethod
    def display(args: Sequence[str]) -> str:
        """How a user would type it: ``deepspeed ...``."""
        return shlex.join(["deepspeed", *args])
