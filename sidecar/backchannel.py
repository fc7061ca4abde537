"""What the request workers and the fill process say to each other (S3CACHE_SIDECAR_WORKERS > 1).

The fill process owns everything the workers share: the fill pool with its
queue bound and per-object coalescing (``sidecar.fill.Filler``: one queued
fill per object, at most MAX_PENDING waiting; the object's flock still
guarantees one fetch per object across every process), and every counter
behind the status page, the metrics, ``s3cache stats`` and health (the
collector, the fill outcomes, admission's decisions, the sidecar's misses).
So there is one set of counters and nothing to add up on read.

The channel is a unix stream socket in the abstract namespace (no file to
leave behind, no path-length limit), bound by the sidecar's master before it
forks (``sidecar.processes``): it outlives a restarted fill process, whose
successor accepts what was queued meanwhile.  Only processes of our own uid
are heard (``SO_PEERCRED``): a job names a URL to fetch into the cache.

Each request worker keeps one connection and writes one JSON line per event
(a fill job, a miss, an admission decision, the outcome of a fill it ran
itself: streams and refreshes stay with their client's worker).  Writes go
into the kernel's socket buffer, so a miss never waits for the fill process.
A question (the snapshot, the fill state) opens its own connection; before
answering, the fill process reads every line already sent on any connection,
so an answer counts every request already answered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import selectors
import socket
import struct
import threading
import time
from dataclasses import asdict
from typing import Iterator

from s3cache.config import Config
from s3cache.layout import Layout, ObjectRef
from sidecar.admission import Admission
from sidecar.fill import DiskFailure, Filler, FillResult

log = logging.getLogger("sidecar.backchannel")

SEND_TIMEOUT = 2.0      # the fill process reads at once; a full buffer this long means it is stuck
QUERY_TIMEOUT = 30.0    # a snapshot reads the access log's new lines first
PENDING = "pending:"  # a question: is a fill of this [bucket, key] queued or running?
HEALTH_TIMEOUT = 5.0    # health must answer a stuck fill process with "degraded", not hang
WARNING_INTERVAL = 10.0
MAX_LINE = 1 << 20
DRAIN_ROUNDS = 100


def address() -> str:
    """A fresh abstract-namespace name for this sidecar's channel."""
    return f"\0s3cache-sidecar-{os.getpid()}-{secrets.token_hex(8)}"


def listen(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(name)
    sock.listen(256)
    return sock


def _encode(msg: dict) -> bytes:
    return (json.dumps(msg, separators=(",", ":")) + "\n").encode("ascii")


# -- the request workers' side ---------------------------------------------------------------------


class BackLink:
    """A request worker's end: one-way events on a kept connection, questions on their own."""

    def __init__(self, name: str):
        self.name = name
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_warning = float("-inf")
        self._lost = 0
        self._held = threading.local()

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.name)
        except BaseException:
            sock.close()
            raise
        return sock

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Events this thread sends inside go out as one write at the end (a miss: its admission, count, fill)."""
        lines: list[bytes] = []
        self._held.lines = lines
        try:
            yield
        finally:
            self._held.lines = None
            if lines:
                self._write(b"".join(lines))

    def send(self, msg: dict) -> bool:
        """Hand one event to the fill process; False (and a warning now and then) if it cannot be."""
        line = _encode(msg)
        held = getattr(self._held, "lines", None)
        if held is not None:
            held.append(line)
            return True
        return self._write(line)

    def _write(self, line: bytes) -> bool:
        with self._lock:
            error: OSError | None = None
            for _ in range(2):  # once more on a new connection: the fill process may have restarted
                try:
                    if self._sock is None:
                        self._sock = self._connect(SEND_TIMEOUT)
                    self._sock.sendall(line)
                    return True
                except OSError as exc:
                    error = exc
                    if self._sock is not None:
                        self._sock.close()
                        self._sock = None
            self._lost += 1
            now = time.monotonic()
            if now - self._last_warning >= WARNING_INTERVAL:
                log.warning("fill process not reachable (%s): %d events lost since the last warning",
                            error, self._lost)
                self._last_warning, self._lost = now, 0
            return False

    def query(self, what: str, timeout: float = QUERY_TIMEOUT) -> dict:
        """Ask the fill process; OSError if it does not answer."""
        with self._connect(timeout) as sock:
            sock.sendall(_encode({"t": "query", "q": what}))
            data = bytearray()
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the fill process closed the connection")
                data += chunk
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise ConnectionError(f"bad answer from the fill process: {exc}") from None
        if not isinstance(answer, dict) or "error" in answer:
            raise ConnectionError(f"the fill process could not answer: {answer.get('error') if isinstance(answer, dict) else answer}")
        return answer


class RemoteFiller(Filler):
    """A request worker's filler: background fills go to the fill process; streams and refreshes run
    here (they hold their client's connection or S3's open answer), and their outcomes are counted there."""

    link: BackLink

    @classmethod
    def linked(cls, config: Config, layout: Layout, link: BackLink) -> "RemoteFiller":
        filler = cls.from_config(config, layout)
        filler.link = link
        return filler

    def submit(self, ref: ObjectRef, url: str, sign=None) -> bool:
        # A signing function cannot cross processes: the fill process signs with the proxy's own
        # credentials itself (an SDK client's miss: sidecar.sdk), told so by "s".
        return self.link.send({"t": "fill", "b": ref.bucket, "k": ref.key, "u": url, "s": sign is not None})

    def pending(self, ref: ObjectRef) -> bool:
        """Whether the fill process has a fill of ``ref`` queued or running (False if it cannot say)."""
        try:
            answer = self.link.query(PENDING + json.dumps([ref.bucket, ref.key]), QUERY_TIMEOUT)
        except OSError:
            return False
        return bool(answer.get("pending"))

    def _record(self, result: FillResult) -> None:
        self.link.send({"t": "result", **asdict(result)})

    def _disk_failed(self, disk: DiskFailure) -> None:
        self.link.send({"t": "disk", **asdict(disk)})

    def _run(self, *args, **kwargs) -> None:
        self.link.send({"t": "running", "d": 1})
        try:
            super()._run(*args, **kwargs)
        finally:
            self.link.send({"t": "running", "d": -1})

    def state(self) -> tuple[int, DiskFailure | None]:
        answer = self.link.query("fills", HEALTH_TIMEOUT)
        disk = answer.get("disk_failure")
        return answer["in_progress"], DiskFailure(**disk) if disk else None


class RemoteAdmission(Admission):
    """Decides here (the sketch is a shared file); counts in the fill process."""

    def __init__(self, policy: str, layout: Layout, link: BackLink):
        super().__init__(policy, layout)
        self.link = link

    def count(self, ok: bool) -> None:
        self.link.send({"t": "admit", "ok": ok})


class RemoteStatus:
    """A request worker's ``sidecar.status.Status``: misses counted, snapshots taken, in the fill process."""

    def __init__(self, link: BackLink):
        self.link = link

    def count_miss(self, plan) -> None:
        self.link.send({"t": "miss", "fill": plan.fill is not None})

    def snapshot(self) -> dict:
        return self.link.query("snapshot")


# -- the fill process's side -----------------------------------------------------------------------


class _Conn:
    def __init__(self, sock: socket.socket, pid: int):
        self.sock, self.pid = sock, pid
        self.buf = bytearray()
        self.running = 0  # refreshes this worker runs now


class FillServer:
    """The fill process's loop: take jobs and counts from the workers, answer their questions."""

    def __init__(self, listener: socket.socket, filler: Filler, status, admission: Admission, sign=None):
        self.listener, self.filler, self.status, self.admission = listener, filler, status, admission
        self.sign = sign  # (method, url) -> headers: the proxy's own signature, for fills an SDK's miss asked for
        self.sel = selectors.DefaultSelector()
        self._draining = False
        self._questions: list[tuple[_Conn, str]] = []

    def run(self) -> None:
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        while True:
            self._round(None)
            self._answer_questions()

    def _round(self, timeout: float | None) -> bool:
        events = self.sel.select(timeout)
        for key, _ in events:
            if key.data is None:
                self._accept()
            else:
                self._read(key.data)
        return bool(events)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                 struct.calcsize("3i")))
            if uid != os.getuid():
                log.warning("refused a connection from uid %d (pid %d)", uid, pid)
                sock.close()
                continue
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, _Conn(sock, pid))

    def _close(self, conn: _Conn) -> None:
        if conn.running:  # a worker that died mid-refresh: its fills are not running any more
            self.filler.running(-conn.running)
            conn.running = 0
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker is gone (a partial last line is dropped with it)
            self._close(conn)
            return
        conn.buf += data
        while True:
            end = conn.buf.find(b"\n")
            if end < 0:
                if len(conn.buf) > MAX_LINE:
                    log.warning("dropping a connection that sent %d bytes without a line end", len(conn.buf))
                    self._close(conn)
                return
            line = bytes(conn.buf[:end])
            del conn.buf[:end + 1]
            try:
                msg = json.loads(line)
                self._handle(msg, conn)
            except Exception:  # one bad line must not stop the loop that every fill goes through
                log.exception("bad message from pid %d", conn.pid)
            if conn.sock.fileno() < 0:
                return

    def _handle(self, msg: dict, conn: _Conn) -> None:
        kind = msg["t"]
        if kind == "fill":
            self.filler.submit(ObjectRef(msg["b"], msg["k"]), msg["u"], sign=self.sign if msg.get("s") else None)
        elif kind == "miss":
            self.status.collector.count_miss(bool(msg["fill"]), pid=conn.pid)
        elif kind == "admit":
            self.admission.count(bool(msg["ok"]))
        elif kind == "result":
            self.filler._record(FillResult(msg["outcome"], msg["reason"], int(msg["bytes"]), float(msg["seconds"])))
        elif kind == "disk":
            self.filler._disk_failed(DiskFailure(msg["reason"], msg["detail"], int(msg["needed"]), float(msg["at"])))
        elif kind == "running":
            conn.running += int(msg["d"])
            self.filler.running(int(msg["d"]))
        elif kind == "query":
            self.sel.unregister(conn.sock)
            self._questions.append((conn, str(msg["q"])))
        else:
            raise ValueError(f"unknown message {kind!r}")

    def _answer_questions(self) -> None:
        if not self._questions:
            return
        # Every line already written on any connection is read before answering: the answer then
        # counts every miss whose redirect has been sent.
        for _ in range(DRAIN_ROUNDS):
            if not self._round(0):
                break
        questions, self._questions = self._questions, []
        for conn, what in questions:
            threading.Thread(target=self._answer, args=(conn, what), name="question", daemon=True).start()

    def _answer(self, conn: _Conn, what: str) -> None:
        try:
            if what == "snapshot":
                answer = self.status.snapshot()
            elif what.startswith(PENDING):
                bucket, key = json.loads(what[len(PENDING):])
                answer = {"pending": self.filler.pending(ObjectRef(bucket, key))}
            elif what == "fills":
                in_progress, disk = self.filler.state()
                answer = {"in_progress": in_progress, "disk_failure": asdict(disk) if disk else None}
            else:
                answer = {"error": f"unknown question {what!r}"}
        except Exception as exc:
            log.exception("answering %s failed", what)
            answer = {"error": str(exc)}
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(QUERY_TIMEOUT)
            conn.sock.sendall(_encode(answer))
        except OSError:
            pass
        finally:
            conn.sock.close()


def serve_fills(config: Config, listener: socket.socket) -> None:
    """The fill process: the fill pool, the counters and the collector, fed by the request workers."""
    from sidecar.status import Status  # the collector's thread starts here, never in the forking master
    from sidecar.upstream_auth import UpstreamSigner

    layout = Layout(config.dir)
    filler = Filler.from_config(config, layout)
    admission = Admission(config.admit, layout)
    status = Status(config, layout, filler, admission)
    log.info("fill process: %d fill workers", config.fill_workers)
    signer = UpstreamSigner(config)
    FillServer(listener, filler, status, admission, sign=lambda method, url: signer.sign(method, url, {})).run()
