"""Waiting for rank 0's rendezvous to listen (Note [rendezvous race] in ds_comm.rendezvous_wait): real
sockets on the loopback, a listener that opens late, and one that never does."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ds_comm.rendezvous_wait import RendezvousUnreachableError, wait_until_listening


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_returns_as_soon_as_a_late_listener_opens() -> None:
    port = _free_port()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def open_later() -> None:
        time.sleep(0.3)
        server.bind(("127.0.0.1", port))
        server.listen()

    opener = threading.Thread(target=open_later)
    opener.start()
    try:
        waited = wait_until_listening("127.0.0.1", port, timeout_s=30)
    finally:
        opener.join()
        server.close()
    assert 0.25 < waited < 5  # it waited for the listener, and not through a long back-off after it opened


@pytest.mark.faults
def test_a_rendezvous_that_never_opens_is_named() -> None:
    port = _free_port()  # nobody listens here
    start = time.monotonic()
    with pytest.raises(RendezvousUnreachableError, match=rf"rendezvous at 127\.0\.0\.1:{port} .* within 1 s"):
        wait_until_listening("127.0.0.1", port, timeout_s=1)
    assert time.monotonic() - start < 10
