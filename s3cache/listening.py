"""Binding a listening TCP socket, and saying in one line why it could not be done.

Shared by ``s3cache up`` (which binds the front door and the sidecar's socket to hand them down) and the
sidecar (which binds its own when nothing was handed down: systemd, compose).  SO_REUSEADDR, as Caddy and
waitress set it, so a recently closed connection does not count; never SO_REUSEPORT, which would let us bind
beside a live listener (as Caddy once did beside an orphan) and split one queue in two.
"""

from __future__ import annotations

import errno
import socket

from s3cache.config import HostPort


def bound_socket(address: HostPort) -> socket.socket:
    """A TCP socket bound to ``address`` (not yet listening); raises OSError."""
    sock = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
    except OSError:
        sock.close()
        raise
    return sock


def listening_socket(address: HostPort, backlog: int) -> socket.socket:
    """``bound_socket``, listening; raises OSError."""
    sock = bound_socket(address)
    try:
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def cannot_listen(setting: str, address: HostPort, exc: OSError) -> str:
    """The one line an operator reads when ``setting``'s address cannot be listened on."""
    if exc.errno == errno.EADDRINUSE:
        return f"{setting}: {address} is already in use by another program"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{setting}: {address.host} is not an address of this machine"
    if exc.errno == errno.EACCES:
        return f"{setting}: no permission to listen on {address}"
    return f"{setting}: cannot listen on {address}: {exc.strerror}"
