"""A small process supervisor for ``s3cache up``: run the parts, prefix their logs, restart the fallen.

Why not honcho or supervisord: honcho prefixes logs but does not restart a
part that dies, and supervisord needs its own config file and daemon.  What
we need is small: start the parts in order, each one taking traffic (its
``ready`` probe) before the next starts, so Caddy never forwards to a sidecar
that is not listening yet; copy each output line with a ``name |`` prefix;
restart a part that exits unexpectedly with exponential backoff; on
SIGINT/SIGTERM/SIGHUP stop them in reverse order; on SIGUSR1 apply a reloaded
configuration (a part with ``reload_argv`` reloads in place, Caddy's graceful
reload; the others restart one at a time).

The parts never outlive the supervisor: each is started with
``PR_SET_PDEATHSIG`` = SIGKILL, so even a SIGKILLed supervisor takes them
along.  The kernel sends that signal when the *thread* that forked the child
exits, so every part is started from the thread that calls ``run()`` and
stays in it for the supervisor's life.  Each part runs in its own session: a
terminal's signals reach the supervisor only, which stops the parts in order.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from s3cache import atomic

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# A part that stayed up this long is considered healthy again: backoff resets.
STABLE_AFTER = 30.0
STOP_GRACE = 10.0
# How long a part may take to pass its ready probe at start-up before the stack gives up.
READY_TIMEOUT = 60.0
RELOAD_TIMEOUT = 60.0

_PR_SET_PDEATHSIG = 1


def _load_prctl():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):  # not Linux: no parent-death signal, parts stop with the supervisor only
        return None


_prctl = _load_prctl()


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when the forking thread (and so the supervisor) dies."""
    if _prctl is None:
        return None

    def preexec() -> None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the supervisor died between fork and prctl: nobody would kill us
            os._exit(1)
    return preexec


@dataclass
class Part:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    # True once the part takes traffic; the next part starts only then (None: ready when started).
    ready: Callable[[], bool] | None = None
    # A command that applies a new configuration without stopping the part (run with env and cwd).
    reload_argv: list[str] | None = None
    # The setting naming the address the part listens on, and that address: for a one-line port error.
    port_setting: str | None = None
    address: str | None = None
    # File descriptors the part inherits under the same numbers (Caddy's front door: commands.front_door).
    pass_fds: tuple[int, ...] = ()
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    last_exit: int | None = None
    readers: list[threading.Thread] = field(default_factory=list)
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))


class Supervisor:
    def __init__(self, parts: list[Part], status_file: str | None = None, out: TextIO = sys.stdout,
                 reload_parts: Callable[[], list[Part]] | None = None):
        self.parts = parts
        for part in parts:
            part.backoff = BACKOFF_FIRST
        self.status_file = status_file
        self.out = out
        self.reload_parts = reload_parts
        self.reloads = 0
        self.last_reload: dict | None = None
        self.failure: str | None = None
        self._out_lock = threading.Lock()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._width = max(len(p.name) for p in [*parts, Part("s3cache", [], {})])

    # -- output ---------------------------------------------------------------------

    def say(self, name: str, line: str) -> None:
        with self._out_lock:
            self.out.write(f"{name:<{self._width}} | {line.rstrip()}\n")
            self.out.flush()

    def _pump(self, part: Part, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            part.recent.append(line)
            self.say(part.name, line)
        stream.close()

    # -- lifecycle --------------------------------------------------------------------

    def _start(self, part: Part) -> None:
        part.recent.clear()
        part.proc = subprocess.Popen(
            part.argv, env=part.env, cwd=part.cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=part.pass_fds,
            preexec_fn=_die_with_parent(os.getpid()))
        part.started_at = time.monotonic()
        part.restart_at = None
        reader = threading.Thread(target=self._pump, args=(part, part.proc.stdout), daemon=True)
        reader.start()
        part.readers = [reader]
        # Recorded before announced: whoever reads "started" in the log finds the pid in the status file.
        self._write_status()
        self.say("s3cache", f"started {part.name} (pid {part.proc.pid})")

    def _exit_reason(self, part: Part, code: int) -> str:
        for r in part.readers:
            r.join(timeout=1)
        if part.port_setting and any("already in use" in line for line in part.recent):
            return f"{part.port_setting}: {part.address} is already in use by another program"
        last = next((line.strip() for line in reversed(part.recent) if line.strip()), "")
        return f"{part.name} exited with code {code} while starting" + (f": {last}" if last else "")

    def _wait_ready(self, part: Part, timeout: float = READY_TIMEOUT) -> str | None:
        """Wait for ``part`` to take traffic; the reason it never will, or None once it does."""
        deadline = time.monotonic() + timeout
        while True:
            code = part.proc.poll()
            if code is not None:
                reason = self._exit_reason(part, code)
                part.last_exit, part.proc = code, None
                return reason
            if part.ready is None or part.ready():
                return None
            if self._stop.is_set():
                return "stopped while starting"
            if time.monotonic() > deadline:
                return f"{part.name} did not become ready within {timeout:.0f}s"
            time.sleep(0.05)

    def _check(self, part: Part) -> None:
        now = time.monotonic()
        if part.proc is None:
            if part.restart_at is not None and now >= part.restart_at:
                part.restarts += 1
                self._start(part)
            return
        code = part.proc.poll()
        if code is None:
            if now - part.started_at > STABLE_AFTER:
                part.backoff = BACKOFF_FIRST
            return
        for r in part.readers:
            r.join(timeout=1)
        part.last_exit = code
        part.proc = None
        if now - part.started_at > STABLE_AFTER:
            part.backoff = BACKOFF_FIRST
        delay = part.backoff
        part.backoff = min(part.backoff * 2, BACKOFF_MAX)
        part.restart_at = now + delay
        self.say("s3cache", f"{part.name} exited unexpectedly with code {code}; restarting in {delay:.1f}s")
        self._write_status()

    def request_stop(self, signum: int | None = None, _frame=None) -> None:
        if signum is not None and not self._stop.is_set():
            self.say("s3cache", f"received {signal.Signals(signum).name}; stopping")
        self._stop.set()

    def request_reload(self, signum: int | None = None, _frame=None) -> None:
        self._reload.set()

    def _stop_part(self, part: Part) -> None:
        if part.proc is None:
            return
        try:
            os.killpg(part.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            part.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.say("s3cache", f"{part.name} did not stop in {STOP_GRACE:.0f}s; killing it")
            try:
                os.killpg(part.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            part.proc.wait()
        for r in part.readers:
            r.join(timeout=1)
        self.say("s3cache", f"stopped {part.name}")
        part.proc = None

    def _stop_all(self) -> None:
        # Reverse start order, one at a time: Caddy stops taking traffic before the sidecar goes away.
        for part in reversed(self.parts):
            self._stop_part(part)
        self._write_status(stopping=True)

    def run(self) -> int:
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
            previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self.request_reload)
        try:
            for part in self.parts:
                if self._stop.is_set():
                    break
                self._start(part)
                reason = self._wait_ready(part)
                if reason is not None:
                    if not self._stop.is_set():
                        self.failure = reason
                        self.say("s3cache", f"{reason}; stopping")
                    break
            else:
                self.say("s3cache", "all parts running")
            if self.failure is None:
                while not self._stop.wait(0.2):
                    if self._reload.is_set():
                        self._reload.clear()
                        self._apply_reload()
                    for part in self.parts:
                        self._check(part)
        finally:
            self._stop_all()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 1 if self.failure else 0

    # -- reload -----------------------------------------------------------------------

    def _apply_reload(self) -> None:
        self.say("s3cache", "reloading the configuration")
        try:
            if self.reload_parts is None:
                raise RuntimeError("this supervisor cannot reload")
            fresh = {p.name: p for p in self.reload_parts()}
            errors = []
            for part in self.parts:  # start order: the sidecar is back before Caddy is pointed at it
                new = fresh.get(part.name)
                if new is None:
                    continue
                error = self._reload_part(part, new)
                if error:
                    errors.append(error)
            error = "; ".join(errors) or None
        except Exception as exc:  # a bad new configuration leaves the running one in place
            error = str(exc) or exc.__class__.__name__
        self.reloads += 1
        self.last_reload = {"ok": error is None, "error": error, "at": time.time()}
        self.say("s3cache", "reloaded" if error is None else f"reload failed: {error}")
        self._write_status()

    def _reload_part(self, part: Part, new: Part) -> str | None:
        if part.reload_argv and new.reload_argv and part.proc is not None:
            try:
                done = subprocess.run(new.reload_argv, env=new.env, cwd=new.cwd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=RELOAD_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"{part.name}: {exc}"
            if done.returncode != 0:
                lines = [ln for ln in done.stdout.decode("utf-8", "replace").splitlines() if ln.strip()]
                for line in lines:
                    self.say(part.name, line)
                return f"{part.name}: reload exited with code {done.returncode}" + (f": {lines[-1]}" if lines else "")
            self._adopt(part, new)
            self.say("s3cache", f"reloaded {part.name} in place (pid {part.proc.pid})")
            return None
        self._stop_part(part)
        self._adopt(part, new)
        part.backoff = BACKOFF_FIRST
        self._start(part)
        reason = self._wait_ready(part, RELOAD_TIMEOUT)
        if reason is not None:
            part.restart_at = time.monotonic() + part.backoff  # the usual restart loop takes it from here
            return reason
        return None

    @staticmethod
    def _adopt(part: Part, new: Part) -> None:
        part.argv, part.env, part.cwd = new.argv, new.env, new.cwd
        part.ready, part.reload_argv = new.ready, new.reload_argv
        part.port_setting, part.address, part.pass_fds = new.port_setting, new.address, new.pass_fds

    # -- status for /_s3cache/health ----------------------------------------------------

    def _write_status(self, stopping: bool = False) -> None:
        if not self.status_file:
            return
        parts = {}
        for p in self.parts:
            state = "stopped" if stopping else ("running" if p.proc is not None else "restarting")
            parts[p.name] = {"status": state, "pid": p.proc.pid if p.proc else None,
                             "restarts": p.restarts, "last_exit": p.last_exit}
        status = {"supervisor_pid": os.getpid(), "updated_at": time.time(), "parts": parts,
                  "reloads": self.reloads, "last_reload": self.last_reload}
        try:
            atomic.write(self.status_file, json.dumps(status))
        except OSError as exc:  # a full or vanished cache disk must not take the supervisor down
            self.say("s3cache", f"cannot write {self.status_file}: {exc.strerror}")
