"""Clients that keep connecting while a reload swaps Caddy's configuration, and what a reload may drop.

Each client opens a new connection per request, so some are always queued or just accepted at the instant
of a swap; some pause between connecting and sending, as over a real network. Used by the reload tests of
`s3cache up` (tests/test_lifecycle.py) and of the Ansible role (tests/deploy/test_ansible_deploy.py).
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from typing import Callable, ContextManager

PAUSES = (0, 0, 0.05, 0.2)  # seconds each client waits between connect and request


class ReloadClients:
    """GET /_s3cache/health on 127.0.0.1:``port`` from one thread per pause; ``results`` holds (pause, outcome)."""

    def __init__(self, port: int, enter: Callable[[], ContextManager] = contextlib.nullcontext):
        self.port, self.enter = port, enter  # enter: where the threads run (a network namespace, say)
        self.results: list[tuple[float, object]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(pause,), daemon=True) for pause in PAUSES]

    def _run(self, pause: float) -> None:
        with self.enter():
            while not self._stop.is_set():
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    conn.connect()
                    time.sleep(pause)
                    conn.request("GET", "/_s3cache/health", headers={"Connection": "close"})
                    response = conn.getresponse()
                    body = response.read()
                    self.results.append((pause, response.status if response.status == 200
                                         else (response.status, body[:300])))
                except (OSError, http.client.HTTPException) as exc:
                    self.results.append((pause, repr(exc)))
                finally:
                    conn.close()

    def __enter__(self) -> "ReloadClients":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


def assert_nothing_dropped(results: list[tuple[float, object]], reloads: int) -> None:
    """Nothing queued is reset and no connection that waits before sending is closed (both were, with Caddy
    binding its own SO_REUSEPORT socket). Left: a request the retiring configuration reads in the very instant
    it stops can be closed unanswered, which a client resends (a GET/HEAD): at most one per reload, and only
    for clients that send at once."""
    failed = [(pause, outcome) for pause, outcome in results if outcome != 200]
    assert all(pause == 0 and "RemoteDisconnected" in str(outcome) for pause, outcome in failed), failed[:5]
    assert len(failed) <= reloads, failed
