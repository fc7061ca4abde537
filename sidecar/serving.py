"""Serving the sidecar app with waitress until told to stop, then stopping without cutting anyone off.

waitress's own ``serve`` has no graceful stop: a SIGTERM (a reload, a restart, systemd) ended the process
mid-response, and Caddy's client got a body cut short. Here a stop signal closes this process's copy of the
listening socket (new connections go to whoever else accepts from it, or wait in its queue for the next
sidecar when the supervisor holds it), closes idle keep-alive connections at once (Caddy's transport resends
an idempotent request that meets a closed idle connection), lets requests in flight finish, and returns
once none is left or ``grace`` seconds have passed.

Where the socket comes from: ``SIDECAR_LISTEN_FD`` names a listening socket inherited from ``s3cache up``
(which holds it across sidecar restarts, so no connection is refused while one sidecar replaces another);
without it the sidecar binds S3CACHE_SIDECAR_LISTEN itself (systemd, compose).
"""

from __future__ import annotations

import os
import signal
import socket
import time

from waitress import create_server
from waitress import wasyncore
from waitress.channel import HTTPChannel

from s3cache.config import HostPort
from s3cache.listening import listening_socket

INHERITED_FD = "SIDECAR_LISTEN_FD"
BACKLOG = 1024
POLL = 0.2  # seconds between looks at the connections while stopping


def inherited_socket() -> socket.socket | None:
    """The listening socket ``s3cache up`` handed down, if it did (and forget the variable: not for children)."""
    fd = os.environ.pop(INHERITED_FD, None)
    if not fd or not fd.isdigit():
        return None
    sock = socket.socket(fileno=int(fd))
    sock.setblocking(False)
    return sock


def bind(address: HostPort) -> socket.socket:
    """The one listening socket every request worker accepts from; raises OSError."""
    sock = listening_socket(address, BACKLOG)
    sock.setblocking(False)
    return sock


def _channels(socket_map: dict) -> list[HTTPChannel]:
    return [d for d in list(socket_map.values()) if isinstance(d, HTTPChannel)]


def _busy(channel: HTTPChannel) -> bool:
    # A request being read, queued or answered, or bytes still to send.
    return bool(channel.requests or channel.request is not None or channel.total_outbufs_len)


def serve_until_stopped(app, sock: socket.socket, *, grace: float, **options) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGHUP/SIGINT, then stop as the module docstring says."""
    server = create_server(app, sockets=[sock], **options)
    socket_map = server.map if hasattr(server, "map") else server._map  # several sockets, or the one
    listeners = [d for d in list(socket_map.values()) if isinstance(d, wasyncore.dispatcher) and d.accepting]
    stopping: list[float] = []

    def stop(_signum=None, _frame=None) -> None:
        if not stopping:
            stopping.append(time.monotonic() + grace)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        while not stopping:
            wasyncore.loop(timeout=POLL, map=socket_map, use_poll=True, count=1)
        for listener in listeners:  # this process's copy only: the socket lives on where it is held
            wasyncore.dispatcher.close(listener)
        deadline = stopping[0]
        while time.monotonic() < deadline:
            channels = _channels(socket_map)
            for channel in channels:
                if not _busy(channel):
                    channel.handle_close()
            if not any(_busy(channel) for channel in channels):
                break
            wasyncore.loop(timeout=POLL, map=socket_map, use_poll=True, count=1)
    finally:
        server.task_dispatcher.shutdown(timeout=1)
