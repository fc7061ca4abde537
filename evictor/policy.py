"""The eviction decision: how full the cache is, how much must go, and which files go first.

Two orders (S3CACHE_EVICT_POLICY): ``lru``, least recently accessed first;
``lfu``, least often asked for lately first (``s3cache.sketch``'s estimate,
counting misses and replayed hits, halved every window), least recently
accessed among equals.  An object not asked for since the halving before
last counts as never asked for: what a shifted working set left behind goes
first, however popular it once was.  (Cutting at the last halving instead
was measured with ``bench/policysim.py``: 2 points better on a shifting
working set, 1.5 worse on Zipf, and redirect-mode costs up by a sixth.)
``adaptive`` runs one of the two each pass, whichever ``evictor.adaptive``'s
miniature simulations found better lately.

Usage is the larger of the filesystem's used percent (as ``df`` shows it) and the cache's own
bytes as a percent of ``S3CACHE_MAX_BYTES``.  A pass removes objects when the disk is above HIGH,
when the cache is above the cap itself, or when a fill was refused; then enough to bring *both*
measures strictly below LOW.  The cap has no band of its own: fills use all of it, making room
at it from the victims each pass lists from LOW on (``s3cache.victims``), so the cache is over
the cap, or a fill refused, only when fills outran that list.  The amount is planned up front from
the scan rather than by re-reading ``statvfs`` after each unlink: some
filesystems (XFS, btrfs, anything with delayed frees) report freed space late,
and a loop waiting for it would evict the whole cache.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

from evictor.scan import FileTable
from s3cache.sketch import FrequencySketch, file_key
from s3cache.usage import FsUsage




def _below(percent: float, of: int) -> int:
    """The largest byte count strictly below ``percent`` of ``of``."""
    return max(0, math.ceil(percent * of / 100.0) - 1)


@dataclass(frozen=True)
class Need:
    size: int   # apparent bytes to free for the S3CACHE_MAX_BYTES cap
    alloc: int  # allocated bytes to free for the filesystem

    def met_by(self, size: int, alloc: int) -> bool:
        return size >= self.size and alloc >= self.alloc


def bytes_to_free(fs: FsUsage, cache_bytes: int, *, high: float, low: float,
                  max_bytes: int | None, refused: int = 0, cache_alloc: int | None = None) -> Need | None:
    """None when the disk is not above HIGH, the cache not above ``max_bytes`` and no fill was refused;
    otherwise what brings both measures below LOW.

    ``refused`` is the largest fill refused since the last pass (``s3cache.ledger``), by the cap or by
    the disk's own HIGH: fills stop there, so usage would never cross either by itself; room is made
    below LOW on both measures with that fill in.  Unless it would not fit below LOW even with the
    cache emptied (``cache_alloc``: the cache's share of the disk's used bytes; None: all of them):
    emptying the cache would not cache that object, only lose the rest.
    """
    if refused:
        others = max(0, fs.used - cache_alloc) if cache_alloc is not None else 0
        if (max_bytes and refused > _below(low, max_bytes)) or \
                (fs.capacity > 0 and others + refused > _below(low, fs.capacity)):
            refused = 0
    over_cap = bool(max_bytes) and cache_bytes > max_bytes
    if fs.percent <= high and not over_cap and not refused:
        return None
    alloc = max(0, fs.used + refused - _below(low, fs.capacity)) if fs.capacity > 0 else 0
    size = max(0, cache_bytes + refused - _below(low, max_bytes)) if max_bytes else 0
    return Need(size=size, alloc=alloc)


def frequency_keys(table: FileTable, sketch: FrequencySketch, objects_dir: bytes) -> list[int]:
    """Each row's ``lfu`` sort key: (effective estimate, atime) packed in one int (no tuple per file)."""
    _, before = sketch.aged_at
    stale_ns = int(before * 1e9)
    atime, names, name_end = table.atime_ns, table.names, table.name_end
    estimate = sketch.estimate
    keys = []
    n = len(table)
    # Directory by directory (the table's runs), so no row bisects for its directory.
    for j, d in enumerate(table.dirs):
        start = table.dir_start[j]
        stop = table.dir_start[j + 1] if j + 1 < len(table.dirs) else n
        prefix = file_key(objects_dir, d + b"/")
        for i in range(start, stop):
            a = max(0, atime[i])
            if a >= stale_ns:
                est = estimate(prefix + bytes(names[name_end[i - 1] if i else 0:name_end[i]]))
            else:
                est = 0
            keys.append((est << 64) | a)
    return keys


def key_estimate(key: int) -> int:
    """The estimate packed into a ``frequency_keys`` key."""
    return key >> 64


def lru_order(table: FileTable, need: Need, total_size: int, total_alloc: int,
              keys: Sequence[int] | None = None) -> Iterator[int]:
    """Row numbers, least recently accessed first (smallest ``keys`` first when given), for as long as the
    caller keeps taking them.

    Only the oldest k rows are ever ordered (``heapq.nsmallest`` over the
    atime column or ``keys``, no tuple per file), with k guessed from the fraction of
    bytes needed and doubled when the caller wants more: when the oldest
    files are smaller than average, or some could not be removed.
    Ties (same atime) keep walk order, so the order is deterministic.
    """
    n = len(table)
    fraction = 0.0
    if need.size:
        fraction = max(fraction, need.size / total_size if total_size else 1.0)
    if need.alloc:
        fraction = max(fraction, need.alloc / total_alloc if total_alloc else 1.0)
    k = min(n, int(n * min(fraction, 1.0) * 1.25) + 64)
    atime = table.atime_ns if keys is None else keys
    done = 0
    while done < n:
        # nsmallest is documented as sorted(...)[:k], stable: a longer prefix extends a shorter one.
        oldest = heapq.nsmallest(k, range(n), key=atime.__getitem__)
        yield from oldest[done:]
        done, k = len(oldest), min(n, k * 2)


def select_victims(table: FileTable, need: Need, total_size: int, total_alloc: int) -> list[int]:
    """The shortest least-recently-accessed prefix that meets ``need``, assuming every removal succeeds.

    When even the whole cache cannot meet it (the disk is full of something
    else), that is every row: the cache yields its space.
    """
    victims: list[int] = []
    freed_size = freed_alloc = 0
    for i in lru_order(table, need, total_size, total_alloc):
        if need.met_by(freed_size, freed_alloc):
            break
        victims.append(i)
        freed_size += table.size[i]
        freed_alloc += table.alloc[i]
    return victims
