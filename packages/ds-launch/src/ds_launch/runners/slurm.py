"""Slurm: ``srun`` starts every rank; the rank shim maps SLURM_PROCID and friends.

srun places tasks by count, not by device id, so a filter must keep whole hosts or the first N slots
of every host, with the same count everywhere (DeepSpeed's rule). Exports travel in ``--export``,
whose list is comma-separated: a value containing a comma cannot be carried and is refused.
"""

from __future__ import annotations

from ds_launch.errors import LaunchError
from ds_launch.runners.base import MultiNodeRunner, register_runner


@register_runner
class SlurmRunner(MultiNodeRunner):
    """``srun -n N [launcher_args] [--nodelist ... --nodes M] --export=ALL,K=V <rank shim> ...``."""

    name = "slurm"
    binary = "sinfo"

    def validate(self) -> None:
        counts = set()
        for host, slots in self.job.active_resources.items():
            if list(slots) != list(range(len(slots))):
                raise LaunchError(
                    f"--launcher slurm cannot select device ids {slots} on {host}: filter whole hosts "
                    "or keep the first N slots on every host"
                )
            counts.add(len(slots))
        if len(counts) > 1:
            raise LaunchError("--launcher slurm needs the same slot count on every host after filtering")
        for key, value in self.rank_exports().items():
            if "," in value:
                raise LaunchError(f"--launcher slurm cannot export {key}: its value contains ',' ({value!r})")

    def get_cmd(self) -> list[str]:
        opts = self.options
        cmd = ["srun", "-n", str(self.job.world_size), *self.launcher_args()]
        if opts.include or opts.exclude:
            cmd += [
                "--nodelist",
                ",".join(self.job.active_resources),
                "--nodes",
                str(len(self.job.active_resources)),
            ]
        if opts.num_nodes > 0:
            cmd += ["--nodes", str(opts.num_nodes)]
        if opts.num_gpus > 0:
            cmd += ["--gpus-per-node", str(opts.num_gpus)]
        exports = ",".join(["ALL", *(f"{key}={value}" for key, value in self.rank_exports().items())])
        return [*cmd, f"--export={exports}", *self.rank_command("slurm")]
