"""What clients got, counted from Caddy's access log: requests by result, bytes by source, top objects.

One record per request (``s3cache.accesslog`` reads and parses the lines).  What each
line tells, and how exactly:

- **result**: its ``X-Cache`` response header: ``hit``, ``miss``, ``denied``,
  ``error``; ``other`` for a request without one (a 400 for a malformed URI).
  Our own endpoints (``/``, ``/_s3cache/...``) are not client traffic and are
  counted apart.
- **bytes from the cache**: ``size`` of a hit: the body bytes Caddy wrote.
  Exact (Range and HEAD included).
- **bytes from S3 through the sidecar**: ``size`` of a miss answered ``200``
  (``S3CACHE_MISS=stream``).  Exact.
- **bytes redirected to S3**: a ``307`` has no body; what the client then
  fetched from S3 is not in any log of ours.  Estimated as the object's size
  once the cache holds it (the fill the miss started usually lands within
  seconds), narrowed by the request's ``Range``; a HEAD costs nothing.
  Redirects whose size never becomes known (sub-resources, uncacheable keys,
  failed fills) are counted, not guessed.
- **the last hour**: per-minute buckets by each line's own timestamp.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Iterable

from s3cache import accesslog
from s3cache.layout import Layout, ObjectRef
from s3cache.wire import is_internal
from s3cache.request_path import BadRequest, ParsedURI, parse_uri

RESULTS = ("hit", "miss", "denied", "error", "other")
METHODS = ("GET", "HEAD", "other")
WINDOW_MINUTES = 60
# A redirect whose object is not cached this long after it is counted as of unknown size
# (the fill failed, was refused, or never ran).
PENDING_SECONDS = 900.0
MAX_PENDING = 20_000
# Distinct objects remembered for "top objects"; beyond it the smaller half is forgotten.
TOP_CAPACITY = 20_000
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _PathStyle:
    """Addressing when the config has none to offer: the bucket is always in the path."""

    @staticmethod
    def bucket_for_host(host: str) -> None:
        return None

    @staticmethod
    def resolve(host: str, raw: str) -> SimpleNamespace:
        return SimpleNamespace(parsed=parse_uri(raw))


def range_length(spec: str | None, size: int) -> int:
    """Bytes a ``Range`` header asks of an object of ``size`` bytes (the whole of it when unparseable)."""
    if not spec:
        return size
    m = _RANGE.match(spec.strip())
    if not m or m.group(1) == m.group(2) == "":
        return size  # several ranges, or not bytes: the whole object bounds it
    first, last = m.group(1), m.group(2)
    if first == "":  # the last N bytes
        return min(int(last), size)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return max(0, end - start + 1)


@dataclass
class Bucket:
    """One minute (or the whole run): counts and bytes."""

    requests: dict = field(default_factory=lambda: defaultdict(int))  # (result, method) -> n
    cache_bytes: int = 0
    streamed_bytes: int = 0
    redirect_bytes: int = 0      # estimated, as sizes become known
    redirects_sized: int = 0     # GET redirects whose size is counted in redirect_bytes
    redirects_unknown: int = 0   # GET redirects whose size will never be known

    def count(self, result: str, method: str | None = None) -> int:
        return sum(n for (r, m), n in self.requests.items() if r == result and (method is None or m == method))

    def reads(self, result: str) -> int:
        return self.count(result, "GET") + self.count(result, "HEAD")

    def add(self, other: "Bucket") -> None:
        for k, n in other.requests.items():
            self.requests[k] += n
        self.cache_bytes += other.cache_bytes
        self.streamed_bytes += other.streamed_bytes
        self.redirect_bytes += other.redirect_bytes
        self.redirects_sized += other.redirects_sized
        self.redirects_unknown += other.redirects_unknown


@dataclass
class _Pending:
    ts: float
    range_spec: str | None


class Traffic:
    def __init__(self, layout: Layout, addressing=None, *, top_capacity: int = TOP_CAPACITY):
        self.layout = layout
        # s3cache.addressing.Addressing: which bucket a Host names (virtual-hosted requests).
        self.addressing = addressing or _PathStyle()
        self.total = Bucket()
        self.minutes: dict[int, Bucket] = {}
        # (host, raw path) -> [bytes served from cache, hits]; decoded to "bucket/key" only when shown.
        self.top: dict[tuple[str, str], list[int]] = {}
        self.top_capacity = top_capacity
        self.top_exact = True
        self.pending: dict[ObjectRef, list[_Pending]] = {}
        self.pending_count = 0
        self.internal_requests = 0
        self.lines = 0
        self.malformed = 0
        self.last_ts = 0.0

    # -- lines ----------------------------------------------------------------------------

    def feed(self, line: bytes) -> None:
        self.lines += 1
        try:
            rec = accesslog.parse(line)
        except ValueError:
            self.malformed += 1
            return
        host, raw, path, ts, method = rec.host, rec.raw_uri, rec.raw_path, rec.ts, rec.method
        # A virtual-hosted bucket's "/" is S3's (a listing), not our page.
        if is_internal(path) and (path != "/" or self.addressing.bucket_for_host(host) is None):
            self.internal_requests += 1
            return
        ts = min(ts, time.time() + 60)  # a clock far ahead must not push the whole hour out of the window
        self.last_ts = max(self.last_ts, ts)
        x_cache = rec.x_cache()
        result = x_cache[0].lower() if x_cache and isinstance(x_cache[0], str) else "other"
        if result not in RESULTS:
            result = "other"
        method_label = method if method in ("GET", "HEAD") else "other"
        minute = self._minute(ts)
        buckets = [self.total] + ([minute] if minute is not None else [])
        for b in buckets:
            b.requests[(result, method_label)] += 1
        if result == "hit":
            for b in buckets:
                b.cache_bytes += rec.size
            self._count_top((host, path), rec.size)
        elif result == "miss" and method == "GET":
            if rec.status == 200:  # streamed through the sidecar: Caddy counted the bytes
                for b in buckets:
                    b.streamed_bytes += rec.size
            elif 300 <= rec.status < 400:
                range_spec = rec.request_header("Range")
                self._redirected(host, raw, ts, range_spec)

    def _minute(self, ts: float) -> Bucket | None:
        m = int(ts // 60)
        newest = int(self.last_ts // 60)
        if m <= newest - WINDOW_MINUTES:
            return None
        if m not in self.minutes:
            self.minutes[m] = Bucket()
            for old in [k for k in self.minutes if k <= newest - WINDOW_MINUTES]:
                del self.minutes[old]
        return self.minutes[m]

    def _parse(self, host: str, raw: str) -> ParsedURI | None:
        try:
            # The one reading of a request (s3cache.addressing): Host, host-in-path or path-style.
            return self.addressing.resolve(host, raw).parsed
        except (BadRequest, ValueError):
            return None

    def _count_top(self, where: tuple[str, str], size: int) -> None:
        entry = self.top.get(where)
        if entry is None:
            if len(self.top) >= self.top_capacity:
                keep = sorted(self.top.items(), key=lambda kv: kv[1][0], reverse=True)[: self.top_capacity // 2]
                self.top = dict(keep)
                self.top_exact = False
            entry = self.top[where] = [0, 0]
        entry[0] += size
        entry[1] += 1

    # -- redirect sizes ---------------------------------------------------------------------

    def _redirected(self, host: str, raw: str, ts: float, range_spec: str | None) -> None:
        parsed = self._parse(host, raw)
        # A version, a part, an ACL ...: not the cached bytes, so the cache cannot tell their size.
        cacheable = parsed is not None and parsed.key and not parsed.subresources and not parsed.literal_plus
        ref = parsed.ref if cacheable else None
        if ref is None or self.pending_count >= MAX_PENDING:
            self._unknown(ts)
            return
        self.pending.setdefault(ref, []).append(_Pending(ts, range_spec))
        self.pending_count += 1
        self.resolve([ref], now=ts)

    def resolve(self, refs: Iterable[ObjectRef] | None = None, *, now: float) -> None:
        """Size the pending redirects whose objects are cached now; give up on the old ones."""
        for ref in list(self.pending if refs is None else refs):
            waiting = self.pending.get(ref)
            if not waiting:
                continue
            try:
                size = os.stat(self.layout.object_path(ref)).st_size
            except (OSError, ValueError):
                size = None
            if size is not None:
                for p in waiting:
                    n = range_length(p.range_spec, size)
                    for b in self._buckets_at(p.ts):
                        b.redirect_bytes += n
                        b.redirects_sized += 1
                self.pending_count -= len(waiting)
                del self.pending[ref]
                continue
            stale = [p for p in waiting if now - p.ts > PENDING_SECONDS]
            if stale:
                for p in stale:
                    self._unknown(p.ts)
                waiting[:] = [p for p in waiting if now - p.ts <= PENDING_SECONDS]
                self.pending_count -= len(stale)
                if not waiting:
                    del self.pending[ref]

    def _unknown(self, ts: float) -> None:
        for b in self._buckets_at(ts):
            b.redirects_unknown += 1

    def _buckets_at(self, ts: float) -> list[Bucket]:
        minute = self.minutes.get(int(ts // 60))
        return [self.total] + ([minute] if minute is not None else [])

    # -- views ------------------------------------------------------------------------------

    def last_hour(self, now: float) -> Bucket:
        out = Bucket()
        first = int(now // 60) - WINDOW_MINUTES + 1
        for m, b in self.minutes.items():
            if m >= first:
                out.add(b)
        return out

    def series(self, now: float) -> list[tuple[int, Bucket]]:
        """(minute start, bucket) for each of the last WINDOW_MINUTES minutes, oldest first; empty ones too."""
        last = int(now // 60)
        return [(m * 60, self.minutes.get(m) or Bucket()) for m in range(last - WINDOW_MINUTES + 1, last + 1)]

    def top_objects(self, n: int = 10) -> list[dict]:
        # Spellings of one key (%41 and A) are merged among the leaders; enough of them to fill n.
        leaders = sorted(self.top.items(), key=lambda kv: -kv[1][0])[: 4 * n]
        merged: dict[str, list[int]] = {}
        for (host, path), (b, h) in leaders:
            parsed = self._parse(host, path)
            name = parsed.ref.name if parsed is not None and parsed.key else path
            entry = merged.setdefault(name, [0, 0])
            entry[0] += b
            entry[1] += h
        best = sorted(merged.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]
        return [{"object": name, "bytes": b, "hits": h} for name, (b, h) in best]

