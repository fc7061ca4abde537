"""The per-object lock: whoever changes a cache entry (fill, refresh, metadata update) holds it.

The lock is an ``flock`` on the entry's temp file (``Layout.temp_path``, the
file a fill streams into).  The kernel drops it when its holder dies, so it
can never go stale; whoever cannot get it leaves the work to the holder.
Releasing removes the temp file (it is the holder's while it holds the
lock), unless a fill renamed it into place already.
"""

from __future__ import annotations

import fcntl
import os
import time

# How often a waiting acquirer tries again.
_POLL = 0.02


class LockLost(OSError):
    """The temp file kept being replaced under us (the evictor sweeping it): give up this time."""


def try_lock(path: str, attempts: int = 5) -> int | None:
    """Lock ``path`` without waiting: its fd, or None when another holder has it.

    The evictor may unlink a dead fill's temp file between our open and our
    flock; then we would hold a lock on an orphan inode.  So the path must
    still name the inode we locked, else we try again.
    """
    for _ in range(attempts):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            st_path = os.stat(path)
        except FileNotFoundError:
            st_path = None
        st_fd = os.fstat(fd)
        if st_path and (st_path.st_ino, st_path.st_dev) == (st_fd.st_ino, st_fd.st_dev):
            return fd
        os.close(fd)
    raise LockLost(f"{path} kept changing under us")


def acquire_within(path: str, seconds: float) -> int | None:
    """Lock ``path``, waiting up to ``seconds`` for its holder; None if it still holds it then."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fd = try_lock(path)
        except LockLost:
            fd = None
        if fd is not None or time.monotonic() >= deadline:
            return fd
        time.sleep(_POLL)


def release(fd: int, path: str | None = None) -> None:
    """Drop the lock; with ``path``, remove the temp file first (ours while we hold the lock)."""
    try:
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
