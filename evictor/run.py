"""One eviction pass, start to end: recency and frequency from the log, the scan, the decision, removals, housekeeping, the report.

Shared by the scheduled process (``python -m evictor``) and ``s3cache evict
--once``.  Real passes hold ``run/evictor.lock`` (flock) so a manual pass and
the scheduled one never run at once; a dry run changes nothing on disk (not
even atimes or the log cursor) and takes no lock.
"""

from __future__ import annotations

import fcntl
import itertools
import operator
import os
import time
from typing import Callable, Iterator

from evictor import accesslog, adaptive
from evictor.housekeeping import (GRACE_SECONDS, OnRemove, prune_grant_dirs, remove_orphan_metas, sweep_grants,
                                  sweep_temp)
from evictor.policy import Need, bytes_to_free, frequency_keys, key_estimate, lru_order
from s3cache.usage import FsUsage, UsageFn, statvfs_usage, usage_percent
from evictor.remove import marks_for_object, meta_for_object, prune_dirs, remove_object
from evictor.report import Errors, PassSummary, write_pass
from evictor.scan import PassAborted, scan
from s3cache.config import Config
from s3cache.layout import Layout
from s3cache import victims
from s3cache.ledger import CacheSize, Reading
from s3cache.sketch import WINDOW_MIN, WINDOW_PER_OBJECT, FrequencySketch, file_key

LOCK_FILE = "evictor.lock"
__all__ = ["PassAborted", "PassBusy", "run_pass"]


def _open_sketch(layout: Layout, dry_run: bool, errors: Errors) -> FrequencySketch | None:
    """The shared frequency sketch; a dry run only reads one that exists.  None: LRU it is, this pass."""
    if dry_run and not os.path.exists(layout.sketch_file):
        return None
    try:
        return FrequencySketch.open(layout.sketch_file)
    except (OSError, ValueError) as exc:
        errors.add("opening run/frequency.sketch", exc)
        return None


def _duel(layout: Layout, config: Config, log: accesslog.LogRead, sketch: FrequencySketch, fs: FsUsage,
          result, objects_dir: bytes, dry_run: bool, errors: Errors) -> tuple[str, str]:
    """S3CACHE_EVICT_POLICY=adaptive: replay this pass's requests into the shadow caches; which candidate runs."""
    duel = adaptive.load(layout.adaptive_file)
    sampled: dict[bytes, tuple[bytes, int | None] | None] = {}  # path -> (key, size) when in the sample
    requests = []
    for path, ns in accesslog.resolve_requests(layout, log.requests or accesslog.Requests(), config.addressing):
        if path not in sampled:
            key = file_key(objects_dir, path)
            if not duel.in_sample(key):
                sampled[path] = None
                continue
            try:  # the cached file's size now; unknown (None) for what is not cached
                sampled[path] = key, os.stat(path).st_size
            except OSError:
                sampled[path] = key, None
        got = sampled[path]
        if got is not None:
            requests.append((got[0], got[1], ns / 1e9))
    # What the cache may hold at 100%: S3CACHE_MAX_BYTES, and the disk less what is not the cache's.
    room = fs.capacity - max(0, fs.used - result.alloc_bytes) if fs.capacity > 0 else 0
    capacity = min(room, config.max_bytes) if config.max_bytes else room
    chosen = duel.replay(requests, max(1, capacity), sketch, high=config.evict_high / 100,
                         low=config.evict_low / 100, mean_size=result.bytes // max(1, result.files))
    if not dry_run:
        try:
            adaptive.save(layout.adaptive_file, duel)
        except OSError as exc:
            errors.add("writing run/adaptive.json", exc)
    return chosen


def _publish_victims(layout: Layout, table, order: Iterator[int], share: int, objects_dir: bytes,
                     estimate: Callable[[int, bytes], int]) -> int:
    """Write the next ``share`` bytes of ``order`` as the list fills make room from; how many objects it names."""
    def upto_share() -> Iterator[victims.Victim]:
        listed = 0
        for n, i in enumerate(order):
            if listed >= share or n >= victims.MAX_FILES:
                return
            listed += table.size[i]
            path = table.path(i)
            yield victims.Victim(path[len(objects_dir) + 1:], table.size[i], table.alloc[i], table.atime_ns[i],
                                 estimate(i, path))
    return victims.Victims(layout).publish(upto_share())


def _estimator(keys, sketch: FrequencySketch | None, objects_dir: bytes) -> Callable[[int, bytes], int]:
    """Each listed victim's frequency estimate, as the pass's own removals take it for the boundary."""
    if keys is not None:
        return lambda i, path: key_estimate(keys[i])
    if sketch is not None:
        return lambda i, path: sketch.estimate(file_key(objects_dir, path))
    return lambda i, path: 0


class PassBusy(Exception):
    """Another (non-dry) pass holds the lock."""


def _lock(layout: Layout) -> int:
    fd = os.open(os.path.join(layout.run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise PassBusy("another eviction pass is running") from None
    return fd


def run_pass(config: Config, *, dry_run: bool = False, usage: UsageFn | None = None,
             now: Callable[[], float] = time.time, on_remove: OnRemove | None = None,
             should_stop: Callable[[], bool] | None = None, grace: float = GRACE_SECONDS) -> PassSummary:
    """Run one pass and return its summary (already written to run/ unless ``dry_run``).

    ``usage`` reports the cache filesystem's size and free space (``statvfs``
    unless injected); ``on_remove(kind, path, size)`` is told of each removal
    once it is done (or instead of it, in a dry run).
    """
    layout = Layout(config.dir)
    started = now()
    clock = time.monotonic()
    usage = usage or statvfs_usage(layout.root)
    summary = PassSummary(started_at=started, dry_run=dry_run, high=config.evict_high,
                          low=config.evict_low, max_bytes=config.max_bytes)
    errors = Errors()
    lock_fd = None
    sketch = None
    ledger = CacheSize(layout.cache_bytes_file)
    if not dry_run:
        layout.ensure()
        lock_fd = _lock(layout)
    try:
        sketch = _open_sketch(layout, dry_run, errors)
        objects_dir = os.fsencode(layout.objects_dir)
        adaptive_policy = config.evict_policy == "adaptive" and sketch is not None
        # 1. Recency first, so the scan sees this pass's hits.
        log = accesslog.read_new(layout, accesslog.load_cursor(layout), now=started, errors=errors,
                                 requests=adaptive_policy)
        hit_paths = accesslog.resolve(layout, log.hits, config.addressing)
        summary.log_lines, summary.log_hits = log.lines, len(hit_paths)
        if not dry_run:
            summary.atimes_refreshed = accesslog.refresh_atimes(hit_paths, errors)
            if sketch is not None:  # the sidecar counted the misses; the hits are counted here
                for path, n in accesslog.resolve(layout, log.counts, config.addressing, combine=operator.add).items():
                    sketch.add(file_key(objects_dir, path), n)
        # Before the walk: what fills and removals change from here on is added to its measure (s3cache.ledger).
        before = ledger.read() if not dry_run else Reading()
        refused = summary.refused_bytes = before.refused

        # 2. The walk.  A dry run overlays the hits it did not write.
        result = scan(layout, now=started, grace=grace, should_stop=should_stop,
                      atime_overrides=hit_paths if dry_run else None)
        errors.merge(result.errors)
        # Grants of past windows, or of objects gone, go; the rest are part of the cache's bytes.
        granted = sweep_grants(layout, config.grant_ttl, now=started, dry_run=dry_run)
        summary.grants_removed = granted.removed
        result.bytes += granted.bytes
        result.alloc_bytes += granted.bytes
        table = result.table
        summary.scanned_files = result.files
        summary.bytes_before = result.bytes

        # 3. The decision.  Nothing to evict costs nothing more than the walk.
        fs = usage()
        summary.usage_percent_before = usage_percent(fs, result.bytes, config.max_bytes)
        need = bytes_to_free(fs, result.bytes, high=config.evict_high, low=config.evict_low,
                             max_bytes=config.max_bytes, refused=refused, cache_alloc=result.alloc_bytes)

        if sketch is not None and not dry_run:
            # TinyLFU's sample: ten times the objects the cache holds.
            sketch.window = max(WINDOW_MIN, WINDOW_PER_OBJECT * result.files)
        order_by, admit_by = (config.evict_policy if sketch is not None else "lru"), None
        if adaptive_policy:
            order_by, admit_by = _duel(layout, config, log, sketch, fs, result, objects_dir, dry_run, errors)
        summary.policy = order_by if admit_by is None else f"{order_by}+{admit_by}"

        # 4. Removals, first in the policy's order, until the need is met.
        # Taken one at a time from that order, so a victim that vanished or
        # refused to go is made up for by the next one.
        emptied: set[bytes] = set()  # directories that may now be empty
        freed_size = freed_alloc = 0
        keys = None
        boundary = 0  # the highest frequency removed: what a newcomer must beat (S3CACHE_ADMIT=tinylfu)
        # Near the limit, the pass also lists what would go next: fills make room from it (s3cache.victims).
        listing = not dry_run and (need is not None or summary.usage_percent_before >= config.evict_low)
        next_share = int(victims.SHARE * result.bytes) if listing else 0
        order = carried = None
        if need is not None or listing:
            if order_by == "lfu":
                keys = frequency_keys(table, sketch, objects_dir)
            wanted = Need(size=(need.size if need else 0) + next_share, alloc=need.alloc if need else 0)
            order = lru_order(table, wanted, result.bytes, result.alloc_bytes, keys)
        estimate = _estimator(keys, sketch, objects_dir)  # what each removal or victim counts for the boundary
        if need is not None:
            for n, i in enumerate(order):
                if need.met_by(freed_size, freed_alloc):
                    carried = i  # the first not taken: the head of the next victims
                    break
                if should_stop is not None and n % 1000 == 999 and should_stop():
                    raise PassAborted()
                path = table.path(i)
                meta, marks = meta_for_object(layout, path), marks_for_object(layout, path)
                if dry_run or remove_object(layout, path, meta, errors, marks):
                    if on_remove is not None:
                        on_remove("object", path, table.size[i])
                    summary.evicted_files += 1
                    boundary = max(boundary, estimate(i, path))
                    freed_size += table.size[i]
                    freed_alloc += table.alloc[i]
                    emptied.update((os.path.dirname(path), os.path.dirname(meta), *map(os.path.dirname, marks)))
        if not dry_run:
            try:
                by_fills = victims.Victims(layout).freed()  # what fills took from the last list
                summary.fill_evicted_files, summary.fill_evicted_bytes = by_fills.files, by_fills.size
                if by_fills.files:
                    boundary = max(boundary, by_fills.top)
                if listing:
                    rest = order if carried is None else itertools.chain((carried,), order)
                    summary.next_victims = _publish_victims(layout, table, rest, next_share, objects_dir, estimate)
                else:
                    victims.Victims(layout).clear()
            except OSError as exc:
                errors.add("writing run/next-victims", exc)
        summary.evicted_bytes = freed_size
        if not dry_run and (summary.evicted_files or summary.fill_evicted_files) and sketch is not None:
            sketch.boundary = boundary
        if not dry_run and admit_by == "first" and sketch is not None:
            sketch.boundary = 0  # recency wins lately: tinylfu admits every miss (evictor.adaptive)
        if not dry_run:
            try:
                ledger.set_after_pass(result.bytes, result.files, freed_size, summary.evicted_files, before)
            except OSError as exc:
                errors.add("writing run/cache-bytes", exc)
        if need is not None:
            summary.target_reached = need.met_by(freed_size, freed_alloc)

        # 5. Housekeeping.
        temp = sweep_temp(layout, now=started, grace=grace, dry_run=dry_run, errors=errors, on_remove=on_remove)
        orphans = remove_orphan_metas(layout, result.orphan_metas, now=started, grace=grace, dry_run=dry_run,
                                      errors=errors, on_remove=on_remove)
        summary.temp_removed, summary.orphan_meta_removed = temp.files, orphans.files
        if not dry_run:
            summary.dirs_removed = prune_dirs(layout, [*emptied, *orphans.dirs, *result.empty_dirs])
            summary.dirs_removed += prune_grant_dirs(granted.dirs)
            # Saved only now: on a full disk this write may fail until the
            # removals above made room, and a cursor not saved only means
            # the same hits are replayed (harmlessly) next time.
            if log.cursor is not None:
                try:
                    accesslog.save_cursor(layout, log.cursor)
                except OSError as exc:
                    errors.add("saving the access-log cursor", exc)

        # 6. After.  A dry run estimates; a real pass asks the filesystem again.
        summary.bytes_after = result.bytes - freed_size
        if dry_run or not summary.evicted_files:
            fs_after = FsUsage(max(0, fs.used - freed_alloc), fs.avail + freed_alloc)
        else:
            fs_after = usage()
        summary.usage_percent_after = usage_percent(fs_after, summary.bytes_after, config.max_bytes)
    finally:
        if sketch is not None:
            sketch.close()
        if lock_fd is not None:
            os.close(lock_fd)
    summary.finished_at = now()
    summary.duration_seconds = round(time.monotonic() - clock, 3)
    summary.errors, summary.error_samples = errors.count, errors.samples
    if not dry_run:
        try:
            write_pass(layout, summary)
        except OSError as exc:  # the pass itself is done; say so in its line
            errors.add("writing run/evictor.json", exc)
            summary.errors, summary.error_samples = errors.count, errors.samples
    return summary
