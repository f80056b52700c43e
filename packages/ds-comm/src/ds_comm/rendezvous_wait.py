"""Ranks other than 0 wait until rank 0's rendezvous server listens before torch connects to it.

Note: [rendezvous race] With ``env://`` rendezvous, rank 0 starts a TCP store on ``MASTER_ADDR:
MASTER_PORT`` and every other rank connects to it. The ranks start together and all import torch
first, so a rank often tries to connect a few milliseconds before rank 0 listens; torch's store
client then backs off before retrying, and the whole group waits with it: on 2 CPU ranks here
``init_process_group`` took 0.62-0.64 s in 2 launches of 5 instead of 0.01-0.02 s, every rank alike.
Probing the port with a plain socket every 2 ms until it accepts a connection costs nothing when the
server is already up and turns that back-off into a wait of a few milliseconds (0.02-0.04 s in 6 of
6 launches). A rendezvous that never opens is reported here, naming the address, instead of after
torch's own wait.
"""

from __future__ import annotations

import socket
import time

import torch.distributed as dist

POLL_S = 0.002


class RendezvousUnreachableError(dist.DistNetworkError):
    """The rendezvous address never accepted a connection within the process-group timeout."""

    ds_user_error = (
        True  # a wrong MASTER_ADDR / MASTER_PORT: one line (Note [user errors] in ds_comm.rank_exit)
    )


def wait_until_listening(host: str, port: int, timeout_s: float) -> float:
    """Block until ``host:port`` accepts a TCP connection; return the seconds waited.

    Raises :class:`RendezvousUnreachableError` after ``timeout_s``."""
    start = time.monotonic()
    deadline = start + timeout_s
    last: OSError | None = None
    while True:
        try:
            with socket.create_connection(
                (host, port), timeout=max(0.05, min(1.0, deadline - time.monotonic()))
            ):
                return time.monotonic() - start
        except OSError as err:  # refused (not yet listening), unresolvable, unreachable: try again
            last = err
        if time.monotonic() >= deadline:
            raise RendezvousUnreachableError(
                f"the rendezvous at {host}:{port} (MASTER_ADDR:MASTER_PORT) accepted no connection within "
                f"{timeout_s:.0f} s ({last}); is rank 0 running, and are the address and port right?"
            )
        time.sleep(POLL_S)
