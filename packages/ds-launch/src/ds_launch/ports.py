"""Is the master port free? Checked on the master node before any rank starts.

Rank 0 listens on ``MASTER_PORT`` for the rendezvous (torch's TCPStore). When the port is taken, every
rank would start, import torch, and fail with a long traceback from deep inside c10d; checking here
turns that into one line that names the port and the flag to change. The check is only possible when
the master address belongs to this machine; elsewhere (a remote master) it is skipped, and the
rank-side error (ds_comm's ``MasterPortInUseError``) is one line too.
"""

from __future__ import annotations

import errno
import socket

from ds_launch.errors import LaunchError


def is_local_address(addr: str) -> bool:
    """Whether ``addr`` is an address of this machine (one a socket here can bind to)."""
    try:
        infos = socket.getaddrinfo(addr, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind((sockaddr[0], 0))
            except OSError:
                continue
            return True
    return False


def check_master_port(addr: str, port: int) -> None:
    """Raise :class:`LaunchError` when ``port`` is in use on this machine and ``addr`` is local.

    Binds the wildcard address with ``SO_REUSEADDR``, as the rendezvous server does: a port held only
    by connections in TIME_WAIT is free for it, a listening socket on any address is not.
    """
    if not is_local_address(addr):
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise LaunchError(
                    f"--master_port {port}: the port is already in use on this machine "
                    f"(master {addr}); pass a free port with --master_port"
                ) from None
            if err.errno == errno.EACCES:
                raise LaunchError(
                    f"--master_port {port}: permission denied to listen on it; "
                    "pass a port above 1023 with --master_port"
                ) from None
            return  # anything else is the rendezvous' to report; a check must not block a launch
