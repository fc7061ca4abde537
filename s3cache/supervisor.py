"""A small process supervisor for ``s3cache up``: run the parts, prefix their logs, restart the fallen.

Why not honcho or supervisord: honcho prefixes logs but does not restart a
part that dies, and supervisord needs its own config file and daemon.  What
we need is ~150 lines: start each part in its own session (so a terminal's
Ctrl-C reaches us, and we stop the parts in order), copy each output line
with a ``name |`` prefix, restart a part that exits unexpectedly with
exponential backoff, and on SIGINT/SIGTERM stop everything cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# A part that stayed up this long is considered healthy again: backoff resets.
STABLE_AFTER = 30.0
STOP_GRACE = 10.0


@dataclass
class Part:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    last_exit: int | None = None
    readers: list[threading.Thread] = field(default_factory=list)


class Supervisor:
    def __init__(self, parts: list[Part], status_file: str | None = None, out: TextIO = sys.stdout):
        self.parts = parts
        for part in parts:
            part.backoff = BACKOFF_FIRST
        self.status_file = status_file
        self.out = out
        self._out_lock = threading.Lock()
        self._stop = threading.Event()
        self._width = max(len(p.name) for p in [*parts, Part("s3cache", [], {})])

    # -- output ---------------------------------------------------------------------

    def say(self, name: str, line: str) -> None:
        with self._out_lock:
            self.out.write(f"{name:<{self._width}} | {line.rstrip()}\n")
            self.out.flush()

    def _pump(self, part: Part, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.say(part.name, raw.decode("utf-8", "replace"))
        stream.close()

    # -- lifecycle --------------------------------------------------------------------

    def _start(self, part: Part) -> None:
        part.proc = subprocess.Popen(
            part.argv, env=part.env, cwd=part.cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        part.started_at = time.monotonic()
        part.restart_at = None
        reader = threading.Thread(target=self._pump, args=(part, part.proc.stdout), daemon=True)
        reader.start()
        part.readers = [reader]
        self.say("s3cache", f"started {part.name} (pid {part.proc.pid})")
        self._write_status()

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

    def _stop_all(self) -> None:
        running = [p for p in self.parts if p.proc is not None]
        for part in reversed(running):
            try:
                os.killpg(part.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for part in running:
            try:
                part.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
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
        self._write_status(stopping=True)

    def run(self) -> int:
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for part in self.parts:
                self._start(part)
            while not self._stop.wait(0.2):
                for part in self.parts:
                    self._check(part)
        finally:
            self._stop_all()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0

    # -- status for /_s3cache/health ----------------------------------------------------

    def _write_status(self, stopping: bool = False) -> None:
        if not self.status_file:
            return
        parts = {}
        for p in self.parts:
            state = "stopped" if stopping else ("running" if p.proc is not None else "restarting")
            parts[p.name] = {"status": state, "pid": p.proc.pid if p.proc else None,
                             "restarts": p.restarts, "last_exit": p.last_exit}
        tmp = f"{self.status_file}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"supervisor_pid": os.getpid(), "updated_at": time.time(), "parts": parts}, fh)
            os.replace(tmp, self.status_file)
        except OSError as exc:  # a full or vanished cache disk must not take the supervisor down
            self.say("s3cache", f"cannot write {self.status_file}: {exc.strerror}")
