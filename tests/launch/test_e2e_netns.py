"""Multi-node launches across real hosts: network namespaces on this machine, each with its own
address and sshd (see netns_hosts.py). pdsh and mpirun reach the hosts over real ssh; ranks find
each other with gloo over the namespace addresses, so a wrong placement, address or variable
anywhere fails the run. Each rank records its network namespace, which proves where it ran.

The rank scripts' own variables reach remote ranks the way DeepSpeed users send them: through
``.deepspeed_env`` in the working directory (a remote rank inherits nothing else from the test).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from _e2e_util import (
    DEEPSPEED,
    MPI_ROOT_ENV,
    SCRIPTS,
    free_port,
    have,
    make_ready_fifo,
    read_ranks,
    recorded_pids,
    run_deepspeed,
    start_deepspeed,
    wait_gone,
    wait_ready,
)
from netns_hosts import IFNAME, NetnsCluster

pytestmark = pytest.mark.multinode

REPORT = str(SCRIPTS / "rank_report.py")
FAULT = str(SCRIPTS / "fault.py")
LOOP = str(SCRIPTS / "collective_loop.py")
TRAIN = str(SCRIPTS / "train_tiny.py")


def job_env(cluster: NetnsCluster, launch_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The launching shell: the ssh wrapper on PATH, no loopback gloo interface (ranks are remote)."""
    env = cluster.env(launch_env)
    env.pop("GLOO_SOCKET_IFNAME", None)
    env.update(extra)
    return env


def write_deepspeed_env(cwd: Path, **values: str) -> None:
    """``.deepspeed_env`` for the ranks: gloo on the namespace interface, plus ``values``."""
    lines = {"GLOO_SOCKET_IFNAME": IFNAME, **values}
    (cwd / ".deepspeed_env").write_text("".join(f"{key}={value}\n" for key, value in lines.items()))


def assert_hosts_clean(cluster: NetnsCluster, pids: list[int], timeout: float = 30.0) -> None:
    """Nothing of the job is left: no recorded pid alive, and no process but sshd on any host."""
    assert wait_gone(pids, timeout) == [], "rank processes survived the job"
    for host in cluster.hosts:
        left = wait_gone(sorted(host.job_pids()), timeout)
        assert left == [], f"processes left on {host.addr}: {[_cmdline(pid) for pid in left]}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"


def assert_placed(cluster: NetnsCluster, seen: dict[int, dict], placement: dict[int, int]) -> None:
    """Rank r ran inside host ``placement[r]``'s namespace."""
    assert sorted(seen) == sorted(placement)
    for rank, host in placement.items():
        assert seen[rank]["netns"] == f"net:[{cluster.hosts[host].netns_inode()}]", f"rank {rank}"


@pytest.mark.timeout(240)
def test_pdsh_over_ssh_two_hosts_with_exports(netns_cluster, tmp_path, out_dir, launch_env):
    cluster = netns_cluster(2)
    a, b = cluster.hosts
    (tmp_path / "hostfile").write_text(cluster.hostfile(2))
    write_deepspeed_env(tmp_path, OUT_DIR=str(out_dir), ALLREDUCE="1", CUSTOM="from .deepspeed_env")
    (Path(launch_env["HOME"]) / ".deepspeed_env").write_text("FROM_HOME=home value\n")
    env = job_env(cluster, launch_env, NCCL_SOCKET_IFNAME=IFNAME, PYTHONHASHSEED="7", NOT_EXPORTED="1")
    # No --master_addr: the launcher asks the first host ('hostname -I' over ssh).
    done = run_deepspeed(
        ["--hostfile=hostfile", f"--master_port={free_port()}", REPORT, "--deepspeed"],
        env=env,
        cwd=tmp_path,
        timeout=200,
    )
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    assert_placed(cluster, seen, {0: 0, 1: 0, 2: 1, 3: 1})
    for rank, data in seen.items():
        assert (data["LOCAL_RANK"], data["CROSS_RANK"], data["WORLD_SIZE"], data["MASTER_ADDR"]) == (
            str(rank % 2),
            str(rank // 2),
            "4",
            a.addr,
        )
        assert (data["dist_rank"], data["dist_world"], data["all_reduce"]) == (rank, 4, 10.0)
        # NCCL*/PYTHON* from the launching shell, both .deepspeed_env files; nothing else crosses ssh.
        assert (data["NCCL_SOCKET_IFNAME"], data["PYTHONHASHSEED"]) == (IFNAME, "7")
        assert (data["CUSTOM"], data["FROM_HOME"], data["NOT_EXPORTED"]) == (
            "from .deepspeed_env",
            "home value",
            None,
        )
    # pdsh prefixes each line with the host that printed it
    assert {line.split(":")[0] for line in done.stdout.splitlines()} == {a.addr, b.addr}
    assert_hosts_clean(cluster, [d["pid"] for d in seen.values()])


@pytest.mark.mpi
@pytest.mark.timeout(240)
@pytest.mark.skipif(not have("mpirun") or not have("ompi_info"), reason="needs OpenMPI")
def test_openmpi_mpirun_over_ssh_two_hosts(netns_cluster, tmp_path, out_dir, launch_env):
    cluster = netns_cluster(2)
    a, _ = cluster.hosts
    (tmp_path / "hostfile").write_text(cluster.hostfile(2))
    write_deepspeed_env(tmp_path, OUT_DIR=str(out_dir), ALLREDUCE="1")
    env = job_env(cluster, launch_env, **MPI_ROOT_ENV)
    # mpirun starts its daemons through the ssh wrapper; its own traffic stays on the test subnet.
    mca = (
        f"--mca plm_rsh_agent {cluster.ssh_wrapper} --mca btl_tcp_if_include {IFNAME} "
        f"--mca oob_tcp_if_include {cluster.subnet}"
    )
    done = run_deepspeed(
        [
            "-H",
            "hostfile",
            "--launcher",
            "openmpi",
            "--master_addr",
            a.addr,
            "--master_port",
            str(free_port()),
            "--launcher_args",
            mca,
            REPORT,
            "x",
        ],
        env=env,
        cwd=tmp_path,
        timeout=200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = read_ranks(out_dir)
    assert_placed(cluster, seen, {0: 0, 1: 0, 2: 1, 3: 1})
    for rank, data in seen.items():
        assert (data["LOCAL_RANK"], data["WORLD_SIZE"], data["MASTER_ADDR"]) == (str(rank % 2), "4", a.addr)
        assert (data["dist_rank"], data["dist_world"], data["all_reduce"], data["argv"]) == (
            rank,
            4,
            10.0,
            [f"--local_rank={rank % 2}", "x"],
        )
    assert_hosts_clean(cluster, [d["pid"] for d in seen.values()])


@pytest.mark.timeout(240)
def test_include_and_exclude_across_hosts(netns_cluster, tmp_path, out_dir, launch_env):
    cluster = netns_cluster(2)
    a, b = cluster.hosts
    (tmp_path / "hostfile").write_text(cluster.hostfile(2))
    write_deepspeed_env(tmp_path, OUT_DIR=str(out_dir))
    env = job_env(cluster, launch_env)
    cases = [
        (f"--include={a.addr}:1@{b.addr}:0", {0: 0, 1: 1}),  # one slot on each host
        (f"--exclude={a.addr}:0", {0: 0, 1: 1, 2: 1}),  # host a keeps slot 1 only
        # One host left runs locally, as in DeepSpeed, unless --force_multi: then over ssh on host b.
        (f"--exclude={a.addr} --force_multi", {0: 1, 1: 1}),
    ]
    for flags, placement in cases:
        for old in out_dir.glob("rank*.json"):
            old.unlink()
        master = b.addr if 0 not in placement.values() else a.addr
        done = run_deepspeed(
            [
                "--hostfile=hostfile",
                *flags.split(),
                "--master_addr",
                master,
                f"--master_port={free_port()}",
                REPORT,
            ],
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert done.returncode == 0, (flags, done.stderr)
        seen = read_ranks(out_dir)
        assert_placed(cluster, seen, placement)
        assert {d["WORLD_SIZE"] for d in seen.values()} == {str(len(placement))}, flags
    assert_hosts_clean(cluster, [])


@pytest.mark.timeout(240)
def test_no_ssh_node_rank_per_host(netns_cluster, tmp_path, out_dir, launch_env):
    cluster = netns_cluster(2)
    a, _ = cluster.hosts
    (tmp_path / "hostfile").write_text(cluster.hostfile(2))
    env = dict(job_env(cluster, launch_env), GLOO_SOCKET_IFNAME=IFNAME, OUT_DIR=str(out_dir), ALLREDUCE="1")
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            host.exec_argv(
                [
                    *DEEPSPEED,
                    "--hostfile",
                    "hostfile",
                    "--no_ssh",
                    f"--node_rank={n}",
                    f"--master_addr={a.addr}",
                    f"--master_port={port}",
                    REPORT,
                ]
            ),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, host in enumerate(cluster.hosts)
    ]
    try:
        outputs = [node.communicate(timeout=200) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait(timeout=30)
    assert [node.returncode for node in nodes] == [0, 0], outputs
    seen = read_ranks(out_dir)
    assert_placed(cluster, seen, {0: 0, 1: 0, 2: 1, 3: 1})
    for rank, data in seen.items():
        assert (data["CROSS_RANK"], data["LOCAL_RANK"], data["all_reduce"], data["dist_world"]) == (
            str(rank // 2),
            str(rank % 2),
            10.0,
            4,
        )
    assert_hosts_clean(cluster, [d["pid"] for d in seen.values()])


@pytest.mark.timeout(240)
def test_ssh_port_reaches_hosts_on_another_port(netns_cluster, tmp_path, out_dir, launch_env):
    cluster = netns_cluster(2, ports=(2222,))  # nothing listens on 22
    a, b = cluster.hosts
    assert cluster.ssh(a, "true").returncode != 0
    (tmp_path / "hostfile").write_text(cluster.hostfile(1))
    write_deepspeed_env(tmp_path, OUT_DIR=str(out_dir))
    # The ssh check and the 'hostname -I' probe go through the port too.
    done = run_deepspeed(
        ["--hostfile=hostfile", "--ssh_port", "2222", f"--master_port={free_port()}", REPORT],
        env=job_env(cluster, launch_env),
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    assert_placed(cluster, seen, {0: 0, 1: 1})
    assert {d["MASTER_ADDR"] for d in seen.values()} == {a.addr}
    assert {line.split(":")[0] for line in done.stdout.splitlines()} == {a.addr, b.addr}
    assert_hosts_clean(cluster, [d["pid"] for d in seen.values()])


@pytest.mark.faults
@pytest.mark.timeout(240)
def test_rank_failing_on_one_host_ends_every_host(netns_cluster, tmp_path, out_dir, launch_env):
    cluster = netns_cluster(2)
    a, b = cluster.hosts
    (tmp_path / "hostfile").write_text(cluster.hostfile(2))
    make_ready_fifo(out_dir)
    # Rank 3 (on host b) exits 3 once the others are up; they ignore SIGTERM and each has a child.
    write_deepspeed_env(tmp_path, OUT_DIR=str(out_dir), FAULT="hang", CRASH_RANK="3")
    started = time.monotonic()
    done = run_deepspeed(
        ["--hostfile=hostfile", "--master_addr", a.addr, f"--master_port={free_port()}", FAULT],
        env=job_env(cluster, launch_env),
        cwd=tmp_path,
        timeout=150,
    )
    assert done.returncode == 3, done.stderr
    closing = done.stderr.strip().splitlines()[-1]
    assert b.addr in closing and "code 3" in closing and "ValueError: boom" in closing, done.stderr
    assert time.monotonic() - started < 120
    assert_hosts_clean(cluster, recorded_pids(out_dir))


@pytest.mark.faults
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["killed", "link_down"])
def test_lost_host_fails_the_job_naming_it(netns_cluster, tmp_path, out_dir, launch_env, how):
    collective_timeout = 60.0
    cluster = netns_cluster(2)
    a, b = cluster.hosts
    (tmp_path / "hostfile").write_text(cluster.hostfile(2))
    fifo = make_ready_fifo(out_dir)
    write_deepspeed_env(tmp_path, OUT_DIR=str(out_dir), COLLECTIVE_TIMEOUT=str(collective_timeout))
    job = start_deepspeed(
        ["--hostfile=hostfile", "--master_addr", a.addr, f"--master_port={free_port()}", LOOP],
        env=job_env(cluster, launch_env),
        cwd=tmp_path,
    )
    try:
        wait_ready(fifo, 4, timeout=150)
        lost_at = time.monotonic()
        b.kill_all() if how == "killed" else b.link_down()
        stdout, stderr = job.communicate(timeout=collective_timeout + 30)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)
    elapsed = time.monotonic() - lost_at
    assert job.returncode != 0, stderr
    assert elapsed < collective_timeout, f"the lost host was noticed only after {elapsed:.0f}s"
    closing = stderr.strip().splitlines()[-1]
    assert f"node {b.addr}" in closing, stderr
    # Host b's ranks, cut off, end by their collective timeout at the latest.
    assert_hosts_clean(cluster, recorded_pids(out_dir), timeout=collective_timeout + 30)


def _losses(directory: Path) -> dict[int, dict[str, float]]:
    return {
        int(p.name.split("rank")[1].split(".")[0]): json.loads(p.read_text())
        for p in directory.glob("loss.rank*.json")
    }


@pytest.mark.timeout(420)
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_across_hosts_equals_one_host_and_resumes_on_one_host(
    netns_cluster, tmp_path, launch_env, stage
):
    cluster = netns_cluster(2)
    a, _ = cluster.hosts
    config = {
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "zero_optimization": {"stage": stage},
    }
    (tmp_path / "ds.json").write_text(json.dumps(config))
    (tmp_path / "hostfile").write_text(cluster.hostfile(2))
    runs = {name: tmp_path / name for name in ("hosts", "local", "resumed")}
    for directory in runs.values():
        directory.mkdir()
    ckpt = tmp_path / "ckpt"
    train = [TRAIN, "--deepspeed", "--deepspeed_config", "ds.json", "--steps", "6", "--save_dir", str(ckpt)]

    write_deepspeed_env(tmp_path, LOSS_DIR=str(runs["hosts"]), OMP_NUM_THREADS="1")
    done = run_deepspeed(
        [
            "--hostfile=hostfile",
            "--master_addr",
            a.addr,
            f"--master_port={free_port()}",
            *train,
            "--save_at",
            "3",
        ],
        env=job_env(cluster, launch_env),
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (tmp_path / ".deepspeed_env").unlink()

    # The same job on this one host (4 local ranks, loopback gloo), from scratch and resumed at step 3.
    local = ["--num_gpus", "4", *train]
    for name, extra in (("local", []), ("resumed", ["--resume"])):
        env = dict(launch_env, LOSS_DIR=str(runs[name]), OMP_NUM_THREADS="1")
        done = run_deepspeed(
            [f"--master_port={free_port()}", *local, *extra], env=env, cwd=tmp_path, timeout=300
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    across, alone, resumed = (_losses(runs[name]) for name in ("hosts", "local", "resumed"))
    assert sorted(across) == sorted(alone) == sorted(resumed) == [0, 1, 2, 3]
    for rank in range(4):
        assert across[rank] == alone[rank], f"rank {rank}"
        assert list(resumed[rank]) == ["4", "5", "6"]
        assert resumed[rank] == {step: across[rank][step] for step in ("4", "5", "6")}, f"rank {rank}"
    assert_hosts_clean(cluster, [])
