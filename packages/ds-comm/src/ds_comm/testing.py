"""A harness that runs a function on N real gloo ranks on 127.0.0.1, for tests of every package.

Each rank is a fresh process (spawn), with the launcher variables set as the ``deepspeed`` launcher
would, and a gloo process group already formed through :func:`ds_comm.init_distributed`. The harness
returns every rank's return value, or raises with the failing rank's traceback; on a failure or a
timeout it kills every rank, so no test leaves processes behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class DistributedTestError(RuntimeError):
    """A rank raised, exited abnormally, or the world ran past its timeout."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(
    fn: Callable[..., Any],
    args: Sequence[Any],
    rank: int,
    world_size: int,
    port: int,
    env: Mapping[str, str],
    results: Any,
) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "LOCAL_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
    )
    os.environ.update(env)
    try:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        import ds_comm

        ds_comm.init_distributed(dist_backend="gloo", verbose=False)
        value = fn(*args)
        try:
            payload = pickle.dumps(value)
        except Exception as exc:  # noqa: BLE001 - report unpicklable results as a test error
            raise DistributedTestError(
                f"rank {rank} returned an unpicklable {type(value).__name__}: {exc}"
            ) from exc
        results.put((rank, "ok", payload))
        ds_comm.destroy_process_group()
    except BaseException:  # noqa: BLE001 - everything a rank raises goes back to the test
        results.put((rank, "error", traceback.format_exc()))


def run_distributed(
    fn: Callable[..., Any],
    world_size: int = 2,
    timeout: float = 120.0,
    args: Sequence[Any] = (),
    env: Mapping[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` gloo ranks and return each rank's result, by rank.

    ``fn`` must be importable by its module path (a module-level function), since ranks are spawned.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(fn, tuple(args), rank, world_size, port, dict(env or {}), results),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    outcomes: dict[int, Any] = {}
    try:
        _collect(procs, results, outcomes, world_size, timeout)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        for proc in procs:
            proc.join(timeout=10)
    return [outcomes[rank] for rank in range(world_size)]


def _collect(
    procs: list[Any], results: Any, outcomes: dict[int, Any], world_size: int, timeout: float
) -> None:
    import time

    deadline = time.monotonic() + timeout
    while len(outcomes) < world_size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = sorted(set(range(world_size)) - set(outcomes))
            raise DistributedTestError(f"ranks {missing} did not finish within {timeout:.0f} s")
        try:
            rank, status, payload = results.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0) and i not in outcomes]
            if dead:
                raise DistributedTestError(
                    f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} before reporting"
                ) from None
            continue
        if status == "error":
            raise DistributedTestError(f"rank {rank} failed:\n{payload}")
        outcomes[rank] = pickle.loads(payload)
