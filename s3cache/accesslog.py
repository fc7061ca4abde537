"""Caddy's JSON access log: what one line says, and reading every line written since a position.

Two parts follow the log: the sidecar counts traffic from it (status page,
metrics) and the evictor replays hits as atimes.  Both read through here and
keep only a ``Position``: the sidecar in memory, the evictor in a file.

**Lines.**  ``parse`` turns one line into a ``Record`` or raises ValueError.
Caddy logs the raw request line; JSON gave us its UTF-8 reading, so the URI
is turned back into bytes and then into the latin-1 text that
``request_path.parse_uri`` decodes (as WSGI hands the sidecar the same bytes).
A line is handed over only once its newline is written (a rolled file's last
line needs none); a line longer than ``MAX_LINE`` is not one of Caddy's and
is skipped (and counted).

**Files.**  A position is the log's device, inode and offset (after the last
complete line), a fingerprint of its first bytes, when it was taken, and
which rolled files were already read to their end.  Caddy (2.11, timberjack)
rolls ``access.log`` by renaming it to ``access-<UTC time>-size.log``, and
by default then gzips that to ``...log.gz`` (a new inode) and deletes the
plain file.  So after a roll the rest of the file we were reading is found
either by inode (plain) or by the fingerprint of its first bytes (gzipped);
other rolled files written since the last read are read from their start.
A file that shrank, or whose first bytes changed under the same inode
(truncated, copy-truncated), is read from 0.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import stat as stat_mod
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

HEAD_BYTES = 1024
CHUNK = 1 << 20
# A "line" longer than this with no newline is not one of Caddy's: skip it.
MAX_LINE = 1 << 20
# File timestamps come from a coarser clock than time.time(); a rolled file
# this close to our last read is read again (unless already read to its end).
SLACK_SECONDS = 5.0
_ROLLED = re.compile(rb"^access-.+\.log(\.gz)?$")

LineHandler = Callable[[bytes], None]
ErrorHandler = Callable[[str, "OSError | str"], None]


# -- one line ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """One request as Caddy logged it (a plain slotted class: one is made per line)."""

    ts: float
    method: str
    host: str          # the client's Host (for virtual-hosted requests it names the bucket)
    raw_uri: str       # latin-1 text of the request line's bytes, query included
    status: int
    size: int          # body bytes Caddy wrote
    request_headers: dict
    response_headers: dict

    @property
    def raw_path(self) -> str:
        return self.raw_uri.partition("?")[0]

    def x_cache(self) -> list | None:
        """Our ``X-Cache`` response header's values (Go canonicalises header names)."""
        value = self.response_headers.get("X-Cache")
        return value if isinstance(value, list) else None

    def request_header(self, name: str) -> str | None:
        value = self.request_headers.get(name)
        if isinstance(value, list) and value and isinstance(value[0], str):
            return value[0]
        return value if isinstance(value, str) else None


def parse(line: bytes) -> Record:
    """The record one access-log line holds; ValueError when it is not one of Caddy's."""
    try:
        rec = json.loads(line)
    except UnicodeDecodeError as exc:  # a ValueError too, but say so plainly
        raise ValueError(str(exc)) from None
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    req, ts = rec.get("request"), rec.get("ts")
    if not isinstance(req, dict):
        raise ValueError("no request")
    uri = req.get("uri")
    if not isinstance(uri, str) or isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise ValueError("no uri or ts")
    resp_headers = rec.get("resp_headers") or {}
    req_headers = req.get("headers") or {}
    method, host = req.get("method"), req.get("host")
    try:
        status, size = int(rec.get("status") or 0), int(rec.get("size") or 0)
    except (TypeError, ValueError):
        raise ValueError("bad status or size") from None
    if not isinstance(resp_headers, dict) or not isinstance(req_headers, dict):
        raise ValueError("headers are not objects")
    return Record(
        ts=float(ts), method=method if isinstance(method, str) else "", host=host if isinstance(host, str) else "",
        raw_uri=uri.encode("utf-8", "surrogatepass").decode("latin-1"), status=status, size=size,
        request_headers=req_headers, response_headers=resp_headers)


# -- where a follower stopped ------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    dev: int
    ino: int
    offset: int
    head_len: int
    head_sha: str
    read_at: float  # wall time taken before the read: rolled files newer than this are new to us
    # Rolled files already read to their end, by name without ".gz" (a roll's
    # plain and gzipped forms are one file to us); only those still present.
    rolled_done: tuple[str, ...] = ()
    # The offset is inside a line whose start we did not hand over: skip to its end.
    mid_line: bool = False

    def head_matches(self, head: bytes) -> bool:
        return self.head_len > 0 and len(head) == self.head_len and _sha(head) == self.head_sha

    @classmethod
    def at_end(cls, path: os.PathLike | str, *, now: float) -> "Position":
        """Now: lines already written (the live file's, and every rolled file's) are not ours to read."""
        current = os.fsencode(path)
        done = tuple(sorted(_stem(p) for p in _rolled(os.path.dirname(current) or b".")))
        try:
            fd = os.open(current, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return cls(0, 0, 0, 0, "", now, done)  # no log yet: when it appears, all of it is new
        try:
            st = os.fstat(fd)
            head = os.pread(fd, HEAD_BYTES, 0)
            mid_line = st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n"
        finally:
            os.close(fd)
        return cls(st.st_dev, st.st_ino, st.st_size, len(head), _sha(head), now, done, mid_line)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rolled(directory: bytes) -> list[bytes]:
    try:
        with os.scandir(directory) as it:
            return sorted(e.path for e in it if _ROLLED.match(e.name))  # names carry the roll time: oldest first
    except OSError:
        return []


def _stem(path: bytes) -> str:
    return os.fsdecode(path[:-3] if path.endswith(b".gz") else path).rpartition("/")[2]


def _head(path: bytes, gz: bool, size: int) -> bytes:
    try:
        opener = gzip.open if gz else open
        with opener(path, "rb") as fh:
            return fh.read(size)
    except (OSError, EOFError, zlib.error):
        return b""


# -- reading -----------------------------------------------------------------------------------


@dataclass
class Progress:
    """What one ``read`` did, and where the next one starts."""

    position: Position | None = None
    lines: int = 0
    skipped_lines: int = 0     # longer than MAX_LINE
    files: list[str] = field(default_factory=list)
    rolled: bool = False       # the file we were reading was rolled (finished above)
    missed_files: int = 0      # rolled files read whole: written and rolled between two reads
    truncated: bool = False    # the live file was truncated under us: read again from 0


class _Lines:
    """Complete lines of one file from a byte offset; ``pos`` ends after the last one handed over."""

    def __init__(self, fh, start: int, skipping: bool, progress: Progress):
        self.fh, self.pos, self.skipping, self.progress = fh, start, skipping, progress
        if start:
            fh.seek(start)

    def drain(self, handle: LineHandler, *, final: bool) -> None:
        """``final``: the file is no longer written (rolled), so a last line without newline is complete too."""
        carry = b""
        while True:
            chunk = self.fh.read(CHUNK)
            if not chunk:
                break
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                if len(carry) > MAX_LINE:
                    self.pos, carry = self.pos + len(carry), b""
                    if not self.skipping:
                        self.progress.skipped_lines += 1
                    self.skipping = True
                continue
            lines = data[:cut].split(b"\n")
            if self.skipping:  # the tail of a line we do not hand over
                lines = lines[1:]
                self.skipping = False
            for line in lines:
                if line.strip():
                    handle(line)
                    self.progress.lines += 1
            self.pos += cut + 1
            carry = data[cut + 1:]
        if final and carry and not self.skipping:
            if carry.strip():
                handle(carry)
                self.progress.lines += 1
            self.pos += len(carry)


def read(path: os.PathLike | str, position: Position | None, handle: LineHandler, *, now: float,
         on_error: ErrorHandler | None = None) -> Progress:
    """Hand every line written since ``position`` to ``handle`` (all there is when None), oldest first.

    ``path`` is the live ``access.log``; rolled files are found beside it.
    ``now`` is wall time taken before the read.  The returned progress holds
    the next position.
    """
    progress = Progress()
    current = os.fsencode(path)
    try:
        # The live file is opened first: if Caddy rolls it while we read, we
        # hold the rolled file, and finish it next time by its inode.
        fd = os.open(current, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        fd = None
    except OSError as exc:
        if on_error is not None:
            on_error(os.fsdecode(current), exc)
        progress.position = position
        return progress
    try:
        live = os.fstat(fd) if fd is not None else None
        done_now = _read_rolled(os.path.dirname(current) or b".", position, live, handle, progress, on_error)
        if fd is None:
            # No log yet (or Caddy has not reopened it): remember when we looked.
            if position is not None and position.ino:
                progress.rolled = True
            progress.position = Position(0, 0, 0, 0, "", now, done_now)
            return progress
        if not stat_mod.S_ISREG(live.st_mode):
            progress.position = position
            return progress
        ours = position is not None and (live.st_ino, live.st_dev) == (position.ino, position.dev)
        if position is not None and position.ino and not ours:
            progress.rolled = True
        start = 0
        if ours:
            if live.st_size >= position.offset and position.head_matches(os.pread(fd, position.head_len, 0)):
                start = position.offset
            elif position.offset:
                progress.truncated = True
        with open(fd, "rb", closefd=False) as fh:
            lines = _Lines(fh, start, start > 0 and position.mid_line, progress)
            lines.drain(handle, final=False)
        head = os.pread(fd, HEAD_BYTES, 0)
        progress.files.append(os.fsdecode(current))
        progress.position = Position(live.st_dev, live.st_ino, lines.pos, len(head), _sha(head), now, done_now,
                                     lines.skipping)
        return progress
    finally:
        if fd is not None:
            os.close(fd)


def _read_rolled(directory: bytes, position: Position | None, live: os.stat_result | None, handle: LineHandler,
                 progress: Progress, on_error: ErrorHandler | None) -> tuple[str, ...]:
    """The rest of the file we were reading, and any rolled since; the names now read to their end."""
    done_before = set(position.rolled_done) if position is not None else set()
    done_now: set[str] = set()
    for path in _rolled(directory):
        gz = path.endswith(b".gz")
        stem = _stem(path)
        if stem in done_before or stem in done_now:
            done_now.add(stem)
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue  # compressed and removed since the listing: its .gz is in the list too
        if live is not None and (st.st_ino, st.st_dev) == (live.st_ino, live.st_dev):
            continue  # rolled just now, after we opened it: read as the live file, finished next time
        ours = position is not None and (st.st_ino, st.st_dev) == (position.ino, position.dev) and not gz
        new = position is None or st.st_mtime >= position.read_at - SLACK_SECONDS
        if not (ours or new):
            continue
        start = 0
        if position is not None and position.head_len and (ours or position.head_matches(_head(path, gz, position.head_len))):
            start = position.offset
        try:
            with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
                _Lines(fh, start, start > 0 and position.mid_line, progress).drain(handle, final=True)
            progress.files.append(os.fsdecode(path))
            done_now.add(stem)  # a rolled file is never written again
            if start or ours:
                progress.rolled = True
            else:
                progress.missed_files += 1
        except (OSError, EOFError, zlib.error) as exc:
            # A .gz still being written, or a file removed under us: its plain
            # twin (same content) is read by inode above or next time.
            if on_error is not None and not isinstance(exc, FileNotFoundError):
                on_error(os.fsdecode(path), str(exc))
    return tuple(sorted(done_now))


class Follower:
    """A position kept in memory, for a follower that counts from its own start (the sidecar)."""

    def __init__(self, path: os.PathLike | str, *, from_start: bool = False, clock: Callable[[], float] = time.time):
        self.path = os.fspath(path)
        self._clock = clock
        self.position = None if from_start else Position.at_end(self.path, now=clock())
        self.rolls = 0
        self.truncations = 0
        self.skipped_lines = 0
        self.missed_files_read = 0

    def read(self, handle: LineHandler) -> int:
        """Feed every complete line written since the last call to ``handle``; return how many."""
        progress = read(self.path, self.position, handle, now=self._clock())
        self.position = progress.position
        self.rolls += progress.rolled
        self.truncations += progress.truncated
        self.skipped_lines += progress.skipped_lines
        self.missed_files_read += progress.missed_files
        return progress.lines
