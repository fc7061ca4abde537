"""The cache's bytes between eviction passes: ``run/cache-bytes``, so a fill can respect S3CACHE_MAX_BYTES.

The evictor measures the cache once per pass; in between, every fill adds
its bytes here before its object is renamed into place, and a fill that
would take the cache above the high watermark of S3CACHE_MAX_BYTES is
refused instead (``try_add``).  Check and add happen under one ``flock``,
so a burst of concurrent fills, in any number of processes, can never
overshoot together.

A refused fill must not wait for usage to cross HIGH by itself (refusals
keep it below HIGH for ever): the largest refused size since the last pass
is kept too, and the next pass frees room for it (``evictor.policy``),
brought forward by the refusal (``evictor.__main__``).  A fill the disk's
own high watermark refused (``sidecar.fill``) is recorded the same way.

Every pass sets the bytes anew: its scan, minus its removals, plus what
fills added while it walked (a running total of added bytes tells).  A fill
the walk also saw is then counted twice, which errs on the safe side and is
gone at the next pass.  Until the first pass there is no figure and fills
are not held back (the total still counts them, so the first pass misses none).

The file holds three little-endian 64-bit integers: the bytes (-1: none yet),
the bytes fills ever added (the running total), and the largest fill refused
since the last pass.
"""

from __future__ import annotations

import fcntl
import os
import struct
from contextlib import contextmanager
from typing import Iterator

_FMT = "<qqq"
_SIZE = struct.calcsize(_FMT)


class OverCap(Exception):
    """The fill would take the cache above its limit."""


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
        value, added, refused = struct.unpack(_FMT, raw)
        return (None if value < 0 else value), added, refused

    @staticmethod
    def _write(fd: int, value: int | None, added: int, refused: int) -> None:
        os.pwrite(fd, struct.pack(_FMT, -1 if value is None else max(0, value), added, refused), 0)

    def read(self) -> tuple[int | None, int, int]:
        """(bytes or None before the first pass, bytes ever added by fills, largest fill refused since the last pass)."""
        try:
            with self._locked() as fd:
                return self._read(fd)
        except OSError:
            return None, 0, 0

    @contextmanager
    def adding(self, size: int, limit: int | None) -> Iterator[None]:
        """Hold the ledger while the caller installs ``size`` more bytes; counted when the block ends without error.

        Raises ``OverCap`` (and records the refusal) instead when that would take the cache above
        ``limit``.  Check, install and count under one lock: a pass reading the total sees an
        object either counted and in place, or neither.
        """
        with self._locked() as fd:
            value, added, refused = self._read(fd)
            if value is not None and limit is not None and size > 0 and value + size > limit:
                self._write(fd, value, added, max(refused, size))
                raise OverCap(f"{value} + {size} bytes > {limit}")
            yield
            # No pass yet: nothing held the fill back, but the total counts it.
            self._write(fd, None if value is None else value + size, added + size, refused)

    def try_add(self, size: int, limit: int | None) -> bool:
        """Count ``size`` more bytes unless that takes the cache above ``limit``; False: refused, nothing counted."""
        try:
            with self.adding(size, limit):
                return True
        except OverCap:
            return False

    def would_refuse(self, size: int, limit: int | None) -> bool:
        """Whether ``try_add`` would refuse ``size`` now (recorded as a refusal if so); counts nothing."""
        if limit is None:
            return False
        with self._locked() as fd:
            value, added, refused = self._read(fd)
            if value is None or value + size <= limit:
                return False
            self._write(fd, value, added, max(refused, size))
            return True

    def refuse(self, size: int) -> None:
        """Record a fill of ``size`` refused for another reason (the disk's own high watermark): the next pass makes room."""
        with self._locked() as fd:
            value, added, refused = self._read(fd)
            self._write(fd, value, added, max(refused, size))

    def set_after_pass(self, scanned: int, freed: int, added_before: int) -> int:
        """The pass's word: its scan, minus its removals, plus what fills added since it read ``added_before``."""
        with self._locked() as fd:
            _, added, _ = self._read(fd)
            value = max(0, scanned - freed + (added - added_before))
            self._write(fd, value, added, 0)  # the refusals it was told of are answered
            return value


def fill_limit(max_bytes: int | None, high_percent: float) -> int | None:
    """The most the cache may hold after a fill: S3CACHE_EVICT_HIGH percent of S3CACHE_MAX_BYTES (None: no cap)."""
    if not max_bytes:
        return None
    return int(max_bytes * high_percent / 100.0)
