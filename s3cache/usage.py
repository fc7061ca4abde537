"""Filesystem usage as ``df`` reports it: shared by the evictor (watermarks) and the sidecar (health, status)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class FsUsage:
    used: int   # bytes in use (f_blocks - f_bfree)
    avail: int  # bytes an unprivileged writer can still use (f_bavail)

    @property
    def capacity(self) -> int:
        # What df's Use% divides by: blocks reserved for root count neither
        # as used nor as available, so 100% is exactly "fills get ENOSPC".
        return self.used + self.avail

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.capacity if self.capacity > 0 else 0.0


UsageFn = Callable[[], FsUsage]


def statvfs_usage(path: os.PathLike | str) -> UsageFn:
    def usage() -> FsUsage:
        st = os.statvfs(path)
        return FsUsage(used=(st.f_blocks - st.f_bfree) * st.f_frsize, avail=st.f_bavail * st.f_frsize)
    return usage


def usage_percent(fs: FsUsage, cache_bytes: int, max_bytes: int | None) -> float:
    """The eviction measure: the larger of the disk's used percent and cache bytes / S3CACHE_MAX_BYTES."""
    pct = fs.percent
    if max_bytes:
        pct = max(pct, 100.0 * cache_bytes / max_bytes)
    return pct
