"""Real hosts on one machine: Linux network namespaces, each with its own address and its own sshd.

A :class:`NetnsCluster` is N namespaces joined by a bridge in the root namespace, in a private test
subnet (``10.213.X.0/24``) that exists only on interfaces created here: the root namespace (where
the launcher runs) is ``.1``, host ``i`` is ``.(i + 2)`` on an interface named :data:`IFNAME` in
its namespace. Every host runs Debian's sshd with its own config, host key and pid file under the
test's tmp dir, accepting one generated key for root. The ssh client is reached through a wrapper
``ssh`` (first on ``PATH``) that adds ``-F <config>``, whose ``known_hosts`` lists each host key, so
``ssh 10.213.X.2`` works non-interactively for pdsh, mpirun and the launcher alike.

The namespaces share this machine's file system and pid space, so ranks run this interpreter and
the repository's sources, and tests can see (and wait for) every pid.

Note [teardown always]: :meth:`NetnsCluster.teardown` kills every process in each namespace
(``ip netns pids``), deletes the namespaces (which deletes their veth ends) and the bridge; the
fixture runs it as a finalizer, so it happens when a test fails too. A run killed before its
finalizer leaves names carrying its pid; the next fixture removes those whose pid is gone.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import select
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

IFNAME = "dsnet0"  # the host's interface inside every namespace (GLOO_SOCKET_IFNAME names it)
SUBNET_PREFIX = "10.213"
SSHD = "/usr/sbin/sshd"
_NS_NAME = re.compile(r"^dsn(\d+)x\d+h\d+$")
_BR_NAME = re.compile(r"^dsb(\d+)x\d+$")
_COUNTER = itertools.count()


def _run(argv: Sequence[str], *, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=check, stdin=subprocess.DEVNULL
    )


def netns_unavailable() -> str | None:
    """Why namespace hosts cannot be built here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespace hosts need root"
    for tool in ("ip", "ssh", "ssh-keygen", "pdsh"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed"
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (Debian's openssh-server)"
    probe = f"dsn{os.getpid()}x999h0"
    added = _run(["ip", "netns", "add", probe], check=False)
    if added.returncode != 0:
        return f"'ip netns add' fails here: {added.stderr.strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ns_pids(ns: str) -> set[int]:
    """The pids of the processes in namespace ``ns`` (empty when it is gone)."""
    out = _run(["ip", "netns", "pids", ns], check=False)
    return {int(word) for word in out.stdout.split()} if out.returncode == 0 else set()


def _wait_pids_gone(pids: set[int], timeout: float) -> set[int]:
    """Block on each pid's pidfd until it exits (bounded); return the ones still alive."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            continue
        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
    return {pid for pid in pids if _pid_alive(pid)}


def _kill_namespace(ns: str) -> None:
    for _ in range(3):  # a dying process may have forked: repeat until the namespace is empty
        pids = ns_pids(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_pids_gone(pids, 10)
    _run(["ip", "netns", "del", ns], check=False)


def remove_stale() -> None:
    """Delete namespaces and bridges left by test processes that died before their finalizer ran."""
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NS_NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _kill_namespace(name)
    for line in _run(["ip", "-o", "link", "show", "type", "bridge"], check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        match = _BR_NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _run(["ip", "link", "del", name], check=False)


def free_subnet() -> int:
    """A third octet X such that no interface here holds an address in 10.213.X.0/24."""
    used = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    start = os.getpid() % 200
    for offset in range(250):
        octet = (start + offset) % 250 + 1
        if f" {SUBNET_PREFIX}.{octet}." not in used:
            return octet
    raise RuntimeError("no free 10.213.X.0/24 test subnet")


@dataclass
class NetnsHost:
    """One namespace host: its namespace name, its address and its sshd."""

    ns: str
    addr: str
    index: int
    sshd_pid: int = 0

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def pids(self) -> set[int]:
        return ns_pids(self.ns)

    def job_pids(self) -> set[int]:
        """Processes in this host other than its sshd daemon (what a job left behind)."""
        return {pid for pid in self.pids() if pid != self.sshd_pid}

    def netns_inode(self) -> int:
        """The inode of this namespace, as a process inside it sees in ``/proc/self/ns/net``."""
        return os.stat(f"/run/netns/{self.ns}").st_ino

    def link_down(self) -> None:
        """Take the host off the network: its interface goes down (its processes keep running)."""
        _run(self.exec_argv(["ip", "link", "set", IFNAME, "down"]))

    def kill_all(self) -> None:
        """The host dies: SIGKILL to every process in it, its sshd included."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class NetnsCluster:
    """N namespace hosts on one bridge, reachable by ssh from the root namespace."""

    root: Path
    octet: int
    tag: str
    ports: tuple[int, ...]
    hosts: list[NetnsHost] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @property
    def subnet(self) -> str:
        return f"{SUBNET_PREFIX}.{self.octet}.0/24"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def ssh_wrapper(self) -> Path:
        return self.bin_dir / "ssh"

    @property
    def bridge(self) -> str:
        return f"dsb{self.tag}"

    def hostfile(self, slots: int = 2, hosts: Sequence[NetnsHost] | None = None) -> str:
        """A hostfile naming the hosts by address."""
        return "".join(f"{h.addr} slots={slots}\n" for h in (self.hosts if hosts is None else hosts))

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with the ssh wrapper first on PATH (pdsh, mpirun and the launcher find it there)."""
        return dict(base, PATH=f"{self.bin_dir}:{base.get('PATH', os.defpath)}")

    def ssh(
        self, host: NetnsHost, command: str, *, port: int | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        """Run ``command`` on ``host`` through the wrapper."""
        port_args = ["-p", str(port)] if port is not None else []
        return _run([str(self.ssh_wrapper), *port_args, host.addr, command], timeout=timeout, check=False)

    # -- building -------------------------------------------------------------------------------
    def build(self, count: int) -> None:
        self.bin_dir.mkdir(parents=True)
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.links.append(self.bridge)
        _run(["ip", "addr", "add", f"{SUBNET_PREFIX}.{self.octet}.1/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for index in range(count):
            self.hosts.append(self._add_host(index))
        self._write_client_files()
        for host in self.hosts:
            self._start_sshd(host)

    def _add_host(self, index: int) -> NetnsHost:
        host = NetnsHost(
            ns=f"dsn{self.tag}h{index}", addr=f"{SUBNET_PREFIX}.{self.octet}.{index + 2}", index=index
        )
        _run(["ip", "netns", "add", host.ns])
        outer, inner = f"v{self.tag}h{index}", f"i{self.tag}h{index}"
        _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
        _run(["ip", "link", "set", inner, "netns", host.ns])
        _run(["ip", "link", "set", outer, "master", self.bridge])
        _run(["ip", "link", "set", outer, "up"])
        _run(host.exec_argv(["ip", "link", "set", inner, "name", IFNAME]))
        _run(host.exec_argv(["ip", "addr", "add", f"{host.addr}/24", "dev", IFNAME]))
        _run(host.exec_argv(["ip", "link", "set", IFNAME, "up"]))
        _run(host.exec_argv(["ip", "link", "set", "lo", "up"]))
        return host

    def _write_client_files(self) -> None:
        keys = self.root / "keys"
        keys.mkdir()
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "ds-netns-test",
                "-f",
                str(keys / "id_ed25519"),
            ]
        )
        (keys / "authorized_keys").write_text((keys / "id_ed25519.pub").read_text())
        known = []
        for host in self.hosts:
            key = keys / f"host_{host.index}"
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
            public = " ".join(Path(f"{key}.pub").read_text().split()[:2])
            for port in self.ports:
                name = host.addr if port == 22 else f"[{host.addr}]:{port}"
                known.append(f"{name} {public}\n")
        (keys / "known_hosts").write_text("".join(known))
        # No keep-alive here on purpose: detecting a lost host is the launcher's job.
        (self.root / "ssh_config").write_text(
            "Host *\n  User root\n"
            f"  IdentityFile {keys / 'id_ed25519'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {keys / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  PasswordAuthentication no\n"
            "  LogLevel ERROR\n"
        )
        self.ssh_wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {self.root / "ssh_config"} "$@"\n')
        self.ssh_wrapper.chmod(0o755)

    def _start_sshd(self, host: NetnsHost) -> None:
        keys = self.root / "keys"
        config = self.root / f"sshd_{host.index}.conf"
        pidfile = self.root / f"sshd_{host.index}.pid"
        config.write_text(
            "".join(f"Port {port}\n" for port in self.ports) + f"ListenAddress {host.addr}\n"
            f"HostKey {keys / f'host_{host.index}'}\n"
            f"PidFile {pidfile}\n"
            f"AuthorizedKeysFile {keys / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nX11Forwarding no\nPrintMotd no\nLogLevel ERROR\nMaxStartups 100\n"
            # A session whose client vanished (its link went down) ends instead of lingering for hours.
            "ClientAliveInterval 5\nClientAliveCountMax 2\n"
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        # Without -D sshd returns once its daemon listens: no polling. The daemon writes its pid file
        # after that, so its pid is taken from the namespace, where it is the only process yet.
        started = _run(
            host.exec_argv([SSHD, "-f", str(config), "-E", str(self.root / f"sshd_{host.index}.log")]),
            check=False,
        )
        pids = host.pids()
        if started.returncode != 0 or len(pids) != 1:
            raise RuntimeError(f"sshd on {host.ns} did not start ({pids}): {started.stderr.strip()}")
        host.sshd_pid = pids.pop()

    # -- tearing down -----------------------------------------------------------------------------
    def teardown(self) -> None:
        """Kill everything in every namespace, delete the namespaces and the bridge (Note [teardown always])."""
        for host in self.hosts:
            _kill_namespace(host.ns)
        for link in self.links:
            _run(["ip", "link", "del", link], check=False)


@pytest.fixture
def netns_cluster(tmp_path: Path) -> Iterator[Callable[..., NetnsCluster]]:
    """A factory: ``netns_cluster(n, ports=(22,))`` builds n namespace hosts (torn down after the test)."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    remove_stale()
    clusters: list[NetnsCluster] = []

    def make(count: int, *, ports: tuple[int, ...] = (22,)) -> NetnsCluster:
        cluster = NetnsCluster(
            root=tmp_path / f"netns{len(clusters)}",
            octet=free_subnet(),
            tag=f"{os.getpid()}x{next(_COUNTER)}",
            ports=ports,
        )
        clusters.append(cluster)
        cluster.build(count)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.teardown()
