"""One place that gathers every figure the status page, the metrics and ``s3cache stats`` show.

Each figure comes from where it is true:

- requests and bytes: Caddy's access log (``s3cache.accesslog`` + ``sidecar.traffic``),
  read incrementally by a background thread every few seconds and again
  before each snapshot, so a page is never behind the log;
- misses the sidecar answered, and fills: the sidecar's own counters;
- eviction passes: the evictor's ``run/evictor-passes.jsonl``;
- the cache's live size: ``run/cache-bytes`` (``s3cache.ledger``: each pass
  sets it, every fill and removal since, by any process, changed it), so no
  page view walks the cache;
- disk usage: ``statvfs`` at the moment of the snapshot.

Counters run from the sidecar's start (as Prometheus expects of counters).
``snapshot()`` returns one JSON-able dict; the page, the metrics and the
command all render that same dict, so they cannot disagree.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from bisect import bisect_left
from collections import Counter
from typing import Callable

from s3cache.config import Config
from s3cache.layout import Layout
from s3cache.ledger import CacheSize
from s3cache.usage import statvfs_usage, usage_percent
from sidecar.fill import Filler
from s3cache.accesslog import Follower
from sidecar.traffic import METHODS, RESULTS, Bucket, Traffic

log = logging.getLogger("sidecar.stats")

SNAPSHOT_VERSION = 1
REFRESH_SECONDS = 5.0
GIB = 1 << 30  # AWS bills data transfer per GB of 2^30 bytes
FILL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
PASSES_SHOWN = 10
# Parse this many log lines, then let request threads have the GIL (the auth
# endpoint is on the hit path in verify/revalidate mode).
LINES_PER_SLICE = 64


class Histogram:
    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[list]:
        out, running = [], 0
        for bound, n in zip([*self.bounds, "+Inf"], self.counts):
            running += n
            out.append([bound, running])
        return out


class Collector:
    def __init__(self, config: Config, layout: Layout, filler: Filler, *, clock: Callable[[], float] = time.time,
                 admission=None):
        self.config = config
        self.admission = admission  # sidecar.admission.Admission, or None (its figures are then zero)
        self.layout = layout
        self.filler = filler
        self.clock = clock
        self.started_at = clock()
        self._lock = threading.Lock()
        self._miss_lock = threading.Lock()
        self.follower = Follower(layout.access_log, clock=clock)
        self.traffic = Traffic(layout, config.addressing)
        self.misses: Counter[str] = Counter()
        self.misses_by_pid: Counter[int] = Counter()
        self.fill_durations = Histogram(FILL_BUCKETS)
        self._fills_seen = 0
        self.fill_durations_lost = 0
        self.evictions = {"passes": 0, "evicted_files": 0, "evicted_bytes": 0}
        self._passes: list[dict] = []
        self._passes_stamp: tuple | None = None
        self._newest_pass = self.started_at  # passes that finished before we started are not "since start"
        self.cache_size = CacheSize(layout.cache_bytes_file)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- the sidecar's own miss counter (called on the miss path: one locked increment) -----

    def count_miss(self, fill_queued: bool, pid: int | None = None) -> None:
        """``pid``: the request worker that answered (S3CACHE_SIDECAR_WORKERS > 1); this process otherwise."""
        with self._miss_lock:
            self.misses["fill" if fill_queued else "redirect"] += 1
            self.misses_by_pid[pid or os.getpid()] += 1

    # -- reading the sources ------------------------------------------------------------------

    def start(self, interval: float = REFRESH_SECONDS) -> None:
        """Follow the log in the background, so nothing is lost to rolls and no read is large."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # a bad read must not end the thread; the next one may succeed
                    log.exception("reading the access log / evictor state failed")

        self._thread = threading.Thread(target=loop, name="stats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def refresh(self) -> None:
        with self._lock:
            now = self.clock()
            fed = 0

            def feed(line: bytes) -> None:
                nonlocal fed
                self.traffic.feed(line)
                fed += 1
                if fed % LINES_PER_SLICE == 0:
                    time.sleep(0)  # let a waiting request thread run

            self.follower.read(feed)
            self.traffic.resolve(now=now)
            self._poll_fills()
            self._poll_evictor()

    def _poll_fills(self) -> None:
        state = self.filler.stats()
        new = state["outcomes"].get("filled", 0) - self._fills_seen
        if new > 0:
            durations = state["durations"]
            for seconds in durations[-new:] if new <= len(durations) else durations:
                self.fill_durations.observe(seconds)
            self.fill_durations_lost += max(0, new - len(durations))
            self._fills_seen += new

    def _poll_evictor(self) -> None:
        path = self.layout.evictor_passes_file
        try:
            st = os.stat(path)
        except OSError:
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._passes_stamp:
            return
        passes = []
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and isinstance(rec.get("finished_at"), (int, float)):
                        passes.append(rec)
        except OSError:
            return
        self._passes_stamp = stamp
        passes.sort(key=lambda p: p["finished_at"])
        for p in passes:
            if p["finished_at"] > self._newest_pass and not p.get("dry_run"):
                self.evictions["passes"] += 1
                # A pass reports what fills removed from its list since the last one (s3cache.victims) too.
                self.evictions["evicted_files"] += int(p.get("evicted_files") or 0) + int(p.get("fill_evicted_files") or 0)
                self.evictions["evicted_bytes"] += int(p.get("evicted_bytes") or 0) + int(p.get("fill_evicted_bytes") or 0)
                self._newest_pass = p["finished_at"]
        self._passes = passes

    # -- the snapshot -------------------------------------------------------------------------

    def snapshot(self) -> dict:
        self.refresh()
        with self._lock:
            now = self.clock()
            fills = self._fills(self.filler.stats())
            total, hour = self.traffic.total, self.traffic.last_hour(now)
            with self._miss_lock:
                misses = {"fill": self.misses["fill"], "redirect": self.misses["redirect"]}
                by_pid = {str(pid): n for pid, n in sorted(self.misses_by_pid.items())}
            snap = {
                "version": SNAPSHOT_VERSION,
                "generated_at": now,
                "started_at": self.started_at,
                "upstream": self.config.upstream,
                "access": self.config.access,
                "miss_mode": self.config.miss,
                "price_per_gb": self.config.egress_price_per_gb,
                "since_start": self._period(total, pending=self.traffic.pending_count),
                "last_hour": self._period(hour, pending=None),
                "series": self._series(now),
                "sidecar_misses": misses,
                "sidecar_workers": {"misses_by_pid": by_pid},  # which request worker answered them
                "fills": fills,
                "disk": self._disk(),
                "evictor": self._evictor(),
                "admission": self._admission(fills),
                "top_objects": self.traffic.top_objects(10),
                "top_objects_exact": self.traffic.top_exact,
                "access_log": {
                    "path": self.follower.path, "lines": self.traffic.lines,
                    "malformed": self.traffic.malformed + self.follower.skipped_lines,
                    "rolls": self.follower.rolls, "internal_requests": self.traffic.internal_requests,
                },
            }
        since = snap["since_start"]
        # Net: what the cache downloaded for itself is S3 egress too.  Streamed misses went to a
        # client that would have fetched them anyway, so only the rest of the fill bytes count.
        own = max(0, fills["bytes"] - since["bytes"]["streamed"])
        since["fill_bytes_not_served"] = own
        since["egress_saved_net_dollars"] = (since["bytes"]["cache"] - own) * self.config.egress_price_per_gb / GIB
        return snap

    def _period(self, b: Bucket, pending: int | None) -> dict:
        requests = {r: {m: b.requests.get((r, m), 0) for m in METHODS} for r in RESULTS}
        reads = {r: requests[r]["GET"] + requests[r]["HEAD"] for r in RESULTS}
        by_source = b.cache_bytes + b.streamed_bytes + b.redirect_bytes
        price = self.config.egress_price_per_gb
        return {
            "requests": requests,
            "reads": reads,
            "hit_ratio_requests": _ratio(reads["hit"], reads["hit"] + reads["miss"]),
            "bytes": {
                "cache": b.cache_bytes,
                "streamed": b.streamed_bytes,
                "redirected_estimated": b.redirect_bytes,
                "redirects_sized": b.redirects_sized,
                "redirects_unknown": b.redirects_unknown,
                "redirects_pending": pending,
            },
            "hit_ratio_bytes": _ratio(b.cache_bytes, by_source),
            "egress_saved_dollars": b.cache_bytes * price / GIB,
        }

    def _series(self, now: float) -> dict:
        rows = self.traffic.series(now)
        return {
            "minute": [m for m, _ in rows],
            "hit": [b.reads("hit") for _, b in rows],
            "miss": [b.reads("miss") for _, b in rows],
            "cache_bytes": [b.cache_bytes for _, b in rows],
            "origin_bytes": [b.streamed_bytes + b.redirect_bytes for _, b in rows],
        }

    def _fills(self, state: dict) -> dict:
        outcomes = state["outcomes"]
        failed = {k.partition(":")[2]: n for k, n in outcomes.items() if k.startswith("failed:")}
        return {
            "in_progress": state["in_progress"],
            "filled": outcomes.get("filled", 0),
            "failed": sum(failed.values()),
            "failed_by_reason": dict(sorted(failed.items())),
            "other_outcomes": {k: n for k, n in sorted(outcomes.items()) if k != "filled" and not k.startswith("failed:")},
            "bytes": state["bytes_filled"],
            "duration_seconds": {"buckets": self.fill_durations.cumulative(), "count": self.fill_durations.count,
                                 "sum": self.fill_durations.sum},
        }

    def _admission(self, fills: dict) -> dict:
        """S3CACHE_ADMIT's decisions, and the fill bytes the declined ones did not fetch (estimated: a
        redirected object's size is not known, so each counts as the mean fill so far)."""
        state = self.admission.stats() if self.admission is not None else \
            {"policy": self.config.admit, "admitted": 0, "declined": 0, "boundary": None}
        asked = state["admitted"] + state["declined"]
        mean = fills["bytes"] / fills["filled"] if fills["filled"] else 0
        saved = int(state["declined"] * mean)
        return {**state, "admit_rate": _ratio(state["admitted"], asked), "saved_bytes_estimated": saved,
                "saved_dollars_estimated": saved * self.config.egress_price_per_gb / GIB}

    def _disk(self) -> dict:
        c = self.config
        last = self._passes[-1] if self._passes else None
        cache_bytes = cache_files = changes = measured_bytes = measured_files = None
        if last is not None:
            measured_bytes = int(last.get("bytes_after") or 0)
            measured_files = int(last.get("scanned_files") or 0) - int(last.get("evicted_files") or 0)
            # Live: the pass's measure plus what fills and removals changed since it started, kept in the ledger.
            size = self.cache_size.read()
            cache_bytes, cache_files, changes = size.bytes, size.files, size.changes_since_pass
        out = {"high": c.evict_high, "low": c.evict_low, "max_bytes": c.max_bytes,
               "cache_bytes": cache_bytes, "cache_files": cache_files,
               "cache_as_of": last["finished_at"] if last else None,
               "measured_bytes": measured_bytes, "measured_files": measured_files,
               "changes_since_pass": changes,
               "used_bytes": None, "available_bytes": None, "used_percent": None, "usage_percent": None}
        try:
            fs = statvfs_usage(self.layout.root)()
        except OSError:
            return out
        usage = usage_percent(fs, cache_bytes or 0, c.max_bytes if cache_bytes is not None else None)
        out.update(used_bytes=fs.used, available_bytes=fs.avail, used_percent=fs.percent, usage_percent=usage)
        return out

    def _evictor(self) -> dict:
        keys = ("started_at", "finished_at", "duration_seconds", "scanned_files", "bytes_before", "bytes_after",
                "evicted_files", "evicted_bytes", "fill_evicted_files", "fill_evicted_bytes", "usage_percent_before",
                "usage_percent_after", "target_reached", "errors")
        recent = [{k: p.get(k) for k in keys} for p in reversed(self._passes[-PASSES_SHOWN:])]
        return {"since_start": dict(self.evictions), "recent_passes": recent,
                "last_pass_at": self._passes[-1]["finished_at"] if self._passes else None}


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None
