"""The master-port check the launcher runs before starting ranks (real sockets)."""

from __future__ import annotations

import socket

import pytest

from ds_launch.errors import LaunchError
from ds_launch.ports import check_master_port, is_local_address


def _listening(addr: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((addr, 0))
    sock.listen()
    return sock


def test_a_port_in_use_is_one_line_naming_the_port_and_the_flag():
    with _listening() as sock:
        port = sock.getsockname()[1]
        with pytest.raises(
            LaunchError,
            match=rf"^--master_port {port}: the port is already in use on this machine "
            r"\(master 127\.0\.0\.1\); pass a free port with --master_port$",
        ):
            check_master_port("127.0.0.1", port)
        with pytest.raises(LaunchError):
            check_master_port("localhost", port)


def test_a_free_port_and_a_port_left_in_time_wait_pass():
    # A finished job's rendezvous server (which, like ours, sets SO_REUSEADDR) leaves TIME_WAIT behind.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the side that closes first keeps the port in TIME_WAIT
        client.close()
    check_master_port("127.0.0.1", port)


def test_a_remote_master_is_not_checked():
    assert is_local_address("127.0.0.1") and is_local_address("localhost")
    assert not is_local_address("192.0.2.1")  # TEST-NET-1: never an address of this machine
    assert not is_local_address("no-such-host.invalid")
    with _listening() as sock:
        check_master_port("192.0.2.1", sock.getsockname()[1])
