"""Environment discovery from torchrun, OpenMPI/AzureML, SLURM and arguments, each from a patched env."""

from __future__ import annotations

import pytest

from ds_comm.env import DistEnvironmentError, discover, first_slurm_host

TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "1234",
}
OMPI = {
    "OMPI_COMM_WORLD_RANK": "5",
    "OMPI_COMM_WORLD_SIZE": "8",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
}
SLURM = {
    "SLURM_PROCID": "6",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "2",
    "SLURM_NODELIST": "gpu[07-08,11]",
    "SLURM_NTASKS_PER_NODE": "4(x2)",
}


def test_torchrun_environment():
    env = discover(environ=TORCHRUN)
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (
        3,
        8,
        1,
        "10.0.0.1",
        1234,
    )
    assert env.sources == {
        "rank": "RANK",
        "world_size": "WORLD_SIZE",
        "local_rank": "LOCAL_RANK",
        "master_addr": "MASTER_ADDR",
        "master_port": "MASTER_PORT",
    }
    assert env.launcher == "launcher"


def test_torchrun_port_defaults_to_distributed_port():
    environ = {k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"}
    env = discover(environ=environ, distributed_port=4321)
    assert env.master_port == 4321 and env.sources["master_port"] == "distributed_port argument"


@pytest.mark.parametrize("missing", ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"])
def test_torchrun_missing_variable_is_named(missing):
    environ = {k: v for k, v in TORCHRUN.items() if k != missing}
    with pytest.raises(
        DistEnvironmentError, match=rf"incomplete torchrun/launcher environment: {missing} missing"
    ):
        discover(environ=environ)


def test_non_integer_is_named():
    with pytest.raises(DistEnvironmentError, match=r"WORLD_SIZE='eight' is not an integer"):
        discover(environ={**TORCHRUN, "WORLD_SIZE": "eight"})


def test_openmpi_with_master_addr():
    env = discover(environ={**OMPI, "MASTER_ADDR": "node0"}, auto_mpi_discovery=False)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (5, 8, 1, 4)
    assert env.master_addr == "node0" and env.master_port == 29500
    assert env.sources["rank"] == "OMPI_COMM_WORLD_RANK" and env.launcher == "mpi"


def test_openmpi_without_master_and_without_mpi4py_is_clear():
    with pytest.raises(
        DistEnvironmentError,
        match=r"OpenMPI environment: MASTER_ADDR missing.*set MASTER_ADDR or install mpi4py",
    ):
        discover(environ=OMPI, auto_mpi_discovery=False)


def test_openmpi_missing_rank_variable_is_named():
    environ = {k: v for k, v in OMPI.items() if k != "OMPI_COMM_WORLD_LOCAL_RANK"}
    with pytest.raises(DistEnvironmentError, match=r"OMPI_COMM_WORLD_LOCAL_RANK missing"):
        discover(environ={**environ, "MASTER_ADDR": "x"}, auto_mpi_discovery=False)


def test_azureml_multi_node_master():
    env = discover(environ={**OMPI, "AZ_BATCH_MASTER_NODE": "10.1.2.3:6105"}, auto_mpi_discovery=False)
    assert env.master_addr == "10.1.2.3" and env.master_port == 6105
    assert env.sources["master_addr"] == "AZ_BATCH_MASTER_NODE"


def test_azureml_single_node_master():
    single = {
        **OMPI,
        "OMPI_COMM_WORLD_LOCAL_SIZE": "8",
        "AZ_BATCHAI_MPI_MASTER_NODE": "aml-node-0",
        "AZ_BATCH_MASTER_NODE": "10.1.2.3:6105",
    }
    env = discover(environ=single, auto_mpi_discovery=False)
    assert env.master_addr == "aml-node-0" and env.sources["master_addr"] == "AZ_BATCHAI_MPI_MASTER_NODE"


def test_mpich_variables():
    environ = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MASTER_ADDR": "h"}
    env = discover(environ=environ, auto_mpi_discovery=False)
    assert (env.rank, env.world_size, env.local_rank) == (1, 2, 1)
    assert env.sources["local_rank"] == "MPI_LOCALRANKID"


def test_slurm_environment():
    env = discover(environ=SLURM)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (6, 8, 2, 4)
    assert env.master_addr == "gpu07" and env.sources["master_addr"] == "first host of SLURM_NODELIST"
    assert env.launcher == "slurm"


def test_slurm_master_addr_override():
    assert discover(environ={**SLURM, "MASTER_ADDR": "login1"}).master_addr == "login1"


@pytest.mark.parametrize("missing", ["SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODELIST"])
def test_slurm_missing_variable_is_named(missing):
    environ = {k: v for k, v in SLURM.items() if k != missing}
    with pytest.raises(DistEnvironmentError, match=rf"incomplete SLURM environment: {missing} missing"):
        discover(environ=environ)


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("node1", "node1"), ("gpu[03-05,9],cpu1", "gpu03"), ("a-b[10,2]", "a-b10"), ("x,y", "x")],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_precedence_launcher_over_mpi_over_slurm():
    assert discover(environ={**SLURM, **OMPI, "MASTER_ADDR": "m", **TORCHRUN}).launcher == "launcher"
    assert discover(environ={**SLURM, **OMPI, "MASTER_ADDR": "m"}, auto_mpi_discovery=False).launcher == "mpi"


def test_explicit_arguments_win():
    env = discover(rank=1, world_size=2, environ=TORCHRUN)
    assert (env.rank, env.world_size) == (1, 2) and env.sources["rank"] == "argument"
    with pytest.raises(DistEnvironmentError, match="pass both, or neither"):
        discover(rank=1, environ={})
    with pytest.raises(DistEnvironmentError, match="out of range"):
        discover(rank=2, world_size=2, environ={})


def test_no_launcher_is_a_single_process_world():
    env = discover(environ={})
    assert (env.rank, env.world_size, env.master_addr, env.launcher) == (0, 1, "127.0.0.1", "single-process")


def test_export_writes_torchrun_variables():
    out: dict[str, str] = {}
    discover(environ=SLURM).export(out)
    assert out["RANK"] == "6" and out["WORLD_SIZE"] == "8" and out["LOCAL_RANK"] == "2"
    assert out["MASTER_ADDR"] == "gpu07" and out["MASTER_PORT"] == "29500" and out["LOCAL_SIZE"] == "4"
