"""The cache's bytes between eviction passes: ``run/cache-bytes``, so a fill can respect S3CACHE_MAX_BYTES.

The evictor measures the cache once per pass; in between, every fill adds
its bytes here before its object is renamed into place, and a fill that
would take the cache above the high watermark of S3CACHE_MAX_BYTES is
refused instead (``try_add``).  Check and add happen under one ``flock``,
so a burst of concurrent fills, in any number of processes, can never
overshoot together.

A refused fill must not wait for usage to cross HIGH by itself (refusals
keep it below HIGH for ever): the largest refused size since the last pass
is kept too, and the next pass frees room for it (``evictor.policy``).

The file holds three little-endian uint64: the bytes, a count of fills
(the generation), and the largest fill refused since the last pass.  A pass sets the bytes from its scan when no fill landed
while it walked (the generation did not move); otherwise it only takes off
what it removed, and the next quiet pass corrects any drift.  Until the
first pass there is no figure and fills are not held back.
"""

from __future__ import annotations

import fcntl
import os
import struct
from contextlib import contextmanager
from typing import Iterator

_FMT = "<QQQ"
_SIZE = struct.calcsize(_FMT)


class CacheBytes:
    def __init__(self, path: os.PathLike | str):
        self.path = os.fspath(path)

    @contextmanager
    def _locked(self) -> Iterator[int]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _read(fd: int) -> tuple[int | None, int, int]:
        raw = os.pread(fd, _SIZE, 0)
        if len(raw) != _SIZE:
            return None, 0, 0
        return struct.unpack(_FMT, raw)

    @staticmethod
    def _write(fd: int, value: int, generation: int, refused: int) -> None:
        os.pwrite(fd, struct.pack(_FMT, max(0, value), generation, refused), 0)

    def read(self) -> tuple[int | None, int, int]:
        """(bytes or None before the first pass, generation, largest fill refused since the last pass)."""
        try:
            with self._locked() as fd:
                return self._read(fd)
        except OSError:
            return None, 0, 0

    def try_add(self, size: int, limit: int | None) -> bool:
        """Count ``size`` more bytes unless that takes the cache above ``limit``; False: refused, nothing counted."""
        with self._locked() as fd:
            value, gen, refused = self._read(fd)
            if value is None:
                return True  # no pass yet: nothing to hold the fill against
            if limit is not None and size > 0 and value + size > limit:
                self._write(fd, value, gen, max(refused, size))
                return False
            self._write(fd, value + size, gen + 1, refused)
            return True

    def would_refuse(self, size: int, limit: int | None) -> bool:
        """Whether ``try_add`` would refuse ``size`` now (recorded as a refusal if so); counts nothing."""
        if limit is None:
            return False
        with self._locked() as fd:
            value, gen, refused = self._read(fd)
            if value is None or value + size <= limit:
                return False
            self._write(fd, value, gen, max(refused, size))
            return True

    def set_after_pass(self, scanned: int, freed: int, generation_before: int) -> int:
        """The pass's word: its scan minus its removals if no fill landed meanwhile, else the running figure minus its removals."""
        with self._locked() as fd:
            value, gen, _ = self._read(fd)
            if value is None or gen == generation_before:
                value = scanned - freed
            else:
                value = value - freed
            self._write(fd, value, gen, 0)  # the refusals it was told of are answered
            return max(0, value)


def fill_limit(max_bytes: int | None, high_percent: float) -> int | None:
    """The most the cache may hold after a fill: S3CACHE_EVICT_HIGH percent of S3CACHE_MAX_BYTES (None: no cap)."""
    if not max_bytes:
        return None
    return int(max_bytes * high_percent / 100.0)
