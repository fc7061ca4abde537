"""The evictor's next victims, ``run/next-victims``: room a fill can make at once instead of being refused.

A cache that only makes room per pass turns over a band (HIGH - LOW) at a time and
leaves that band unused between passes, where a cache that makes room per fill (every
simulated one) turns over at once and fills all it may hold.  So each pass that
finds the cache near its limit (at LOW or above) writes down what it would remove next
(``publish``), in its policy's order: about a tenth of the cache.  A fill that
would cross the cap, or the disk's high watermark, removes victims from the
head of that list (``take``) until it fits, under the ledger's lock, and is
refused only when the list runs out; the refusal brings the next pass
forward, which writes a new list.

A victim is what the pass saw: one that was read or replaced since (its atime
or size changed: Caddy's relatime reads and the evictor's replayed hits set
the atime, a fill sets it to its own time) is skipped, as is one a fill holds
(``entries.remove_idle``).  A hit since the pass that left no atime behind
is not seen: the list is at most one pass old.

The file is a header (magic, the offset of the next record, the bytes and
allocated bytes of all records and of those taken, and what was freed) and then one record per
victim: its size, allocated bytes, atime in ns, frequency estimate and its path below
``objects/``.  The next pass reports what fills freed, and the highest estimate among it is
what a newcomer must beat (``S3CACHE_ADMIT=tinylfu``), as the pass's own removals are: when
fills make the room, passes seldom remove anything themselves.  A pass replaces the whole file (``os.replace``); takers, who
hold the ledger's lock, advance the header with one ``pwrite``.
"""

from __future__ import annotations

import os
import stat
import struct
from typing import Callable, Iterable, Iterator, NamedTuple

from s3cache import atomic, entries
from s3cache.layout import Layout

_MAGIC = b"s3cvict1"
# magic, next record's offset, total size, taken size, total alloc, taken alloc; freed size, alloc, objects,
# and the highest frequency estimate among them
_HEADER = struct.Struct("<8sQqqqqqqqq")
_RECORD = struct.Struct("<qqqqH")    # size, alloc, atime_ns, frequency estimate, path length; the path's bytes follow
_READ_CHUNK = 1 << 16

# How much of the cache a pass lists: enough that a moving working set rarely waits for a pass,
# little enough that the tail of the list is not long out of date.
SHARE = 0.10
MAX_FILES = 20_000


class Victim(NamedTuple):
    rel: bytes      # its path below objects/
    size: int
    alloc: int
    atime_ns: int
    estimate: int = 0  # how often it was asked for lately (s3cache.sketch), when the pass listed it


class Freed(NamedTuple):
    size: int = 0
    alloc: int = 0
    files: int = 0
    top: int = 0  # the highest frequency estimate among them: what a newcomer must beat (S3CACHE_ADMIT=tinylfu)


def _safe_rel(rel: bytes) -> bool:
    """A path below objects/ and nowhere else: a bucket and a key, no empty, dot or dot-dot segment."""
    parts = rel.split(b"/")
    return len(parts) >= 2 and b"\0" not in rel and all(p not in (b"", b".", b"..") for p in parts)


def _records(fd: int, offset: int) -> Iterator[tuple[int, int, int, int, int, bytes]]:
    """The records from ``offset`` on: (offset after it, size, alloc, atime_ns, estimate, path); a torn tail ends them."""
    buf, start = b"", offset  # buf holds the file's bytes from ``start``
    while True:
        if len(buf) < _RECORD.size:
            more = os.pread(fd, _READ_CHUNK, start + len(buf))
            if not more:
                return
            buf += more
            continue
        size, alloc, atime_ns, estimate, n = _RECORD.unpack_from(buf)
        end = _RECORD.size + n
        if len(buf) < end:
            more = os.pread(fd, max(_READ_CHUNK, end - len(buf)), start + len(buf))
            if not more:
                return
            buf += more
            continue
        start += end
        rel, buf = buf[_RECORD.size:end], buf[end:]
        yield start, size, alloc, atime_ns, estimate, rel


class Victims:
    """``Layout.victims_file``: the pass writes it, fills take from its head."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.path = os.fspath(layout.victims_file)
        self.objects_dir = os.fsencode(layout.objects_dir)

    def publish(self, victims: Iterable[Victim]) -> int:
        """Replace the list with ``victims``, in the order they should go; how many were written."""
        body = bytearray()
        total_size = total_alloc = n = 0
        for v in victims:
            if not _safe_rel(v.rel) or len(v.rel) > 0xFFFF:
                continue
            body += _RECORD.pack(v.size, v.alloc, v.atime_ns, v.estimate, len(v.rel)) + v.rel
            total_size += v.size
            total_alloc += v.alloc
            n += 1
        header = _HEADER.pack(_MAGIC, _HEADER.size, total_size, 0, total_alloc, 0, 0, 0, 0, 0)
        atomic.write(self.path, header + bytes(body))
        return n

    def clear(self) -> None:
        """No list: a pass that found the cache far below its limit (a stale list would name objects read since)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _header(self) -> tuple | None:
        try:
            with open(self.path, "rb") as f:
                header = f.read(_HEADER.size)
        except OSError:
            return None
        if len(header) != _HEADER.size or header[:len(_MAGIC)] != _MAGIC:
            return None
        return _HEADER.unpack(header)

    def available(self) -> Freed:
        """Bytes and allocated bytes the list still names (an estimate: some may be gone or read since)."""
        h = self._header()
        if h is None:
            return Freed()
        _, _, total_size, taken_size, total_alloc, taken_alloc, *_ = h
        return Freed(max(0, total_size - taken_size), max(0, total_alloc - taken_alloc))

    def freed(self) -> Freed:
        """What fills removed from this list so far (the pass reports it before it writes the next list)."""
        h = self._header()
        return Freed() if h is None else Freed(*h[6:])

    def take(self, size: int, alloc: int, on_error: Callable[[object, OSError], None] | None = None) -> Freed:
        """Remove victims from the head of the list until ``size`` bytes and ``alloc`` allocated bytes are freed,
        or the list runs out; what was freed.

        The caller holds the ledger's lock (``s3cache.ledger.CacheSize.adding``) and counts what this frees.
        """
        def ignore(path, exc: OSError) -> None:
            pass
        on_error = on_error or ignore
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return Freed()
        try:
            header = os.pread(fd, _HEADER.size, 0)
            if len(header) != _HEADER.size:
                return Freed()
            magic, offset, total_size, taken_size, total_alloc, taken_alloc, *before = _HEADER.unpack(header)
            if magic != _MAGIC:
                return Freed()
            freed_size = freed_alloc = files = top = 0
            try:
                for offset, v_size, v_alloc, v_atime, v_estimate, rel in _records(fd, offset):
                    taken_size += v_size
                    taken_alloc += v_alloc
                    if _safe_rel(rel):
                        got = self._remove(rel, v_size, v_atime, on_error)
                        if got is not None:
                            freed_size += v_size
                            freed_alloc += got
                            files += 1
                            top = max(top, v_estimate)
                    if freed_size >= size and freed_alloc >= alloc:
                        break
                so_far = (before[0] + freed_size, before[1] + freed_alloc, before[2] + files, max(before[3], top))
                os.pwrite(fd, _HEADER.pack(_MAGIC, offset, total_size, taken_size, total_alloc, taken_alloc, *so_far), 0)
            except OSError as exc:  # what was removed is still counted; the next take skips what is gone
                on_error(self.path, exc)
            return Freed(freed_size, freed_alloc, files, top)
        finally:
            os.close(fd)

    def _remove(self, rel: bytes, size: int, atime_ns: int, on_error) -> int | None:
        """Remove one victim if it is still what the pass saw; its allocated bytes, or None if it stays."""
        path = self.objects_dir + b"/" + rel
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size or st.st_atime_ns != atime_ns:
            return None  # read, replaced or something else since the pass: not the victim it chose
        if not entries.remove_idle(self.layout, path, on_error):
            return None
        return st.st_blocks * 512
