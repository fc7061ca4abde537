"""Recency from Caddy's JSON access log: every hit since the last pass becomes the object's atime.

Why: under ``relatime`` (the Linux default) the kernel moves atime at most
once a day after the first read, and under ``noatime`` never, so atime alone
would make the evictor FIFO.  Caddy logs every hit (``X-Cache: HIT`` in
``resp_headers``); we replay them with ``utime``, keeping mtime (it is S3's
Last-Modified) and only ever moving atime forward.  Replaying a line twice is
therefore harmless, which is what makes the bookkeeping below simple: when in
doubt, read again; never skip.

Where we stopped is kept in ``run/evictor-accesslog.json``: the log's device,
inode and offset (after the last *complete* line: a line Caddy is still
writing is read next time), plus a fingerprint of its first bytes.

Caddy (2.11, timberjack) rolls ``access.log`` by renaming it to
``access-<UTC time>-size.log`` and then, by default, gzipping that to
``...log.gz`` (a new inode) and deleting the plain file.  So after a roll the
rest of the file we were reading is found either by inode (plain) or by the
fingerprint of its first bytes (gzipped); rolled files written after our last
read are read from the start.  A file that shrank, or whose first bytes
changed under the same inode (truncated, copy-truncated), is read from 0.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import stat as stat_mod
import zlib
from dataclasses import asdict, dataclass, field

from evictor.report import Errors, write_atomic
from s3cache.layout import Layout
from s3cache.addressing import Addressing
from s3cache.request_path import BadRequest, parse_uri

CURSOR_FILE = "evictor-accesslog.json"
HEAD_BYTES = 1024
CHUNK = 1 << 20
# A "line" longer than this with no newline is not one of Caddy's: skip it.
MAX_LINE = 1 << 20
# File timestamps come from a coarser clock than time.time(); a rolled file
# this close to our last read is read again rather than risk missing it.
SLACK_SECONDS = 5.0
_ROLLED = re.compile(rb"^access-.+\.log(\.gz)?$")


@dataclass(frozen=True)
class Cursor:
    dev: int
    ino: int
    offset: int
    head_len: int
    head_sha: str
    read_at: float  # wall time taken before the read: rolled files newer than this are new to us
    # Rolled files already read to their end, by name without ".gz" (a roll's
    # plain and gzipped forms are one file to us); only those still present.
    rolled_done: tuple[str, ...] = ()

    def head_matches(self, head: bytes) -> bool:
        return self.head_len > 0 and len(head) == self.head_len and _sha(head) == self.head_sha


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    write_atomic(cursor_path(layout), json.dumps(asdict(cursor)))


# -- one line ----------------------------------------------------------------------


def parse_hit(line: bytes) -> tuple[tuple[str, str], int] | None:
    """``((host, raw path), hit time in ns)`` for a cache hit; None for any other request.

    The host matters for virtual-hosted requests, where it names the bucket.

    The raw path is in the form ``request_path.parse_uri`` expects (latin-1
    text of the request's bytes, as WSGI hands the sidecar).  Raises
    ValueError when the line is not a Caddy access-log record.
    """
    rec = json.loads(line)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    req, headers, ts = rec.get("request"), rec.get("resp_headers"), rec.get("ts")
    if not isinstance(req, dict) or not isinstance(headers, dict):
        raise ValueError("no request or resp_headers")
    uri, method = req.get("uri"), req.get("method")
    if not isinstance(uri, str) or isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise ValueError("no uri or ts")
    if not math.isfinite(ts) or ts <= 0:
        raise ValueError("bad ts")
    if method not in ("GET", "HEAD"):
        return None
    x_cache = headers.get("X-Cache")  # Go canonicalises header names
    if not isinstance(x_cache, list) or "HIT" not in x_cache:
        return None
    # Caddy logs the raw request line; JSON gave us its UTF-8 reading.  Back
    # to bytes, then to the latin-1 text parse_uri decodes like the sidecar does.
    raw = uri.encode("utf-8", "surrogatepass").decode("latin-1")
    host = req.get("host") if isinstance(req.get("host"), str) else ""
    return (host, raw.partition("?")[0]), int(ts * 1e9)


@dataclass
class LogRead:
    hits: dict[tuple[str, str], int] = field(default_factory=dict)  # (host, raw path) -> latest hit (ns)
    lines: int = 0
    malformed: int = 0
    files: list[str] = field(default_factory=list)
    cursor: Cursor | None = None

    def feed(self, block: bytes, now_ns: int) -> None:
        hits = self.hits
        for line in block.split(b"\n"):
            if not line.strip():
                continue
            self.lines += 1
            if b'"HIT"' not in line:  # cheap filter: most lines are not hits, skip their JSON
                continue
            try:
                hit = parse_hit(line)
            except ValueError:  # also UnicodeDecodeError
                self.malformed += 1
                continue
            if hit is None:
                continue
            path, ns = hit
            ns = min(ns, now_ns)  # a clock in the future must not pin an object forever
            if ns > hits.get(path, 0):
                hits[path] = ns


def _consume(fh, start: int, read: LogRead, now_ns: int, final: bool) -> int:
    """Feed lines from byte ``start``; return the offset after the last complete line.

    ``final``: the file is no longer written (rolled), so a last line without
    newline is complete too.
    """
    if start:
        fh.seek(start)
    pos, carry, skipping = start, b"", False
    while True:
        chunk = fh.read(CHUNK)
        if not chunk:
            break
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            if len(carry) > MAX_LINE:
                pos, carry, skipping = pos + len(carry), b"", True
                read.malformed += 1
            continue
        block = data[:cut]
        if skipping:  # the rest of an overlong line
            nl = block.find(b"\n")
            block = block[nl + 1:] if nl >= 0 else b""
            skipping = False
        read.feed(block, now_ns)
        pos += cut + 1
        carry = data[cut + 1:]
    if final and carry and not skipping:
        read.feed(carry, now_ns)
        pos += len(carry)
    return pos


def _head(path: bytes, gz: bool, size: int) -> bytes:
    try:
        opener = gzip.open if gz else open
        with opener(path, "rb") as fh:
            return fh.read(size)
    except (OSError, EOFError, zlib.error):
        return b""


def read_new(layout: Layout, cursor: Cursor | None, *, now: float, errors: Errors | None = None) -> LogRead:
    """Every access-log line written since ``cursor`` (all there is when None), and the next cursor."""
    read = LogRead()
    now_ns = int(now * 1e9)
    logs = os.fsencode(layout.logs_dir)
    current = os.fsencode(layout.access_log)

    # Rolled files: the rest of the file we were reading, and any rolled since.
    try:
        with os.scandir(logs) as it:
            rolled = sorted((e.path for e in it if _ROLLED.match(e.name)))
    except OSError:
        rolled = []
    done_before = set(cursor.rolled_done) if cursor is not None else set()
    done_now: set[str] = set()
    for path in rolled:
        gz = path.endswith(b".gz")
        stem = os.fsdecode(path[:-3] if gz else path).rpartition("/")[2]
        if stem in done_before or stem in done_now:
            done_now.add(stem)
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue  # compressed and removed since the listing: its .gz is in the list too
        ours = cursor is not None and (st.st_ino, st.st_dev) == (cursor.ino, cursor.dev) and not gz
        new = cursor is None or st.st_mtime >= cursor.read_at - SLACK_SECONDS
        if not (ours or new):
            continue
        start = 0
        if cursor is not None and cursor.head_len and (ours or cursor.head_matches(_head(path, gz, cursor.head_len))):
            start = cursor.offset
        try:
            with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
                _consume(fh, start, read, now_ns, final=True)
            read.files.append(os.fsdecode(path))
            done_now.add(stem)  # a rolled file is never written again
        except (OSError, EOFError, zlib.error) as exc:
            # A .gz still being written, or a file removed under us: its plain
            # twin (same content) is read by inode above or next time.
            if errors is not None and not isinstance(exc, FileNotFoundError):
                errors.add(os.fsdecode(path), str(exc))

    # The live file.
    try:
        fd = os.open(current, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        # No log yet (or Caddy has not reopened it): remember when we looked.
        read.cursor = Cursor(0, 0, 0, 0, "", now, tuple(sorted(done_now)))
        return read
    except OSError as exc:
        if errors is not None:
            errors.add(os.fsdecode(current), exc)
        read.cursor = cursor
        return read
    with open(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            read.cursor = cursor
            return read
        start = 0
        if cursor is not None and (st.st_ino, st.st_dev) == (cursor.ino, cursor.dev) \
                and st.st_size >= cursor.offset and cursor.head_matches(os.pread(fd, cursor.head_len, 0)):
            start = cursor.offset
        end = _consume(fh, start, read, now_ns, final=False)
        head = os.pread(fd, HEAD_BYTES, 0)
        read.files.append(os.fsdecode(current))
        read.cursor = Cursor(st.st_dev, st.st_ino, end, len(head), _sha(head), now, tuple(sorted(done_now)))
    return read


# -- hits -> atimes ---------------------------------------------------------------------


def resolve(layout: Layout, hits: dict[tuple[str, str], int],
            addressing: Addressing | None = None) -> dict[bytes, int]:
    """(host, raw path) of each hit -> object file paths (the same reading of a request as the sidecar's)."""
    out: dict[bytes, int] = {}
    for (host, raw_path), ns in hits.items():
        try:
            parsed = addressing.resolve(host, raw_path).parsed if addressing else parse_uri(raw_path)
            if not parsed.key:
                continue
            path = os.fsencode(str(layout.object_path(parsed.ref)))
        except (BadRequest, ValueError):  # Uncacheable is a ValueError
            continue
        if ns > out.get(path, 0):
            out[path] = ns
    return out


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
