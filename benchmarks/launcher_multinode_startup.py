"""Multi-node launcher start-up: ``deepspeed --hostfile`` over pdsh and real ssh to 2 and 4 hosts,
ours against the reference DeepSpeed's launcher, on the same hosts in one run.

The hosts are network namespaces on this machine, each with its own address and sshd (the fixture
tests/launch/netns_hosts.py builds them; it needs root). Every host runs one rank of a script that
does nothing, so the wall time is the launcher's own cost: the ssh reachability check, pdsh's ssh to
every host, the per-node launcher's start-up and imports on each host, and the teardown. The two
launchers run interleaved, round by round, so machine noise hits them alike.

    sudo python benchmarks/launcher_multinode_startup.py [--repeats 3] [--hosts 2 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "launch"))
sys.path.insert(0, str(REPO))

from netns_hosts import NetnsCluster, free_subnet, netns_unavailable, remove_stale  # noqa: E402

NOOP = "import sys\nsys.exit(0)\n"


def reference_deepspeed() -> Path:
    """The reference launcher: ``DS_REFERENCE_PYTHON``'s venv, /work/dsref-venv, or benchmarks/_reference.py's."""
    for candidate in (os.environ.get("DS_REFERENCE_PYTHON"), "/work/dsref-venv/bin/python"):
        if candidate and Path(candidate).exists():
            return Path(candidate).parent / "deepspeed"
    from benchmarks._reference import reference_bin

    return reference_bin("deepspeed")


def time_once(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one launch; a failed launch aborts the benchmark (its time would mean nothing)."""
    start = time.perf_counter()
    done = subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"{argv[0]} failed with exit code {done.returncode}:\n{done.stderr.decode()[-2000:]}"
        )
    return elapsed


def bench_hosts(count: int, repeats: int, work: Path) -> dict[str, list[float]]:
    """Interleaved launches of both launchers over ``count`` fresh namespace hosts."""
    cluster = NetnsCluster(
        root=work / f"hosts{count}", octet=free_subnet(), tag=f"{os.getpid()}x{count}", ports=(22,)
    )
    try:
        cluster.build(count)
        (work / "hostfile").write_text(cluster.hostfile(1))
        # The reference's node launcher imports torch and its accelerator probe: CPU here.
        (work / ".deepspeed_env").write_text("DS_ACCELERATOR=cpu\n")
        env = cluster.env(dict(os.environ, PYTHONWARNINGS="ignore"))
        common = ["--hostfile", "hostfile", "--master_addr", cluster.hosts[0].addr, "noop.py"]
        commands = {
            "ours": [str(Path(sys.executable).parent / "deepspeed"), *common],
            "reference deepspeed": [str(reference_deepspeed()), *common],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for argv in commands.values():  # warm-up: page cache, .pyc files
            time_once(argv, env, work)
        for _ in range(repeats):
            for name, argv in commands.items():
                times[name].append(time_once(argv, env, work))
        return times
    finally:
        cluster.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    reason = netns_unavailable()
    if reason:
        print(f"skipped: {reason}")
        return
    remove_stale()
    print(
        f"multi-node launcher start-up over pdsh + ssh, 1 no-op rank per host, {args.repeats} repetitions (seconds)"
    )
    print(f"{'hosts':<7}{'launcher':<22}{'median':>9}{'best':>9}")
    for count in args.hosts:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "noop.py").write_text(NOOP)
            times = bench_hosts(count, args.repeats, work)
        for name, samples in times.items():
            print(f"{count:<7}{name:<22}{statistics.median(samples):>9.3f}{min(samples):>9.3f}")
        ratio = statistics.median(times["reference deepspeed"]) / statistics.median(times["ours"])
        print(f"{count:<7}reference / ours (median): {ratio:.2f}x")


if __name__ == "__main__":
    main()
