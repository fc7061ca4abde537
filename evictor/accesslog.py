"""Recency from Caddy's access log: every hit since the last pass becomes the object's atime.

Why: under ``relatime`` (the Linux default) the kernel moves atime at most
once a day after the first read, and under ``noatime`` never, so atime alone
would make the evictor FIFO.  Caddy logs every hit (``X-Cache: HIT`` in
``resp_headers``); we replay them with ``utime``, keeping mtime (it is S3's
Last-Modified) and only ever moving atime forward.  Replaying a line twice is
therefore harmless: when in doubt, read again; never skip.

Reading the log (lines, rolls, gzip, truncation) is ``s3cache.accesslog``'s;
where we stopped is its ``Position``, kept between passes in
``run/evictor-accesslog.json``.
"""

from __future__ import annotations

import json
import os
import stat as stat_mod
from array import array
from dataclasses import asdict, dataclass, field
from typing import Iterator

from evictor.report import Errors
from s3cache import accesslog, atomic
from s3cache.accesslog import Position
from s3cache.layout import Layout
from s3cache.addressing import Addressing
from s3cache.request_path import BadRequest, parse_uri

CURSOR_FILE = "evictor-accesslog.json"
Cursor = Position  # where the last pass stopped


def cursor_path(layout: Layout) -> str:
    return os.path.join(layout.run_dir, CURSOR_FILE)


def load_cursor(layout: Layout) -> Cursor | None:
    try:
        with open(cursor_path(layout), encoding="utf-8") as fh:
            state = json.load(fh)
        state["rolled_done"] = tuple(state.get("rolled_done", ()))
        return Cursor(**state)
    except (OSError, ValueError, TypeError):
        return None  # no state (or unreadable): read everything there is once


def save_cursor(layout: Layout, cursor: Cursor) -> None:
    atomic.write(cursor_path(layout), json.dumps(asdict(cursor)))


# -- one line ----------------------------------------------------------------------


def parse_request(line: bytes) -> tuple[tuple[str, str], int, bool] | None:
    """``((host, raw path), time in ns, hit?)`` for a GET or HEAD the cache answered (HIT) or missed (MISS).

    The host matters for virtual-hosted requests, where it names the bucket;
    the raw path is in the form ``request_path.parse_uri`` expects.  None for
    any other request; raises ValueError when the line is not a Caddy
    access-log record.
    """
    rec = accesslog.parse(line)
    if rec.ts <= 0:
        raise ValueError("bad ts")
    if rec.method not in ("GET", "HEAD"):
        return None
    x_cache = rec.x_cache()
    if x_cache is None:
        return None
    hit = "HIT" in x_cache
    if not hit and "MISS" not in x_cache:
        return None
    return (rec.host, rec.raw_path), int(rec.ts * 1e9), hit


def parse_hit(line: bytes) -> tuple[tuple[str, str], int] | None:
    """``((host, raw path), hit time in ns)`` for a cache hit; None for any other request."""
    got = parse_request(line)
    return got[:2] if got is not None and got[2] else None


class Requests:
    """Every hit and miss in order, compactly: 12 bytes a request, plus one entry per distinct URL."""

    def __init__(self) -> None:
        self.urls: list[tuple[str, str]] = []  # (host, raw path), each once
        self._number: dict[tuple[str, str], int] = {}
        self.index = array("I")  # request -> its URL in ``urls``
        self.ns = array("q")

    def add(self, where: tuple[str, str], ns: int) -> None:
        i = self._number.get(where)
        if i is None:
            i = self._number[where] = len(self.urls)
            self.urls.append(where)
        self.index.append(i)
        self.ns.append(ns)

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class LogRead:
    hits: dict[tuple[str, str], int] = field(default_factory=dict)  # (host, raw path) -> latest hit (ns)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (host, raw path) -> hits (for the sketch)
    # Every hit and miss in order, when asked for (S3CACHE_EVICT_POLICY=adaptive): (host, raw path), ns.
    requests: Requests | None = None
    lines: int = 0
    malformed: int = 0
    files: list[str] = field(default_factory=list)
    cursor: Cursor | None = None
    now_ns: int = 0

    def feed(self, line: bytes) -> None:
        # Cheap filter: most lines are neither, skip their JSON.
        if b'"HIT"' not in line and (self.requests is None or b'"MISS"' not in line):
            return
        try:
            got = parse_request(line)
        except ValueError:  # also UnicodeDecodeError
            self.malformed += 1
            return
        if got is None:
            return
        path, ns, hit = got
        ns = min(ns, self.now_ns)  # a clock in the future must not pin an object forever
        if self.requests is not None:
            self.requests.add(path, ns)
        if not hit:
            return
        self.counts[path] = self.counts.get(path, 0) + 1
        if ns > self.hits.get(path, 0):
            self.hits[path] = ns


def read_new(layout: Layout, cursor: Cursor | None, *, now: float, errors: Errors | None = None,
             requests: bool = False) -> LogRead:
    """Every access-log line written since ``cursor`` (all there is when None), and the next cursor.

    ``requests``: also keep every hit and miss in order (``LogRead.requests``).
    """
    read = LogRead(now_ns=int(now * 1e9), requests=Requests() if requests else None)
    progress = accesslog.read(layout.access_log, cursor, read.feed, now=now,
                              on_error=errors.add if errors is not None else None)
    read.lines, read.files, read.cursor = progress.lines, progress.files, progress.position
    read.malformed += progress.skipped_lines
    return read


# -- hits -> atimes ---------------------------------------------------------------------


def resolve(layout: Layout, hits: dict[tuple[str, str], int],
            addressing: Addressing | None = None, *, combine=max) -> dict[bytes, int]:
    """(host, raw path) of each hit -> object file paths (the same reading of a request as the sidecar's).

    Two requests for one file (another host or spelling) are combined: the latest hit by default,
    ``combine=operator.add`` for counts.
    """
    out: dict[bytes, int] = {}
    for (host, raw_path), ns in hits.items():
        try:
            parsed = addressing.resolve(host, raw_path).parsed if addressing else parse_uri(raw_path)
            if not parsed.key:
                continue
            path = os.fsencode(str(layout.object_path(parsed.ref)))
        except (BadRequest, ValueError):  # Uncacheable is a ValueError
            continue
        out[path] = combine(out[path], ns) if path in out else ns
    return out


def resolve_requests(layout: Layout, requests: Requests,
                     addressing: Addressing | None = None) -> Iterator[tuple[bytes, int]]:
    """``LogRead.requests`` as (object file path, ns), in order; requests no object file answers are left out."""
    paths = [next(iter(resolve(layout, {where: 0}, addressing)), None) for where in requests.urls]
    for i, ns in zip(requests.index, requests.ns):
        if paths[i] is not None:
            yield paths[i], ns


def refresh_atimes(paths: dict[bytes, int], errors: Errors | None = None) -> int:
    """Move each file's atime forward to its last hit; mtime stays.  Returns how many moved.

    Through a file descriptor, so the times land on the inode we looked at
    even if the object is evicted and filled again meanwhile.
    """
    refreshed = 0
    for path, ns in paths.items():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # evicted since the hit
        except OSError as exc:
            if errors is not None:
                errors.add(os.fsdecode(path), exc)
            continue
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISREG(st.st_mode) and ns > st.st_atime_ns:
                os.utime(fd, ns=(ns, st.st_mtime_ns))
                refreshed += 1
        except OSError as exc:
            if errors is not None:
                errors.add(os.fsdecode(path), exc)
        finally:
            os.close(fd)
    return refreshed
