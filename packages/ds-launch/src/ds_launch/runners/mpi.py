"""MPI runners: one ``mpirun`` starts every rank; the rank shim maps the MPI's rank variables.

Facts kept from DeepSpeed: OpenMPI gets the user's hostfile, ``--mca btl ^openib`` and (unless
``--launcher_args`` names one) ``--mca btl_tcp_if_include eth0``, and ``UCX_TLS=tcp``; MPICH and Intel
MPI take ``-ppn`` and ``-hosts``; MVAPICH reads a host list file and gets its MV2_* tuning variables.
None of them supports slot filters or count limits, and all but OpenMPI need the same slot count on
every host. Environment values go through ``mpirun``'s own options, never through a shell.
"""

from __future__ import annotations

from ds_accel.atomic_files import atomic_write_text
from ds_launch.runners.base import MultiNodeRunner, register_runner

MVAPICH_TMP_HOSTFILE = "/tmp/deepspeed_mvapich_hostfile"


@register_runner
class OpenMPIRunner(MultiNodeRunner):
    """``mpirun -n N -hostfile H --mca btl ^openib ... -x K=V ... <rank shim> script args``."""

    name = "openmpi"
    binary = "ompi_info"

    def validate(self) -> None:
        self.reject_filters()

    def get_cmd(self) -> list[str]:
        launcher_args = self.launcher_args()
        names_if = any(
            a in ("-mca", "--mca") and b == "btl_tcp_if_include"
            for a, b in zip(launcher_args, launcher_args[1:])
        )
        cmd = [
            "mpirun",
            "-n",
            str(self.job.world_size),
            "-hostfile",
            self.options.hostfile,
            "--mca",
            "btl",
            "^openib",
        ]
        cmd += [] if names_if else ["--mca", "btl_tcp_if_include", "eth0"]
        if self.options.ssh_port is not None:
            cmd += ["--mca", "plm_rsh_args", f"-p {self.options.ssh_port}"]
        cmd += launcher_args
        for key, value in {"UCX_TLS": "tcp", **self.rank_exports()}.items():
            cmd += ["-x", f"{key}={value}"]
        return cmd + self.rank_command("openmpi")


class _HydraRunner(MultiNodeRunner):
    """MPICH-style mpirun (Hydra): ``-n``, ``-ppn``, ``-genv K V``, ``-hosts a,b``."""

    binary = "mpirun"

    def validate(self) -> None:
        self.reject_filters()
        self.procs_per_node()

    def extra_genv(self) -> dict[str, str]:
        return {}

    def get_cmd(self) -> list[str]:
        ppn = self.procs_per_node()
        cmd = ["mpirun", "-n", str(self.job.world_size), "-ppn", str(ppn), *self.launcher_args()]
        env = {
            **self.rank_exports(),
            "WORLD_SIZE": str(self.job.world_size),
            "LOCAL_SIZE": str(ppn),
            **self.extra_genv(),
        }
        for key, value in env.items():
            cmd += ["-genv", key, value]
        cmd += ["-hosts", ",".join(self.job.active_resources)]
        return cmd + self.rank_command(self.name)


@register_runner
class MPICHRunner(_HydraRunner):
    name = "mpich"


@register_runner
class IMPIRunner(_HydraRunner):
    name = "impi"

    def extra_genv(self) -> dict[str, str]:
        # Intel MPI pins ranks itself unless told not to; DeepSpeed's --bind_cores_to_rank does it.
        return {"I_MPI_PIN": "0"}


@register_runner
class MVAPICHRunner(MultiNodeRunner):
    """``mpirun -np N -ppn P --hostfile F -env K=V ... <rank shim> script args``."""

    name = "mvapich"
    binary = "mpiname"
    MV2_EXPORTS = {
        "MV2_SMP_USE_CMA": "0",
        "MV2_DEBUG_SHOW_BACKTRACE": "1",
        "MV2_SUPPORT_DL": "1",
        "MV2_ENABLE_AFFINITY": "0",
        "MV2_INTER_ALLGATHER_TUNING": "5",
        "MV2_CUDA_USE_NAIVE": "0",
    }

    def validate(self) -> None:
        self.reject_filters()
        self.procs_per_node()

    @property
    def hostfile_path(self) -> str:
        return f"{MVAPICH_TMP_HOSTFILE}.{self.job.job_id}"

    def prepare(self) -> None:
        # Written atomically: a half-written host list must never be read by mpirun.
        hosts = "".join(f"{host}\n" for host in self.job.active_resources)
        atomic_write_text(self.hostfile_path, hosts, mode=0o600)  # private, as it always was

    def get_cmd(self) -> list[str]:
        cmd = [
            "mpirun",
            "-np",
            str(self.job.world_size),
            "-ppn",
            str(self.procs_per_node()),
            "--hostfile",
            self.hostfile_path,
            *self.launcher_args(),
        ]
        for key, value in {**self.MV2_EXPORTS, **self.rank_exports()}.items():
            cmd += ["-env", f"{key}={value}"]
        return cmd + self.rank_command("mvapich")
