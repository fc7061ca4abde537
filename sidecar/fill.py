"""Background fills: fetch one object from S3 into the cache, at most once at a time.

The protocol, shared with the evictor through ``s3cache.layout``:

1. ``tmp/<sha256>.part`` is opened and ``flock``-ed (non-blocking).  The lock is
   the only "a fill is running" marker: the kernel drops it when the process
   dies, so nothing can go stale.  Whoever fails to get it leaves the fill to
   the holder, in this process or another.
2. The body streams into that temp file (same filesystem as ``objects/``,
   outside the served tree), every write checked (a short write at ENOSPC is
   a failure, not a shorter file).  Only a ``200`` whose length equals
   ``Content-Length`` and, for a plain-MD5 ETag, whose MD5 matches, is kept,
   and only once the file on disk holds exactly that many bytes.
3. The object is renamed into ``objects/`` atomically (Caddy sees either
   nothing or the whole file), then its metadata is written to ``meta/``
   (s3cache/metadata.py).  The renamed name is a second hard link of the temp
   file, so the temp path (and with it the lock) stays until the metadata and
   marks are in place: a purge (``s3cache.entries``) waiting on the lock never
   sees an object without its metadata.  The change in size (bytes, and a
   file for a new object) is counted in ``s3cache.ledger`` as the object goes in;
   a fill that would cross the cap or the disk's high watermark removes the
   evictor's next victims first (``s3cache.victims``), and is not cached only
   when they are not room enough.

The request to S3 goes through ``sidecar.upstream`` (the target byte for byte,
as the client sent it), and the whole fetch has a deadline derived from its
length and S3CACHE_FILL_MIN_RATE.

Anything else (non-200, truncation, mismatch, timeout, a kill) leaves nothing
that is ever served; a dead fill's temp file is reused by the next fill and
swept by the evictor.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import io
import queue
import logging
import os
import threading
import time
import weakref
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import http.client

import urllib3

from s3cache import entries, grants, metadata, objectlock
from s3cache.httpdate import parse_http_date
from s3cache.layout import MARK_KINDS, Layout, ObjectRef
from s3cache.config import Config
from s3cache.ledger import CacheSize, OverCap
from s3cache.victims import Victims
from s3cache.redact import redact
from s3cache.usage import FsUsage, UsageFn, statvfs_usage
from sidecar import cors, hit_headers
from sidecar.upstream import READ_ERRORS, Unreachable, Unsendable, Upstream, UpstreamError, is_timeout

log = logging.getLogger("sidecar.fill")

CHUNK = 1 << 20
# Misses waiting for a worker beyond this are not queued (the client was
# redirected anyway; a later miss will try again).
MAX_PENDING = 1024
QUEUE_WARNING_INTERVAL = 10.0
# S3 error documents are small; a non-200 relayed to a streamed miss is never read past this.
MAX_RELAYED_BODY = 64 * 1024
# Bytes/s a fill must average (S3CACHE_FILL_MIN_RATE's default): see Filler.deadline.
DEFAULT_MIN_RATE = 64 * 1024


class FillFailed(Exception):
    """The fetched response must not be cached; the message says why (a metrics label)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# The headers of a request to S3, made as it goes out: (method, url) -> headers.
Signing = Callable[[str, str], Mapping[str, str]]


@dataclass(frozen=True)
class FillResult:
    outcome: str  # "filled", "cached" (already there), "busy" (another fill holds it), "failed"
    reason: str = ""
    bytes: int = 0
    seconds: float = 0.0


def _plain_md5_etag(etag: str | None) -> str | None:
    value = (etag or "").strip().strip('"').lower()
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


class _FillLock:
    """The object's lock (s3cache.objectlock); ``None`` from ``acquire`` means another holder has it."""

    @staticmethod
    def acquire(path: str) -> int | None:
        try:
            return objectlock.try_lock(path)
        except objectlock.LockLost as exc:
            raise FillFailed("lock", "temp file kept changing under us") from exc


def _makedirs(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FillFailed("conflict", "a parent of the key is a cached object") from None


def _rename_into(src: str, dst: str) -> None:
    # The evictor may remove an empty parent directory between our makedirs
    # and the rename; recreate it and try again.
    for _ in range(5):
        try:
            _makedirs(os.path.dirname(dst))
        except FileNotFoundError:  # a parent removed mid-makedirs: try again
            continue
        if os.path.isdir(dst):
            raise FillFailed("conflict", "the key is a directory of other cached keys")
        try:
            os.rename(src, dst)
            return
        except FileNotFoundError:
            continue
        except (IsADirectoryError, NotADirectoryError):
            raise FillFailed("conflict", "the key clashes with another cached key") from None
    raise FillFailed("conflict", "parent directory kept disappearing")


class Filler:
    """A bounded pool of fill workers, one fill per object at a time."""

    def __init__(self, layout: Layout, *, workers: int, timeout: float, max_object_bytes: int | None,
                 upstream: Upstream | None = None, min_rate: float = DEFAULT_MIN_RATE, cap: int | None = None,
                 disk_high: float | None = None, disk_usage: UsageFn | None = None):
        self.layout = layout
        # The most the cache may hold after a fill (S3CACHE_MAX_BYTES), kept in run/cache-bytes between
        # passes: a fill that would cross it makes room from the next victims, or is not cached.
        self.cap = cap
        # The disk's own high watermark (S3CACHE_EVICT_HIGH %): a fill that would take the filesystem
        # above it is not cached either, so between passes the disk fills no further than the cap would.
        self.disk_high = disk_high
        self.disk_usage = disk_usage or statvfs_usage(layout.root)
        self.ledger = CacheSize(layout.cache_bytes_file)
        # The evictor's next victims: what a fill over either limit removes first, rather than be refused.
        self.victims = Victims(layout)
        self.timeout = timeout
        self.max_object_bytes = max_object_bytes
        self.min_rate = min_rate  # bytes/s a fill must average (S3CACHE_FILL_MIN_RATE)
        self.upstream = upstream or Upstream()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fill")
        self._lock = threading.Lock()
        self._pending: set[ObjectRef] = set()
        self.in_progress = 0
        self.outcomes: Counter[str] = Counter()  # "filled", "failed:<reason>", "busy", ...
        self.bytes_filled = 0
        self.durations: list[float] = []
        self._last_queue_warning = float("-inf")
        self._dropped_since_warning = 0  # bounded; for the fill-duration histogram
        # The latest fill the disk refused (ENOSPC, EIO, read-only ...), until a fill succeeds: health reports it.
        self.disk_failure: DiskFailure | None = None

    @classmethod
    def from_config(cls, config: "Config", layout: Layout, upstream: Upstream | None = None) -> "Filler":
        return cls(layout, workers=config.fill_workers, timeout=config.fill_timeout,
                   max_object_bytes=config.max_object_bytes, upstream=upstream,
                   min_rate=config.fill_min_rate, cap=config.max_bytes,
                   disk_high=config.evict_high)

    def running(self, delta: int) -> None:
        """Fills a request worker runs itself (refreshes) count here too (``sidecar.backchannel``)."""
        with self._lock:
            self.in_progress += delta

    # -- scheduling -----------------------------------------------------------------

    def submit(self, ref: ObjectRef, url: str, sign: "Signing | None" = None) -> bool:
        """Queue a fill unless one for ``ref`` is already queued here; False if not queued."""
        with self._lock:
            if ref in self._pending:
                return False
            if len(self._pending) >= MAX_PENDING:
                self.outcomes["dropped:queue-full"] += 1
                self._warn_queue_full(ref)
                return False
            self._pending.add(ref)
        self._pool.submit(self._run, ref, url, None, sign)
        return True

    def pending(self, ref: ObjectRef) -> bool:
        """Whether a fill of ``ref`` is queued or running here."""
        with self._lock:
            return ref in self._pending

    def _warn_queue_full(self, ref: ObjectRef) -> None:
        # Under a flood of misses this would be one line per request: say it once per interval.
        now = time.monotonic()
        self._dropped_since_warning += 1
        if now - self._last_queue_warning >= QUEUE_WARNING_INTERVAL:
            log.warning("fill queue full (%d waiting): %d misses not queued since the last warning (latest %s)",
                        MAX_PENDING, self._dropped_since_warning, ref.name)
            self._last_queue_warning = now
            self._dropped_since_warning = 0

    def refresh(self, ref: ObjectRef, url: str, response: urllib3.BaseHTTPResponse) -> bool:
        """Replace a stale entry with the body of ``response`` (an open 200), in the background.

        Returns False (and the caller closes the response) when a fill of ``ref`` is already queued.
        """
        with self._lock:
            if ref in self._pending or len(self._pending) >= MAX_PENDING:
                return False
            self._pending.add(ref)
        self._pool.submit(self._run, ref, url, response)
        return True

    def _run(self, ref: ObjectRef, url: str, response: urllib3.BaseHTTPResponse | None = None,
             sign: "Signing | None" = None) -> None:
        with self._lock:
            self.in_progress += 1
        try:
            result = self.fill(ref, url, response=response, sign=sign)
        except Exception:  # a bug must not kill the worker thread silently
            log.exception("fill of %s crashed", ref.name)
            result = FillResult("failed", "internal")
        finally:
            with self._lock:
                self.in_progress -= 1
                self._pending.discard(ref)
        self._record(result)

    def _record(self, result: FillResult) -> None:
        with self._lock:
            key = result.outcome if result.outcome != "failed" else f"failed:{result.reason}"
            self.outcomes[key] += 1
            if result.outcome == "filled":
                self.disk_failure = None
                self.bytes_filled += result.bytes
                self.durations.append(result.seconds)
                del self.durations[:-10000]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def state(self) -> tuple[int, "DiskFailure | None"]:
        """(fills running, the disk failure health reports): what ``sidecar.health`` needs."""
        with self._lock:
            return self.in_progress, self.disk_failure

    def stats(self) -> dict:
        """A consistent copy of the counters, for the status page and metrics (sidecar.collector)."""
        with self._lock:
            return {"in_progress": self.in_progress, "outcomes": dict(self.outcomes),
                    "bytes_filled": self.bytes_filled, "durations": list(self.durations)}

    # -- one fill ---------------------------------------------------------------------

    def fill(self, ref: ObjectRef, url: str, response: urllib3.BaseHTTPResponse | None = None,
             sign: "Signing | None" = None) -> FillResult:
        """Fetch ``url`` into the cache entry for ``ref``; synchronous.

        With ``response`` (an open 200 for ``url``), its body replaces whatever
        is cached: that is how a stale entry is refreshed without a second fetch.
        ``sign``: the headers to send, made when the request goes out (the
        proxy's own signature, for SDK clients: ``sidecar.sdk``).
        """
        try:
            return self._fill(ref, url, response, sign)
        finally:
            if response is not None:
                response.close()

    def _fill(self, ref: ObjectRef, url: str, response: urllib3.BaseHTTPResponse | None,
              sign: "Signing | None" = None) -> FillResult:
        started = time.monotonic()
        replace = response is not None
        final = str(self.layout.object_path(ref))
        if not replace and os.path.isfile(final):
            return FillResult("cached")
        tmp = str(self.layout.temp_path(ref))
        try:
            fd = _FillLock.acquire(tmp)
        except OSError as exc:  # cannot even create the temp file: the disk's failure
            return self._failed(ref, FillFailed(_disk_reason(exc), f"temp file: {exc.strerror}"), tmp=None)
        except FillFailed as exc:
            return self._failed(ref, exc, tmp=None)
        if fd is None:
            return FillResult("busy")
        resp = response
        try:
            if not replace and os.path.isfile(final):  # finished by another fill since our first look
                os.unlink(tmp)
                return FillResult("cached")
            os.ftruncate(fd, 0)
            if resp is None:
                resp = self._get(url, sign=sign)
            expected, md5 = self._check(resp)
            out = _CacheFile(fd, expected, md5)
            try:
                self._receive(resp, out, started)
                out.finish()
            except FillFailed as exc:
                exc.needed = expected
                raise
            # What the URL's response-* parameters overrode is S3's answer to that URL, not the object's.
            headers = hit_headers.object_headers(_lower_headers(resp), url.partition("?")[2])
            self._commit(ref, fd, tmp, final, headers, replace)
            seconds = time.monotonic() - started
            log.info("filled %s (%d bytes in %.2fs)", ref.name, expected, seconds)
            return FillResult("filled", bytes=expected, seconds=seconds)
        except FILL_ERRORS as exc:
            return self._failed(ref, exc, tmp)  # we still hold the lock, so tmp is ours to remove
        except BaseException:
            _unlink_quietly(tmp)
            raise
        finally:
            if resp is not None and resp is not response:
                resp.close()
            os.close(fd)  # releases the flock

    def _failed(self, ref: ObjectRef, exc: BaseException, tmp: str | None) -> FillResult:
        if tmp is not None:
            _unlink_quietly(tmp)
        reason = _failure_reason(exc)
        # The cap refusing a fill is the cache working as configured (until the next pass makes room), not trouble.
        (log.info if reason in ("over-cap", "over-disk") else log.warning)("not caching %s: %s", ref.name, _describe(reason, exc))
        disk = None
        if reason in DISK_REASONS:
            disk = DiskFailure(reason, _describe(reason, exc), getattr(exc, "needed", 0), time.time())
        if disk is not None:  # the outcome itself is counted by _run (or warm's caller)
            self._disk_failed(disk)
        return FillResult("failed", reason)

    def _disk_failed(self, disk: "DiskFailure") -> None:
        with self._lock:
            self.disk_failure = disk

    # -- one miss streamed to the client while it is cached (S3CACHE_MISS=stream) ---------

    def stream(self, ref: ObjectRef, url: str, origin: dict[str, str] | None = None,
               sign: "Signing | None" = None) -> "StreamedMiss | None":
        """Fetch ``url`` once for both the client and the cache; None: redirect instead.

        ``origin``: the client's Origin header, sent along so that S3's answer
        carries the Access-Control-* headers S3 would send this client (relayed).

        None when another fill of ``ref`` holds the lock (its bytes cannot be
        teed), the object arrived meanwhile, or S3 cannot be asked.  A non-200
        from S3 is relayed as is (status, Location, body); a 200 that cannot
        be cached (too large, SSE-C, ...) is still streamed, just not kept.
        """
        final = str(self.layout.object_path(ref))
        tmp = str(self.layout.temp_path(ref))
        try:
            fd = _FillLock.acquire(tmp)
        except (OSError, FillFailed) as exc:  # no temp file: redirect, and the client asks S3 itself
            log.warning("cannot stream %s: temp file: %s", ref.name, exc)
            return None
        if fd is None:
            return None
        resp = None
        try:
            if os.path.isfile(final):
                os.unlink(tmp)
                os.close(fd)
                return None
            os.ftruncate(fd, 0)
            resp = self._get(url, origin, sign)
            s3_cors = cors.from_s3(resp.headers)
            if resp.status == 200:
                headers = _lower_headers(resp)
                try:
                    plan = self._check(resp)
                except FillFailed as exc:
                    log.info("streaming %s uncached: %s", ref.name, exc)
                    self._record(FillResult("failed", exc.reason))  # counted as a redirect's fill would be
                    plan = None
                body = _StreamBody(self, ref, resp, fd, tmp, final,
                                   hit_headers.object_headers(headers, url.partition("?")[2]), plan)
                return StreamedMiss(200, {**_client_headers(headers), **s3_cors}, body)
            status = resp.status
            relayed = resp.read(MAX_RELAYED_BODY + 1, decode_content=False)
            headers = _relayed_headers(_lower_headers(resp))
            if len(relayed) > MAX_RELAYED_BODY:  # not an S3 error document: relay what we have, unsized
                relayed = relayed[:MAX_RELAYED_BODY]
                headers.pop("Content-Length", None)
            else:
                headers["Content-Length"] = str(len(relayed))
            resp.close()
            _unlink_quietly(tmp)
            os.close(fd)
            self._record(FillResult("failed", f"status-{status}"))
            return StreamedMiss(status, {**headers, **s3_cors}, [relayed])
        except FILL_ERRORS as exc:
            if resp is not None:
                resp.close()
            _unlink_quietly(tmp)
            os.close(fd)
            log.warning("cannot stream %s: %s", ref.name, _describe(_failure_reason(exc), exc))
            return None

    # -- the steps every fill shares ----------------------------------------------------

    def _get(self, url: str, origin: dict[str, str] | None = None, sign: "Signing | None" = None) -> urllib3.BaseHTTPResponse:
        headers = dict(origin) if origin else None
        if sign is not None:
            try:
                headers = {**(headers or {}), **sign("GET", url)}
            except Exception as exc:  # noqa: BLE001 -- credentials that failed to refresh: S3 cannot be asked
                raise Unreachable(f"cannot sign the request: {type(exc).__name__}") from exc
        return self.upstream.request("GET", url, headers=headers, connect_timeout=self.timeout,
                                     read_timeout=self.timeout)

    def _disk_would_cross(self, size: int, room: int = 0) -> bool:
        """Whether ``size`` more bytes would take the filesystem above ``disk_high`` even with ``room`` allocated
        bytes freed first (the evictor's next victims); recorded as a refusal if so.

        Asked once per fill, before its body is fetched: fills running together may overshoot by what
        they hold between them, as other writers to the disk may; the commit makes room for what it
        finds (``_disk_excess``), the next pass for the rest.
        """
        if self.disk_high is None:
            return False
        try:
            fs = self.disk_usage()
        except OSError:
            return False  # the write itself will say what is wrong with the disk
        if FsUsage(used=fs.used + size - room, avail=fs.avail - size + room).percent <= self.disk_high:
            return False
        try:
            self.ledger.refuse(size)
        except OSError:
            pass  # a full disk may refuse the ledger too; the next scheduled pass still comes
        return True

    def _disk_excess(self) -> int:
        """Allocated bytes the filesystem holds above ``disk_high`` now (a finished fill's body included)."""
        if self.disk_high is None:
            return 0
        try:
            fs = self.disk_usage()
        except OSError:
            return 0
        return max(0, fs.used - int(fs.capacity * self.disk_high / 100.0))

    def _check(self, resp: urllib3.BaseHTTPResponse) -> tuple[int, str | None]:
        """(expected length, expected MD5 or None) of a response we may cache; FillFailed if not."""
        if resp.status != 200:
            raise FillFailed(f"status-{resp.status}")
        headers = _lower_headers(resp)
        length = headers.get("content-length", "")
        if not length.isdigit():
            raise FillFailed("no-length", "response has no Content-Length")
        expected = int(length)
        if self.max_object_bytes is not None and expected > self.max_object_bytes:
            raise FillFailed("too-large", f"{expected} > S3CACHE_MAX_OBJECT_BYTES")
        # Before the body is read: a fill either limit would refuse at commit is not worth its egress.
        room = self.victims.available()
        if self.cap is not None:
            if self.ledger.would_refuse(expected, self.cap, room.size):
                raise FillFailed("over-cap", f"{expected} more bytes would cross S3CACHE_MAX_BYTES ({self.cap})")
        if self._disk_would_cross(expected, room.alloc):
            raise FillFailed("over-disk", f"{expected} more bytes would take the disk above "
                                          f"S3CACHE_EVICT_HIGH ({self.disk_high:g}%)")
        if "x-amz-server-side-encryption-customer-algorithm" in headers:
            raise FillFailed("sse-c", "customer-key encrypted objects are not cached")
        # SSE-KMS ETags are not the MD5 of the body.
        md5_expected = None if "aws:kms" in headers.get("x-amz-server-side-encryption", "") \
            else _plain_md5_etag(headers.get("etag"))
        return expected, md5_expected

    def deadline(self, started: float, expected: int) -> float:
        """When a fetch of ``expected`` bytes started at ``started`` (monotonic) must be done.

        One S3CACHE_FILL_TIMEOUT of slack plus the time the body takes at
        S3CACHE_FILL_MIN_RATE: a large object gets all the time it needs at a
        sane rate, a dripping origin cannot hold a worker for ever.
        """
        return started + self.timeout + expected / self.min_rate

    def _read_body(self, resp: urllib3.BaseHTTPResponse, expected: int, started: float) -> Iterator[bytes]:
        """S3's body as it arrives, exactly ``expected`` bytes in all, before the deadline; FillFailed if not."""
        deadline = self.deadline(started, expected)
        size = 0
        while True:
            # decode_content=False: cache the bytes S3 stored, gzip or not.
            chunk = resp.read1(CHUNK, decode_content=False)
            if not chunk:
                break
            size += len(chunk)
            if size > expected:
                raise FillFailed("length-mismatch", "more bytes than Content-Length")
            yield chunk
            if size < expected and time.monotonic() > deadline:
                raise FillFailed("too-slow", f"{size} of {expected} bytes after {time.monotonic() - started:.0f}s "
                                             f"(S3CACHE_FILL_MIN_RATE {self.min_rate:g} B/s)")
        if size != expected:
            raise FillFailed("truncated", f"{size} of {expected} bytes")

    def _receive(self, resp: urllib3.BaseHTTPResponse, out: "_CacheFile", started: float) -> None:
        """S3's body into ``out``: exactly ``out.expected`` bytes, before the deadline; FillFailed if not.

        Where the response allows it, each read goes from the socket straight
        into one of ``out``'s buffers (one copy, no new object per read), and
        that same buffer is written and hashed.  Otherwise chunk by chunk.
        """
        body = _raw_body(resp, out.expected)
        if body is None:
            for chunk in self._read_body(resp, out.expected, started):
                out.write(chunk)
            return
        deadline = self.deadline(started, out.expected)
        while out.size < out.expected:
            buffer = out.buffer()
            view = memoryview(buffer)[:out.expected - out.size]
            try:
                n = body.readinto1(view)  # one read from the socket, as read1 does
            except (TimeoutError, http.client.HTTPException):
                raise
            except OSError as exc:  # a reset, a TLS error: what urllib3 calls a broken connection
                raise FillFailed("truncated", f"connection cut after {out.size} of {out.expected} bytes: "
                                              f"{type(exc).__name__}") from exc
            finally:
                view.release()
            if not n:
                raise FillFailed("truncated", f"{out.size} of {out.expected} bytes")
            out.write_buffer(buffer, n)
            if out.size < out.expected and time.monotonic() > deadline:
                raise FillFailed("too-slow", f"{out.size} of {out.expected} bytes after "
                                             f"{time.monotonic() - started:.0f}s (S3CACHE_FILL_MIN_RATE {self.min_rate:g} B/s)")

    def _commit(self, ref: ObjectRef, fd: int, tmp: str, final: str, headers: dict[str, str], replace: bool) -> None:
        last_modified = parse_http_date(headers.get("last-modified"))
        now = time.time()
        os.utime(fd, (now, last_modified or now))
        if replace:
            # Old metadata goes first: a revalidation racing this swap then
            # falls back to If-Modified-Since and sees a change, never an
            # old body under the new ETag.
            metadata.forget(self.layout, ref)
        size = os.fstat(fd).st_size
        try:
            old_size = os.lstat(final).st_size
        except OSError:
            old_size = None
        # A refresh replaces bytes counted already; a new object must fit under the cap.
        delta = size - (old_size or 0)
        limit = None if replace else self.cap
        try:
            # Checked, installed and counted under the ledger's lock: a burst of fills cannot overshoot,
            # and a pass never reads a total that lacks an object already in place.
            # Over either limit, the evictor's next victims go first (s3cache.victims).
            with self.ledger.adding(delta, limit, files=0 if old_size is not None else 1,
                                    make_room=self.victims.take, disk_excess=self._disk_excess()):
                # The object's mark goes in before the object, so that no open-mode hit serves it without
                # its headers; marks of another kind (a replaced object's) go after.
                kind = hit_headers.mark_kind(ref.key, headers)
                if kind is not None:
                    self._mark(ref, kind)
                linked = self._publish(ref, tmp, final)
        except OverCap:
            raise FillFailed("over-cap", f"{size} bytes would cross S3CACHE_MAX_BYTES ({self.cap})") from None
        # After the new file is in place: a grant made for the old one either goes here or is withdrawn by its
        # writer, which looks at the file again (s3cache.grants.record).
        grants.remove(self.layout, ref)
        for other in MARK_KINDS:
            if other != kind:
                self._unmark(ref, other)
        self._write_meta(ref, headers, size)
        if linked:
            _unlink_quietly(tmp)  # still ours: nobody unlinks a locked temp path; the caller's close unlocks

    def _publish(self, ref: ObjectRef, tmp: str, final: str) -> bool:
        """Put the finished temp file in place as ``final``; True if the temp path still names it (and so the lock).

        A second hard link is renamed into place (atomically replacing any old
        object), so the locked temp path stays until the whole entry is
        written.  Where the filesystem has no hard links, a plain rename.
        """
        link = str(self.layout.link_temp_path(ref))
        _unlink_quietly(link)  # a dead fill's
        try:
            os.link(tmp, link)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            _rename_into(tmp, final)
            return False
        try:
            _rename_into(link, final)
        except BaseException:
            _unlink_quietly(link)
            raise
        return True

    def _unmark(self, ref: ObjectRef, kind: str) -> None:
        try:
            _unlink_quietly(str(self.layout.mark_path(ref, kind)))
        except OSError as exc:  # a stale directory of orphaned marks: swept by the evictor
            log.warning("could not remove the %s mark of %s: %s", kind, ref.name, exc)

    def _mark(self, ref: ObjectRef, kind: str) -> None:
        """Create the mark that tells Caddy's open-mode hits what file_server alone gets wrong."""
        path = str(self.layout.mark_path(ref, kind))
        for _ in range(5):  # the evictor may prune an empty parent between makedirs and open
            _makedirs(os.path.dirname(path))
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
                os.utime(path)  # young again: the evictor's orphan sweep leaves a mark it finds young
                return
            except FileNotFoundError:
                continue
            except (IsADirectoryError, NotADirectoryError):
                raise FillFailed("conflict", "the key clashes with another cached key") from None
        raise FillFailed("conflict", "parent directory kept disappearing")

    def _write_meta(self, ref: ObjectRef, headers: dict[str, str], size: int) -> None:
        """Best effort: an object without metadata is still served and revalidated (by mtime)."""
        try:
            metadata.write_fill(self.layout, ref, headers, size, install=_rename_into)
        except (OSError, FillFailed) as exc:
            log.warning("cached %s without metadata: %s", ref.name, exc)


# What a fetch can fail with: ours, the upstream's (sending), reading the body
# (a connection cut mid-body, a timeout) and the disk's (OSError).
FILL_ERRORS = (FillFailed, UpstreamError) + READ_ERRORS
# Failures that are the cache disk's, not S3's: health reports them.
DISK_REASONS = ("disk-full", "disk-error")


@dataclass(frozen=True)
class DiskFailure:
    reason: str       # one of DISK_REASONS
    detail: str
    needed: int       # bytes the failed fill needed (0: unknown)
    at: float         # time.time()


@dataclass(frozen=True)
class StreamedMiss:
    status: int
    headers: dict[str, str]
    body: Iterable[bytes]


class _BackgroundMD5:
    """MD5 of the chunks handed to ``update``, computed on a thread of its own.

    hashlib releases the GIL while it hashes a large buffer, as the socket read
    and the file write do: on a second core the hash of one chunk runs while
    the next is read and written, instead of after it (bench/miss_path.py:
    a fill with an MD5 ETag against one without).  Either immutable bytes
    (``update``: at most QUEUED wait, so a slow hash slows the fill rather
    than filling memory), or a view of a buffer the caller reuses only once
    the hash has read it (``update_shared``: the caller's buffers are the bound).
    The thread ends with ``hexdigest``, or when this object is dropped (a failed
    fill): it never holds a reference to it.
    """

    QUEUED = 8

    def __init__(self):
        self._md5 = hashlib.md5()
        self._chunks: queue.SimpleQueue = queue.SimpleQueue()
        self._room = threading.BoundedSemaphore(self.QUEUED)
        self._thread = threading.Thread(target=self._run, args=(self._md5, self._chunks),
                                        name="fill-md5", daemon=True)
        self._thread.start()
        weakref.finalize(self, self._chunks.put, None)
        self._hex: str | None = None

    @staticmethod
    def _run(md5, chunks: queue.SimpleQueue) -> None:
        while (item := chunks.get()) is not None:
            md5.update(item[0])
            item[1]()
            del item  # not kept while waiting for the next: its buffer may be the caller's

    def update(self, chunk: bytes) -> None:
        self._room.acquire()
        self._chunks.put((bytes(chunk), self._room.release))

    def update_shared(self, view: memoryview, hashed: Callable[[], None]) -> None:
        """Hash ``view``, then call ``hashed`` (on the hash thread): until then its buffer must not change."""
        self._chunks.put((view, hashed))

    def hexdigest(self) -> str:
        if self._hex is None:
            self._chunks.put(None)
            self._thread.join()
            self._hex = self._md5.hexdigest()
        return self._hex


class _CacheFile:
    """The temp file a fill writes: every byte checked in, MD5 and size checked before it is kept.

    An unbuffered write may write fewer bytes than asked near ENOSPC without
    raising; only the count it returns tells.  So each write loops on the
    count, and the file's size on disk is checked after the fsync.

    Bytes come either as chunks (``write``) or read straight into one of this
    file's own buffers (``buffer``, then ``write_buffer``): one buffer without
    an MD5 to check; with one, BUFFERS in turn, so the socket fills the next
    while the hash thread reads the ones before it, and a buffer is reused
    only once hashed.  Writeback of what is written starts every
    WRITEBACK_BYTES (``_start_writeback``), so the disk works while the
    network does and the fsync before the rename waits only for the tail.
    """

    BUFFERS = 8
    WRITEBACK_BYTES = 8 * CHUNK

    def __init__(self, fd: int, expected: int, md5_expected: str | None):
        self.fd, self.expected, self.md5_expected = fd, expected, md5_expected
        self.digest = _BackgroundMD5() if md5_expected else None
        self.size = 0
        self._written_back = 0  # bytes whose writeback has been started
        self._free: queue.SimpleQueue | None = None  # buffers the hash thread is done with
        self._buffers = 0

    def buffer(self) -> bytearray:
        """A buffer to read the next bytes into (waits for the hash thread to give one back)."""
        if self._free is None:
            self._free = queue.SimpleQueue()
        if self._buffers < (self.BUFFERS if self.digest else 1) and self._free.empty():
            self._buffers += 1
            return bytearray(min(CHUNK, self.expected))
        return self._free.get()

    def write_buffer(self, buffer: bytearray, n: int) -> None:
        """Write (and hash) the first ``n`` bytes of ``buffer``, a buffer from ``buffer()``."""
        view = memoryview(buffer)[:n]
        if self.digest:
            # Hashed while it is written: both only read it.  The write's outcome decides the fill either way.
            self.digest.update_shared(view, functools.partial(self._free.put, buffer))
        try:
            self._write(view)
        finally:
            if not self.digest:
                view.release()
                self._free.put(buffer)

    def write(self, chunk: bytes) -> None:
        self._write(memoryview(chunk))
        if self.digest:
            self.digest.update(chunk)

    def _write(self, data: memoryview) -> None:
        view = data
        try:
            while view:
                n = os.write(self.fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "no byte written")
                view = view[n:]
        except OSError as exc:
            raise FillFailed(_disk_reason(exc), f"writing the temp file: {exc.strerror or exc}") from None
        self.size += len(data)
        if self.size - self._written_back >= self.WRITEBACK_BYTES:
            _start_writeback(self.fd, self._written_back, self.size - self._written_back)
            self._written_back = self.size

    def finish(self) -> None:
        if self.size != self.expected:
            raise FillFailed("truncated", f"{self.size} of {self.expected} bytes")
        if self.digest and self.digest.hexdigest() != self.md5_expected:
            raise FillFailed("md5-mismatch", "body does not match the ETag")
        try:
            os.fsync(self.fd)
            on_disk = os.fstat(self.fd).st_size
        except OSError as exc:
            raise FillFailed(_disk_reason(exc), f"syncing the temp file: {exc.strerror or exc}") from None
        if on_disk != self.expected:
            raise FillFailed("disk-error", f"temp file holds {on_disk} of {self.expected} bytes")


class _StreamBody:
    """The body of a streamed miss: S3's bytes to the client, and to the cache while the disk takes them.

    A failed cache write never cuts the client off: the client gets the
    whole object, the cache gets nothing.  ``close()`` (the server calls it,
    also when the client goes away, and even before the first chunk) releases
    the temp file, its lock and the upstream connection exactly once.
    """

    def __init__(self, filler: Filler, ref: ObjectRef, resp, fd: int, tmp: str, final: str,
                 headers: dict[str, str], plan: tuple[int, str | None] | None):
        self.filler, self.ref, self.resp, self.fd, self.tmp, self.final = filler, ref, resp, fd, tmp, final
        self.headers, self.plan = headers, plan
        self._committed = False
        self._tmp_gone = False  # unlinked early: the path may already be another fill's temp file
        self._closed = False
        self._gen: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        if self._gen is None:
            self._gen = self._chunks()
        return self._gen

    def _chunks(self) -> Iterator[bytes]:
        started = time.monotonic()
        if self.plan is None:  # stream only
            _unlink_quietly(self.tmp)
            self._tmp_gone = True
            try:
                while chunk := self.resp.read1(CHUNK, decode_content=False):
                    yield chunk
            except READ_ERRORS as exc:
                log.warning("streaming %s cut: %s", self.ref.name, _describe(_failure_reason(exc), exc))
            return
        expected, md5 = self.plan
        out: _CacheFile | None = _CacheFile(self.fd, expected, md5)
        write_failure: FillFailed | None = None
        try:
            for chunk in self.filler._read_body(self.resp, expected, started):
                if out is not None:
                    try:
                        out.write(chunk)
                    except FillFailed as exc:
                        write_failure, out = exc, None
                        _unlink_quietly(self.tmp)  # give the disk its space back at once
                        self._tmp_gone = True
                yield chunk
            if write_failure is not None:
                raise write_failure
            out.finish()
            self.filler._commit(self.ref, self.fd, self.tmp, self.final, self.headers, replace=False)
            self._committed = True
            seconds = time.monotonic() - started
            log.info("streamed and filled %s (%d bytes in %.2fs)", self.ref.name, expected, seconds)
            self.filler._record(FillResult("filled", bytes=expected, seconds=seconds))
        except FILL_ERRORS as exc:
            # The client has had what S3 sent; only the cache declines it.
            exc.needed = expected
            self.filler._record(self.filler._failed(self.ref, exc, None if self._tmp_gone else self.tmp))
            self._tmp_gone = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._gen is not None:
                self._gen.close()
        finally:
            if not self._committed and not self._tmp_gone:
                _unlink_quietly(self.tmp)
            os.close(self.fd)
            self.resp.close()


def _raw_body(resp, expected: int) -> "io.BufferedReader | None":
    """The buffered socket under ``resp`` to read its body from directly; None unless that is safe.

    Safe: an urllib3 response over http.client, nothing of the body read yet,
    and no framing between us and the bytes (a chunked body goes through
    http.client).  Reading past urllib3 skips its length bookkeeping, which
    no one needs: the caller reads exactly ``expected`` bytes, then closes
    the response (and its connection).
    """
    original = getattr(resp, "_fp", None)
    if not isinstance(original, http.client.HTTPResponse) or getattr(resp, "_fp_bytes_read", None) != 0:
        return None
    if original.chunked or original.length != expected or original.fp is None:
        return None
    return original.fp if isinstance(original.fp, io.BufferedReader) else None


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, don't wait


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing ``length`` bytes at ``offset`` to disk now, without waiting.

    Best effort: the fsync before the rename is what counts (and reports a
    disk error); this only makes it short.  A kernel that has not started the
    writeback by then keeps what it has cached until it must, and writes it
    all in the fsync, after the last byte has arrived.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _lower_headers(resp) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items()}


def _client_headers(headers: dict[str, str]) -> dict[str, str]:
    """S3's response headers worth passing to the client of a streamed miss."""
    keep = {k: v for k, v in headers.items() if metadata.kept(k) or k in ("content-length", "accept-ranges")}
    return {"-".join(p.capitalize() for p in k.split("-")) if not k.startswith("x-amz") else k: v
            for k, v in keep.items()}


def _relayed_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers of a non-200 S3 answer relayed to a streamed miss's client: its redirect and error
    document as S3 sent them (a region redirect is useless without its Location)."""
    relayed = _client_headers(headers)
    for name in ("location", "x-amz-bucket-region", "x-amz-request-id", "x-amz-id-2"):
        if name in headers:
            relayed[name.title() if name == "location" else name] = headers[name]
    return relayed


def _describe(reason: str, exc: BaseException) -> str:
    """The reason, then the detail unless it only repeats the reason; never a signature."""
    detail = redact(str(exc))
    return detail if detail == reason or detail.startswith(reason + ":") else f"{reason}: {detail}"


def _disk_reason(exc: OSError) -> str:
    return "disk-full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "disk-error"


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, FillFailed):
        return exc.reason
    if isinstance(exc, Unsendable):
        return "unsendable"
    if is_timeout(exc):
        return "timeout"
    if isinstance(exc, Unreachable):
        return "unreachable"
    if isinstance(exc, (urllib3.exceptions.ProtocolError, http.client.IncompleteRead)):
        return "truncated"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk-full"
    return "error"


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
