"""The listening sockets ``s3cache up`` binds once and hands down: Caddy's front door and the sidecar's.

The sidecar's (SIDECAR_LISTEN_FD, ``sidecar.serving``): held here, it outlives a sidecar restart
(``s3cache reload``), so Caddy's connections wait in its queue for the next sidecar instead of being refused.

Why the supervisor holds Caddy's: Caddy's graceful reload starts the new configuration's server before it stops the
old one. Bound by Caddy itself, each server has its own SO_REUSEPORT socket, and the connections the kernel
had queued on the retiring one are reset when it closes. Handed down (Caddy's ``fd/N`` network), every server
of every configuration accepts from this one queue, which outlives them all, so a reload leaves nothing queued
behind. TCP_DEFER_ACCEPT keeps a connection in the kernel until its request has arrived: no server ever holds
an accepted connection that has not yet sent anything, which a retiring server would close unanswered.

With TLS on, Caddy binds its two listeners itself (the HTTPS port and the port that redirects to it).
"""

from __future__ import annotations

import http.client
import socket

from commands.common import StartError
from s3cache.config import HostPort
from s3cache.listening import bound_socket, cannot_listen

BACKLOG = 4096
# Seconds the kernel keeps a connection that has sent nothing before handing it over anyway.
DEFER_ACCEPT_SECONDS = 10


def _bound(setting: str, address: HostPort) -> socket.socket:
    """A socket bound to ``address``, or one line naming ``setting``."""
    try:
        return bound_socket(address)
    except OSError as exc:
        raise StartError(cannot_listen(setting, address, exc)) from None


def check_port_free(setting: str, address: HostPort) -> None:
    """Fail with one line if nothing of ours could listen on ``address`` (for listeners a part binds itself)."""
    _bound(setting, address).close()


def open_listener(setting: str, address: HostPort, *, defer_accept: bool = False) -> socket.socket:
    """A listening socket on ``address`` to hand down (see the module docstring); kept open by the caller."""
    sock = _bound(setting, address)
    try:
        if defer_accept:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_SECONDS)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise StartError(cannot_listen(setting, address, exc)) from None
    return sock


def open_front_door(address: HostPort) -> socket.socket:
    """The listening socket Caddy will serve from."""
    return open_listener("S3CACHE_LISTEN", address, defer_accept=True)


def open_sidecar_door(address: HostPort) -> socket.socket:
    """The listening socket the sidecar will serve from (its request workers accept from it)."""
    return open_listener("S3CACHE_SIDECAR_LISTEN", address)


def caddy_bind(sock: socket.socket) -> str:
    """What Caddy's ``default_bind`` names the handed-down socket by (the same number in the child: pass_fds)."""
    return f"fd/{sock.fileno()}"


def loopback_for(address: HostPort) -> HostPort:
    """Where to reach a listener bound to ``address`` from this machine."""
    if address.host in ("0.0.0.0", ""):
        return HostPort("127.0.0.1", address.port)
    if address.host == "::":
        return HostPort("::1", address.port)
    return address


def answers_http(address: HostPort) -> bool:
    """True once something answers HTTP on ``address``.

    A connect alone proves nothing here: the kernel completes handshakes on the held socket before Caddy
    accepts any. Any status line will do; our own health endpoint is the request.
    """
    target = loopback_for(address)
    conn = http.client.HTTPConnection(target.host, target.port, timeout=0.5)
    try:
        conn.request("GET", "/_s3cache/health", headers={"Connection": "close"})
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
