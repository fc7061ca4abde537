"""The cache's size between eviction passes: ``run/cache-bytes``, its one record of bytes and files.

The evictor measures the cache once per pass (its walk).  In between, whoever
changes the cache counts the change here, under one ``flock``, in whatever
process it runs (the sidecar, ``s3cache warm``, ``s3cache purge``):

- a fill adds its bytes (the difference, when it replaces an object) and its
  file before its object is renamed into place (``adding``); a fill that would
  take the cache above S3CACHE_MAX_BYTES is refused instead.  Check and add
  happen under the lock, so a burst of concurrent fills can never overshoot together;
- a removal outside the evictor (a purge, a removal after S3's ``404``:
  ``s3cache.entries``) unlinks the object and subtracts it under the same lock
  (``removing``).

So the live size the status page, the metrics and ``s3cache stats`` show
(``sidecar.collector``) is one read of this record, never a walk.

A fill that would cross the cap first removes the evictor's next victims
(``s3cache.victims``), under the same lock, and is refused only if that is
not room enough.  A refused fill must not wait for the cache to cross the cap by
itself (refusals keep it below for ever): the largest refused size since the last pass
is kept too, and the next pass frees room for it (``evictor.policy``),
brought forward by the refusal (``evictor.__main__``).  A fill the disk's
own high watermark refused (``sidecar.fill``) is recorded the same way.

Every pass sets bytes and files anew: its scan, minus its removals, plus what
fills added while it walked.  Signed running totals of the changes tell: the
pass reads them before its walk and adds their growth at its end.  A fill the
walk also saw is then counted twice until the next pass measures again.  A
removal while it walked is not subtracted (running totals of removals tell it
apart): subtracting one the walk never saw would count it twice the other way,
and let fills take the cache above the cap.  Both errors hold fills back, never
let them through.  Until the first pass there is no figure and fills are not
held back (the totals still count every change, so the first pass misses none).

The record is nine little-endian 64-bit integers, in ``Reading``'s order:
bytes and files (-1: no figure yet), the running totals of bytes and files
changed, the running count of changes, that count when the last pass started
(so the changes since it are known), the largest fill refused since the
last pass, and the running totals of bytes and files removed.  Each write is one ``pwrite`` of the whole record under the lock.
A shorter record (an older format's) reads as no figure and no change yet:
the next pass writes it whole.
"""

from __future__ import annotations

import fcntl
import os
import struct
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

_FMT = "<qqqqqqqqq"
_SIZE = struct.calcsize(_FMT)


# make_room(bytes, allocated bytes) -> what it freed: (bytes, allocated bytes, objects, ...).
MakeRoom = Callable[[int, int], "tuple[int, ...]"]


class OverCap(Exception):
    """The fill would take the cache above its limit."""


class Reading(NamedTuple):
    bytes: int | None = None  # the cache's bytes; None until a pass has measured them
    files: int | None = None  # its objects; None likewise
    changed_bytes: int = 0    # running total of the bytes fills and removals outside the evictor changed (signed)
    changed_files: int = 0    # the same for objects
    changes: int = 0          # running count of those fills and removals
    changes_at_pass: int = 0  # ``changes`` when the last pass started
    refused: int = 0          # the largest fill refused since the last pass
    removed_bytes: int = 0    # running total of the bytes removals outside the evictor took away (in changed_bytes too)
    removed_files: int = 0    # the same for objects

    @property
    def changes_since_pass(self) -> int | None:
        """Fills and removals since the last pass started (None: no pass yet)."""
        return None if self.bytes is None else self.changes - self.changes_at_pass

    def with_change(self, bytes_delta: int, files_delta: int) -> "Reading":
        """This record with one more change counted (in the figure too, once there is one)."""
        return self._replace(
            bytes=None if self.bytes is None else max(0, self.bytes + bytes_delta),
            files=None if self.files is None else max(0, self.files + files_delta),
            changed_bytes=self.changed_bytes + bytes_delta, changed_files=self.changed_files + files_delta,
            changes=self.changes + 1)

    def with_removal(self, size: int, files: int) -> "Reading":
        """This record with ``size`` bytes in ``files`` objects removed (a purge, a fill making room)."""
        return self.with_change(-size, -files)._replace(removed_bytes=self.removed_bytes + size,
                                                        removed_files=self.removed_files + files)

    def with_refusal(self, size: int) -> "Reading":
        """This record with a fill of ``size`` refused (the largest since the last pass is what it keeps)."""
        return self._replace(refused=max(self.refused, size))


class CacheSize:
    """The record in ``path`` (``Layout.cache_bytes_file``): every read and change of it, each under its ``flock``."""

    def __init__(self, path: os.PathLike | str):
        self.path = os.fspath(path)

    def _lock(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextmanager
    def _locked(self) -> Iterator[int]:
        fd = self._lock()
        try:
            yield fd
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _read(fd: int) -> Reading:
        raw = os.pread(fd, _SIZE, 0)
        if len(raw) != _SIZE:
            return Reading()
        values = struct.unpack(_FMT, raw)
        if values[0] < 0 or values[1] < 0:
            return Reading(None, None, *values[2:])
        return Reading(*values)

    @staticmethod
    def _write(fd: int, r: Reading) -> None:
        figure = (-1, -1) if r.bytes is None or r.files is None else (max(0, r.bytes), max(0, r.files))
        os.pwrite(fd, struct.pack(_FMT, *figure, *r[2:]), 0)

    def read(self) -> Reading:
        """The record now; a missing or unreadable file reads as no figure and no change yet."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return Reading()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # a write is one pwrite under LOCK_EX: never half of one
            return self._read(fd)
        except OSError:
            return Reading()
        finally:
            os.close(fd)

    @contextmanager
    def adding(self, size: int, limit: int | None, files: int = 1, make_room: MakeRoom | None = None,
               disk_excess: int = 0) -> Iterator[None]:
        """Hold the ledger while the caller installs ``size`` more bytes in ``files`` more objects (0: a replacement);
        counted when the block ends without error.

        When that would take the cache above ``limit``, or the disk is ``disk_excess`` allocated bytes
        above its own high watermark, ``make_room(bytes, alloc)`` first removes what it can
        (``s3cache.victims``), counted here.  Raises ``OverCap`` (and records the refusal) when the
        cache would still cross ``limit``.  Check, removals, install and count under one lock: a pass
        reading the totals sees an object either counted and in place, or neither.
        """
        with self._locked() as fd:
            r = self._read(fd)
            over = r.bytes + size - limit if r.bytes is not None and limit is not None and size > 0 else 0
            if make_room is not None and (over > 0 or disk_excess > 0):
                freed_bytes, _, freed_files, *_ = make_room(max(0, over), max(0, disk_excess))
                if freed_files:
                    r = r.with_removal(freed_bytes, freed_files)
                    self._write(fd, r)
                    over -= freed_bytes
            if over > 0:
                self._write(fd, r.with_refusal(size))
                raise OverCap(f"{r.bytes} + {size} bytes > {limit}")
            yield
            # No pass yet: nothing held the fill back, but the totals count it.
            self._write(fd, r.with_change(size, files))

    def try_add(self, size: int, limit: int | None, files: int = 1) -> bool:
        """Count ``size`` more bytes unless that takes the cache above ``limit``; False: refused, nothing counted."""
        try:
            with self.adding(size, limit, files):
                return True
        except OverCap:
            return False

    def removing(self, size: int, remove: Callable[[], bool]) -> bool:
        """Run ``remove`` (one object's removal) under the ledger's lock; if it removed the object, subtract
        ``size`` bytes and one file.  Returns what ``remove`` did.

        Under the lock for the reason ``adding`` is: a pass reading the totals sees the object either
        in place and counted, or gone and subtracted.
        """
        try:
            fd = self._lock()
        except OSError:  # nothing to count in (run/ missing, read-only): the removal still happens, the next pass measures
            return remove()
        try:
            removed = remove()
            if removed:
                try:
                    self._write(fd, self._read(fd).with_removal(size, 1))
                except OSError:  # the object is gone all the same; the next pass measures
                    pass
            return removed
        finally:
            os.close(fd)  # releases the lock

    def would_refuse(self, size: int, limit: int | None, room: int = 0) -> bool:
        """Whether ``try_add`` would refuse ``size`` now, with ``room`` bytes a fill could free first
        (``s3cache.victims``); recorded as a refusal if so.  Counts nothing."""
        if limit is None:
            return False
        with self._locked() as fd:
            r = self._read(fd)
            if r.bytes is None or r.bytes + size - room <= limit:
                return False
            self._write(fd, r.with_refusal(size))
            return True

    def refuse(self, size: int) -> None:
        """Record a fill of ``size`` refused for another reason (the disk's own high watermark): the next pass makes room."""
        with self._locked() as fd:
            r = self._read(fd)
            self._write(fd, r.with_refusal(size))

    def set_after_pass(self, scanned_bytes: int, scanned_files: int, freed_bytes: int, freed_files: int,
                       before: Reading) -> Reading:
        """The pass's word: its scan, minus its removals, plus what fills added since it read ``before``.

        Removals since then are not subtracted: the walk may not have seen those objects, and
        subtracting one twice would let fills take the cache above the cap.  Counted as still
        there until the next pass measures, they only hold fills back.
        """
        with self._locked() as fd:
            now = self._read(fd)
            added_bytes = now.changed_bytes - before.changed_bytes + now.removed_bytes - before.removed_bytes
            added_files = now.changed_files - before.changed_files + now.removed_files - before.removed_files
            r = now._replace(bytes=max(0, scanned_bytes - freed_bytes + added_bytes),
                             files=max(0, scanned_files - freed_files + added_files),
                             changes_at_pass=before.changes,
                             refused=0)  # the refusals it was told of are answered
            self._write(fd, r)
            return r
