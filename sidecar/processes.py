"""The sidecar's processes when S3CACHE_SIDECAR_WORKERS > 1: one socket, N request workers, one fill process.

``python -m sidecar`` stays the one entry point (the supervisor, systemd and
compose run it as before): with more than one worker it binds
S3CACHE_SIDECAR_LISTEN itself, forks the request workers, each serving that
same socket with waitress (``serve(app, sockets=[...])``), and forks one fill
process, which runs the fill pool and owns every counter behind the status
page, the metrics and health (``sidecar.backchannel``).  This process then
only watches: a child that dies is forked again (with backoff), and SIGTERM,
SIGINT or SIGHUP stops them all.

Why one shared socket rather than Caddy balancing N sidecar ports: nothing
outside the sidecar changes (one address in the Caddyfile, one systemd unit,
one compose service), the kernel hands a connection to a worker that is
waiting in ``accept`` (a worker busy with the GIL does not take it), and a
worker restarted after a crash drops no connection: the socket stays open
here meanwhile.

The children never outlive this process: each asks for SIGKILL when it dies
(``PR_SET_PDEATHSIG``, as the supervisor does for its parts), so even a
SIGKILLed supervisor, whose death SIGKILLs this process, takes them along.
``run/sidecar.json`` names them (health reports it, and it tells tests which
pids to look for).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Callable

from s3cache import atomic
from s3cache.config import Config
from s3cache.layout import Layout

log = logging.getLogger("sidecar")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0
STOP_GRACE = 8.0  # below the supervisor's 10 s: the children are ours to stop, not its to kill
FILL_STOP = signal.SIGUSR2  # the master's word to the fill process to stop
FILL_READY_TIMEOUT = 15.0  # seconds the workers wait for the fill process at start
_PR_SET_PDEATHSIG = 1


def report(layout: Layout) -> dict:
    """The sidecar's processes as ``run/sidecar.json`` names them, and which one answers: for health."""
    state = atomic.read_json(layout.sidecar_file) or {}
    return {"workers": state.get("workers"), "worker_pids": state.get("worker_pids"),
            "fill_pid": state.get("fill_pid"), "answered_by": os.getpid()}


def write_state(layout: Layout, workers: list[int], fill_pid: int | None, restarts: int = 0) -> None:
    state = {"pid": os.getpid(), "workers": len(workers), "worker_pids": sorted(workers),
             "fill_pid": fill_pid, "restarts": restarts, "updated_at": time.time()}
    try:
        atomic.write(layout.sidecar_file, json.dumps(state))
    except OSError as exc:  # a full cache disk must not take the sidecar down
        log.warning("cannot write %s: %s", layout.sidecar_file, exc.strerror)


def _die_with(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the children stop with a SIGTERM to us only
        pass
    if os.getppid() != parent:  # we died between fork and prctl: nobody would kill the child
        os._exit(1)


class _Stop(Exception):
    pass


class Master:
    """Fork the fill process and the request workers, re-fork the fallen, stop them all on a signal."""

    def __init__(self, config: Config, layout: Layout, fill_main: Callable[[], None],
                 worker_main: Callable[[], None], fill_ready: Callable[[], bool] | None = None):
        self.config, self.layout = config, layout
        self.fill_ready = fill_ready
        self.roles: dict[str, Callable[[], None]] = {"fill": fill_main}
        for i in range(config.sidecar_workers):
            self.roles[f"worker-{i}"] = worker_main
        self.children: dict[int, str] = {}
        self.started: dict[str, float] = {}
        self.backoff = {role: BACKOFF_FIRST for role in self.roles}
        self.restarts = 0
        self.stopping = False

    def _fork(self, role: str) -> None:
        parent = os.getpid()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with(parent)
                for sig in (signal.SIGTERM, signal.SIGHUP):
                    # The fill process stops after the workers, on the master's word (_stop_all).
                    signal.signal(sig, signal.SIG_IGN if role == "fill" else (lambda *_: sys.exit(0)))
                signal.signal(FILL_STOP, lambda *_: sys.exit(0))
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the master's to act on
                self.roles[role]()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0
            except BaseException:
                log.exception("sidecar %s crashed", role)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = role
        self.started[role] = time.monotonic()
        log.info("started %s (pid %d)", role, pid)

    def _write_state(self) -> None:
        workers = [pid for pid, role in self.children.items() if role != "fill"]
        fill = next((pid for pid, role in self.children.items() if role == "fill"), None)
        write_state(self.layout, workers, fill, self.restarts)

    def _on_signal(self, signum, _frame) -> None:
        if not self.stopping:
            self.stopping = True
            raise _Stop()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            for role in self.roles:  # the fill process first: workers hand it jobs from their first miss
                self._fork(role)
                if role == "fill":
                    self._wait_fill_ready()
            self._write_state()
            while True:
                pid, status = os.wait()
                self._fallen(pid, status)
        except _Stop:
            pass
        except ChildProcessError:
            pass
        self._stop_all()
        return 0

    def _wait_fill_ready(self) -> None:
        """Until the fill process answers (bounded): a worker's first health check must not find it missing.

        Connections wait in the socket's queue meanwhile, so a (re)started sidecar answers late, never 503.
        """
        if self.fill_ready is None:
            return
        deadline = time.monotonic() + FILL_READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.fill_ready():
                return
            time.sleep(0.02)
        log.warning("the fill process did not answer within %.0fs; starting the workers anyway", FILL_READY_TIMEOUT)

    def _fallen(self, pid: int, status: int) -> None:
        role = self.children.pop(pid, None)
        if role is None:
            return
        code = os.waitstatus_to_exitcode(status)
        now = time.monotonic()
        if now - self.started.get(role, now) > STABLE_AFTER:
            self.backoff[role] = BACKOFF_FIRST
        delay = self.backoff[role]
        self.backoff[role] = min(delay * 2, BACKOFF_MAX)
        log.warning("sidecar %s (pid %d) exited with %s; restarting in %.1fs", role, pid, code, delay)
        self._write_state()
        time.sleep(delay)
        self.restarts += 1
        self._fork(role)
        self._write_state()

    def _stop_all(self) -> None:
        # The request workers first (they finish what is in flight: sidecar.serving), then the fill process,
        # which they ask until their last answer (health, status). A stop signal to the whole process group
        # (the supervisor's) reaches the fill process too: it waits for ours (FILL_STOP).
        deadline = time.monotonic() + STOP_GRACE
        workers = [pid for pid, role in self.children.items() if role != "fill"]
        self._signal(workers, signal.SIGTERM)
        self._reap(workers, deadline)
        self._signal(list(self.children), FILL_STOP)
        self._reap(list(self.children), deadline)
        for pid in list(self.children):
            log.warning("sidecar %s (pid %d) did not stop; killing it", self.children[pid], pid)
            self._signal([pid], signal.SIGKILL)
        self._reap(list(self.children), float("inf"))
        write_state(self.layout, [], None, self.restarts)

    @staticmethod
    def _signal(pids: list[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _reap(self, pids: list[int], deadline: float) -> None:
        """Wait for ``pids`` to exit, until ``deadline``."""
        waiting = set(pids)
        while waiting & set(self.children):
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            except InterruptedError:
                continue
            if pid:
                self.children.pop(pid, None)
                continue
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)


