"""Network namespaces of the test's own, and TCP relays between them.

Every address a deployment test talks to is on a loopback or inside a namespace made here
(10.200.x.x); the only way out is NAT to the package registries, for apt and pip inside the target.

``entered(name)`` switches the *calling thread* into a namespace (``setns``), so a socket made in the
body lives there: the tests reach a stack inside a namespace with plain ``requests`` calls, and a
``Relay`` carries a port of one namespace to a port of another (e.g. a container reaching the test
origin on the host's 127.0.0.1) without any address outside them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str | None):
    """Run the body in network namespace ``name`` (None: stay), on this thread only."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class NetNS:
    """A named network namespace with loopback up; optionally a veth uplink with NAT for egress."""

    def __init__(self, name: str):
        self.name = name
        self.path = Path("/run/netns") / name
        self._nat_rule: list[str] | None = None
        self._forwarding_was: str | None = None

    def create(self) -> "NetNS":
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        return self

    def add_uplink(self, subnet: int) -> str:
        """veth to the host, 10.200.<subnet>.2/30 inside, default route and NAT out; returns the inside address.

        Namespaces with uplinks reach each other through the host by their inside addresses, un-NATed."""
        # Interface names have 15 bytes at most; the name's end tells namespaces of one run apart.
        host_if, ns_if = f"{self.name[-11:]}h", f"{self.name[-11:]}n"
        host_ip, ns_ip = f"10.200.{subnet}.1", f"10.200.{subnet}.2"
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", self.name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", self.name, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", self.name, "link", "set", ns_if, "up")
        _ip("-n", self.name, "route", "add", "default", "via", host_ip)
        forwarding = Path("/proc/sys/net/ipv4/ip_forward")
        self._forwarding_was = forwarding.read_text().strip()
        forwarding.write_text("1\n")
        # Between two such namespaces (a front and its nodes) the host only routes: each sees the other's own
        # address, as hosts on one network do; NAT is for the way out.
        self._nat_rule = ["POSTROUTING", "-t", "nat", "-s", f"10.200.{subnet}.0/30", "!", "-d",
                          "10.200.0.0/16", "-j", "MASQUERADE", "-m", "comment", "--comment", self.name]
        subprocess.run(["iptables", "-A", *self._nat_rule], check=True, capture_output=True)
        return ns_ip

    def delete(self) -> None:
        """Remove everything made here; safe to call after a partial create."""
        if self._nat_rule:
            subprocess.run(["iptables", "-D", *self._nat_rule], capture_output=True)
            self._nat_rule = None
            others = subprocess.run(["iptables", "-t", "nat", "-S", "POSTROUTING"], capture_output=True, text=True)
            # Leave forwarding on while another test run's namespace still needs it.
            if self._forwarding_was == "0" and "s3c-" not in others.stdout:
                Path("/proc/sys/net/ipv4/ip_forward").write_text("0\n")
        if self.path.exists():
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)  # takes the veth along


class Relay:
    """Accept TCP on ``listen`` inside ``listen_ns`` and connect each client to ``target`` inside ``target_ns``."""

    def __init__(self, listen_ns: str | None, listen: tuple[str, int], target_ns: str | None, target: tuple[str, int]):
        self.listen_ns, self.listen, self.target_ns, self.target = listen_ns, listen, target_ns, target
        with entered(listen_ns):
            self._server = socket.create_server(listen, reuse_port=False)
        self._closed = False
        # Open connections, closed with the relay: a socket made in a namespace keeps that namespace (and
        # so its veth and addresses) alive after `ip netns delete`, into the next test's subnets.
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            with entered(self.target_ns):
                upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._conns.update((client, upstream))
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join(timeout=60)
        with self._lock:
            self._conns.difference_update((client, upstream))
        client.close()
        upstream.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), set()
        self._server.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)  # pass the end of the stream on
    except OSError:
        pass
