"""How often each object was asked for lately: a compact count-min sketch with aging (TinyLFU's).

Shared by the sidecar (it counts every miss and asks before a fill) and the
evictor (it counts every hit it replays from Caddy's access log, and orders
victims by it).  Both open the same file, ``run/frequency.sketch``, mapped
shared: any number of processes count into it, and the counts survive
restarts.  Increments are not locked: two processes bumping one counter at
the same instant may lose one count, which an estimate can afford.

Layout of the file: a 48-byte header and ``DEPTH`` rows of ``WIDTH`` one-byte
counters, saturating at ``MAX_COUNT``.  A key's estimate is the smallest of
its ``DEPTH`` counters.  After ``window`` additions every counter is halved
(the "reset" of TinyLFU), so a working set that moved on loses its weight
instead of staying hot for ever.  256 KiB whatever the cache holds.

The header (little-endian): magic (8 bytes); additions since the last
halving; the window (set by the evictor: ten times the objects the cache
holds, TinyLFU's sample size); the admission boundary (the highest estimate
among the last eviction's victims: a newcomer must beat it, halved with the
counters); the times of the last two halvings (an object not asked for since
the one before last has only history, no frequency: ``evictor.policy``).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import time
from typing import Callable

DEPTH = 4                # rows (``_indexes`` is unrolled for four)
WIDTH = 1 << 16          # counters per row (a power of two)
MAX_COUNT = 15           # TinyLFU's 4-bit counters: enough to compare, small to age
MAGIC = b"s3cfreq1"
HEADER = 48
SIZE = HEADER + DEPTH * WIDTH
WINDOW_PER_OBJECT = 10  # TinyLFU's sample: ten times the objects the cache holds
WINDOW_MIN = 1000
_HALF = bytes(v >> 1 for v in range(256))


_ROWS = struct.Struct("<%dI" % DEPTH)
_OFFSETS = tuple(HEADER + row * WIDTH for row in range(DEPTH))


def _indexes(key: bytes) -> tuple[int, ...]:
    # A stable hash (not Python's per-process one): every process must agree on the slots.
    h = _ROWS.unpack(hashlib.blake2b(key, digest_size=4 * DEPTH).digest())
    m = WIDTH - 1
    return _OFFSETS[0] + (h[0] & m), _OFFSETS[1] + (h[1] & m), _OFFSETS[2] + (h[2] & m), _OFFSETS[3] + (h[3] & m)


class FrequencySketch:
    """Counts keys (bytes) in ``buf`` (a writable buffer of SIZE bytes: an mmap, or a bytearray in tests)."""

    def __init__(self, buf, window: int | None = None, clock: Callable[[], float] = time.time):
        if len(buf) != SIZE:
            raise ValueError(f"a sketch needs {SIZE} bytes, got {len(buf)}")
        self.buf = buf
        self.clock = clock
        if bytes(buf[:8]) != MAGIC:
            buf[:SIZE] = bytes(SIZE)
            buf[:8] = MAGIC
            self.window = WINDOW_MIN
        if window is not None:
            self.window = window

    @classmethod
    def in_memory(cls, window: int | None = None, clock: Callable[[], float] = time.time) -> "FrequencySketch":
        return cls(bytearray(SIZE), window, clock)

    @classmethod
    def open(cls, path: os.PathLike | str, window: int | None = None) -> "FrequencySketch":
        """The shared sketch at ``path`` (created zeroed when missing or of another size)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size != SIZE:
                os.ftruncate(fd, SIZE)
            buf = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(buf, window)

    @property
    def additions(self) -> int:
        return struct.unpack_from("<Q", self.buf, 8)[0]

    @property
    def window(self) -> int:
        return max(1, struct.unpack_from("<Q", self.buf, 16)[0])

    @window.setter
    def window(self, n: int) -> None:
        struct.pack_into("<Q", self.buf, 16, max(1, int(n)))

    @property
    def boundary(self) -> int:
        return struct.unpack_from("<Q", self.buf, 24)[0]

    @boundary.setter
    def boundary(self, n: int) -> None:
        struct.pack_into("<Q", self.buf, 24, max(0, min(MAX_COUNT, int(n))))

    @property
    def aged_at(self) -> tuple[float, float]:
        """When the counters were last halved, and the time before (0: never)."""
        last, before = struct.unpack_from("<dd", self.buf, 32)
        return last, before

    def add(self, key: bytes, times: int = 1) -> int:
        """Count ``key`` (``times`` over) and return its new estimate."""
        idx = _indexes(key)
        buf = self.buf
        est = min(buf[i] for i in idx)
        new = min(MAX_COUNT, est + times)
        for i in idx:  # conservative update: raise only the counters that are below the new estimate
            if buf[i] < new:
                buf[i] = new
        n = self.additions + times
        if n >= self.window:
            self.age()
        else:
            struct.pack_into("<Q", buf, 8, n)
        return new

    def estimate(self, key: bytes) -> int:
        buf = self.buf
        a, b, c, d = _indexes(key)
        return min(buf[a], buf[b], buf[c], buf[d])

    def age(self) -> None:
        """Halve every counter (one C-level translate of the table), and the boundary with them."""
        self.buf[HEADER:] = bytes(self.buf[HEADER:]).translate(_HALF)
        struct.pack_into("<Q", self.buf, 8, 0)
        self.boundary = self.boundary >> 1
        last, _ = self.aged_at
        struct.pack_into("<dd", self.buf, 32, self.clock(), last)

    def close(self) -> None:
        close = getattr(self.buf, "close", None)
        if close is not None:
            close()


def file_key(objects_dir: bytes, object_file: bytes) -> bytes:
    """What the sketch counts an object under: its file's path below ``objects/`` (sidecar and evictor agree)."""
    prefix = objects_dir.rstrip(b"/") + b"/"
    if object_file.startswith(prefix):
        return object_file[len(prefix):]
    return os.path.relpath(object_file, objects_dir)
