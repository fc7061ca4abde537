"""Background fills: fetch one object from S3 into the cache, at most once at a time.

The protocol, shared with the evictor through ``s3cache.layout``:

1. ``tmp/<sha256>.part`` is opened and ``flock``-ed (non-blocking).  The lock is
   the only "a fill is running" marker: the kernel drops it when the process
   dies, so nothing can go stale.  Whoever fails to get it leaves the fill to
   the holder, in this process or another.
2. The body streams into that temp file (same filesystem as ``objects/``,
   outside the served tree).  Only a ``200`` whose length equals
   ``Content-Length`` and, for a plain-MD5 ETag, whose MD5 matches, is kept.
3. The object is renamed into ``objects/`` atomically (Caddy sees either
   nothing or the whole file), then its metadata is written to ``meta/``.

Anything else (non-200, truncation, mismatch, timeout, a kill) leaves nothing
that is ever served; a dead fill's temp file is reused by the next fill and
swept by the evictor.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import requests
import urllib3

from s3cache.httpdate import parse_http_date
from s3cache.layout import MARK_KINDS, Layout, ObjectRef
from sidecar import hit_headers

log = logging.getLogger("sidecar.fill")

CHUNK = 1 << 20
# Misses waiting for a worker beyond this are not queued (the client was
# redirected anyway; a later miss will try again).
MAX_PENDING = 1024
QUEUE_WARNING_INTERVAL = 10.0

# Response headers worth keeping: what a hit should answer with (S3 fidelity).
# Only the object's own are stored: the fill leaves out what the URL's response-* overrode.
KEPT_HEADERS = (
    "content-type", "content-encoding", "content-disposition", "content-language",
    "cache-control", "expires", "etag", "last-modified", "x-amz-version-id",
    "x-amz-server-side-encryption", "x-amz-storage-class",
)


class FillFailed(Exception):
    """The fetched response must not be cached; the message says why (a metrics label)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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
    """The flock on the temp file; ``None`` from ``acquire`` means another fill holds it."""

    @staticmethod
    def acquire(path: str) -> int | None:
        # The evictor may unlink a dead fill's temp file between our open and
        # our flock; then we would hold a lock on an orphan inode.  Re-check
        # that the path still names the inode we locked, and retry if not.
        for _ in range(5):
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
        raise FillFailed("lock", "temp file kept changing under us")


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
                 session: requests.Session | None = None):
        self.layout = layout
        self.timeout = timeout
        self.max_object_bytes = max_object_bytes
        self.session = session or requests.Session()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fill")
        self._lock = threading.Lock()
        self._pending: set[ObjectRef] = set()
        self.in_progress = 0
        self.outcomes: Counter[str] = Counter()  # "filled", "failed:<reason>", "busy", ...
        self.bytes_filled = 0
        self.durations: list[float] = []
        self._last_queue_warning = float("-inf")
        self._dropped_since_warning = 0  # bounded; for the fill-duration histogram

    # -- scheduling -----------------------------------------------------------------

    def submit(self, ref: ObjectRef, url: str) -> bool:
        """Queue a fill unless one for ``ref`` is already queued here; False if not queued."""
        with self._lock:
            if ref in self._pending:
                return False
            if len(self._pending) >= MAX_PENDING:
                self.outcomes["dropped:queue-full"] += 1
                self._warn_queue_full(ref)
                return False
            self._pending.add(ref)
        self._pool.submit(self._run, ref, url)
        return True

    def _warn_queue_full(self, ref: ObjectRef) -> None:
        # Under a flood of misses this would be one line per request: say it once per interval.
        now = time.monotonic()
        self._dropped_since_warning += 1
        if now - self._last_queue_warning >= QUEUE_WARNING_INTERVAL:
            log.warning("fill queue full (%d waiting): %d misses not queued since the last warning (latest %s)",
                        MAX_PENDING, self._dropped_since_warning, ref.name)
            self._last_queue_warning = now
            self._dropped_since_warning = 0

    def refresh(self, ref: ObjectRef, url: str, response: requests.Response) -> bool:
        """Replace a stale entry with the body of ``response`` (an open 200), in the background.

        Returns False (and the caller closes the response) when a fill of ``ref`` is already queued.
        """
        with self._lock:
            if ref in self._pending or len(self._pending) >= MAX_PENDING:
                return False
            self._pending.add(ref)
        self._pool.submit(self._run, ref, url, response)
        return True

    def _run(self, ref: ObjectRef, url: str, response: requests.Response | None = None) -> None:
        with self._lock:
            self.in_progress += 1
        try:
            result = self.fill(ref, url, response=response)
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
                self.bytes_filled += result.bytes
                self.durations.append(result.seconds)
                del self.durations[:-10000]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict:
        """A consistent copy of the counters, for the status page and metrics (sidecar.collector)."""
        with self._lock:
            return {"in_progress": self.in_progress, "outcomes": dict(self.outcomes),
                    "bytes_filled": self.bytes_filled, "durations": list(self.durations)}

    # -- one fill ---------------------------------------------------------------------

    def fill(self, ref: ObjectRef, url: str, response: requests.Response | None = None) -> FillResult:
        """Fetch ``url`` into the cache entry for ``ref``; synchronous.

        With ``response`` (an open 200 for ``url``), its body replaces whatever
        is cached: that is how a stale entry is refreshed without a second fetch.
        """
        try:
            return self._fill(ref, url, response)
        finally:
            if response is not None:
                response.close()

    def _fill(self, ref: ObjectRef, url: str, response: requests.Response | None) -> FillResult:
        started = time.monotonic()
        replace = response is not None
        final = str(self.layout.object_path(ref))
        if not replace and os.path.isfile(final):
            return FillResult("cached")
        tmp = str(self.layout.temp_path(ref))
        fd = _FillLock.acquire(tmp)
        if fd is None:
            return FillResult("busy")
        try:
            if not replace and os.path.isfile(final):  # finished by another fill since our first look
                os.unlink(tmp)
                return FillResult("cached")
            os.ftruncate(fd, 0)
            if response is None:
                with self._get(url) as resp:
                    headers, size = self._copy_all(resp, fd)
            else:
                headers, size = self._copy_all(response, fd)
            # What the URL's response-* parameters overrode is S3's answer to that URL, not the object's.
            self._commit(ref, fd, tmp, final, hit_headers.object_headers(headers, url.partition("?")[2]), replace)
            seconds = time.monotonic() - started
            log.info("filled %s (%d bytes in %.2fs)", ref.name, size, seconds)
            return FillResult("filled", bytes=size, seconds=seconds)
        except FILL_ERRORS as exc:
            _unlink_quietly(tmp)  # we still hold the lock, so it is ours to remove
            reason = _failure_reason(exc)
            log.warning("not caching %s: %s", ref.name, _describe(reason, exc))
            return FillResult("failed", reason)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        finally:
            os.close(fd)  # releases the flock

    # -- one miss streamed to the client while it is cached (S3CACHE_MISS=stream) ---------

    def stream(self, ref: ObjectRef, url: str) -> "StreamedMiss | None":
        """Fetch ``url`` once for both the client and the cache; None: redirect instead.

        None when another fill of ``ref`` holds the lock (its bytes cannot be
        teed) or the object arrived meanwhile.  A non-200 from S3 is relayed
        as is; a 200 that cannot be cached (too large, SSE-C, ...) is still
        streamed, just not kept.
        """
        final = str(self.layout.object_path(ref))
        tmp = str(self.layout.temp_path(ref))
        fd = _FillLock.acquire(tmp)
        if fd is None:
            return None
        resp = None
        try:
            if os.path.isfile(final):
                os.unlink(tmp)
                os.close(fd)
                return None
            os.ftruncate(fd, 0)
            resp = self._get(url)
            if resp.status_code == 200:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                try:
                    plan = self._check(resp)
                except FillFailed as exc:
                    log.info("streaming %s uncached: %s", ref.name, exc)
                    plan = None
                body = self._stream_body(ref, resp, fd, tmp, final,
                                         hit_headers.object_headers(headers, url.partition("?")[2]), plan)
                return StreamedMiss(200, _client_headers(headers), body)
            relayed = resp.raw.read(64 * 1024, decode_content=False)
            status, headers = resp.status_code, _client_headers({k.lower(): v for k, v in resp.headers.items()})
            headers.pop("Content-Length", None)
            resp.close()
            _unlink_quietly(tmp)
            os.close(fd)
            self._record(FillResult("failed", f"status-{status}"))
            return StreamedMiss(status, headers, [relayed])
        except FILL_ERRORS as exc:
            if resp is not None:
                resp.close()
            _unlink_quietly(tmp)
            os.close(fd)
            log.warning("cannot stream %s: %s", ref.name, exc)
            return None

    def _stream_body(self, ref, resp, fd, tmp, final, headers, plan) -> Iterator[bytes]:
        started = time.monotonic()
        committed = False
        size = 0
        try:
            if plan is None:  # stream only
                _unlink_quietly(tmp)
                while chunk := resp.raw.read(CHUNK, decode_content=False):
                    yield chunk
                return
            for chunk in self._copy(resp, fd, *plan):
                size += len(chunk)
                yield chunk
            self._commit(ref, fd, tmp, final, headers, replace=False)
            committed = True
            seconds = time.monotonic() - started
            log.info("streamed and filled %s (%d bytes in %.2fs)", ref.name, size, seconds)
            self._record(FillResult("filled", bytes=size, seconds=seconds))
        except FILL_ERRORS as exc:
            # The client has had what S3 sent; only the cache declines it.
            reason = _failure_reason(exc)
            log.warning("not caching streamed %s: %s", ref.name, _describe(reason, exc))
            self._record(FillResult("failed", reason))
        finally:
            # Also reached when the client goes away mid-body (the server closes us).
            if not committed:
                _unlink_quietly(tmp)
            os.close(fd)
            resp.close()

    # -- the steps every fill shares ----------------------------------------------------

    def _get(self, url: str) -> requests.Response:
        return self.session.get(url, stream=True, timeout=(self.timeout, self.timeout), allow_redirects=False,
                                headers={"Accept-Encoding": "identity"})

    def _check(self, resp: requests.Response) -> tuple[int, str | None]:
        """(expected length, expected MD5 or None) of a response we may cache; FillFailed if not."""
        if resp.status_code != 200:
            raise FillFailed(f"status-{resp.status_code}")
        headers = {k.lower(): v for k, v in resp.headers.items()}
        length = headers.get("content-length", "")
        if not length.isdigit():
            raise FillFailed("no-length", "response has no Content-Length")
        expected = int(length)
        if self.max_object_bytes is not None and expected > self.max_object_bytes:
            raise FillFailed("too-large", f"{expected} > S3CACHE_MAX_OBJECT_BYTES")
        if "x-amz-server-side-encryption-customer-algorithm" in headers:
            raise FillFailed("sse-c", "customer-key encrypted objects are not cached")
        # SSE-KMS ETags are not the MD5 of the body.
        md5_expected = None if "aws:kms" in headers.get("x-amz-server-side-encryption", "") \
            else _plain_md5_etag(headers.get("etag"))
        return expected, md5_expected

    def _copy(self, resp: requests.Response, fd: int, expected: int, md5_expected: str | None) -> Iterator[bytes]:
        """Write the body to ``fd``, yielding each chunk; verify length and MD5 at the end."""
        digest = hashlib.md5() if md5_expected else None
        size = 0
        with open(fd, "wb", closefd=False, buffering=0) as out:
            while True:
                # decode_content=False: cache the bytes S3 stored, gzip or not.
                chunk = resp.raw.read(CHUNK, decode_content=False)
                if not chunk:
                    break
                size += len(chunk)
                if size > expected:
                    raise FillFailed("length-mismatch", "more bytes than Content-Length")
                out.write(chunk)
                if digest:
                    digest.update(chunk)
                yield chunk
        if size != expected:
            raise FillFailed("truncated", f"{size} of {expected} bytes")
        if digest and digest.hexdigest() != md5_expected:
            raise FillFailed("md5-mismatch", "body does not match the ETag")
        os.fsync(fd)

    def _copy_all(self, resp: requests.Response, fd: int) -> tuple[dict[str, str], int]:
        plan = self._check(resp)
        size = sum(len(chunk) for chunk in self._copy(resp, fd, *plan))
        return {k.lower(): v for k, v in resp.headers.items()}, size

    def _commit(self, ref: ObjectRef, fd: int, tmp: str, final: str, headers: dict[str, str], replace: bool) -> None:
        last_modified = parse_http_date(headers.get("last-modified"))
        now = time.time()
        os.utime(fd, (now, last_modified or now))
        if replace:
            # Old metadata goes first: a revalidation racing this swap then
            # falls back to If-Modified-Since and sees a change, never an
            # old body under the new ETag.
            _unlink_quietly(str(self.layout.meta_path(ref)))
        # The object's mark goes in before the object, so that no open-mode hit serves it without its
        # headers; marks of another kind (a replaced object's) go after.
        kind = hit_headers.mark_kind(ref.key, headers)
        if kind is not None:
            self._mark(ref, kind)
        _rename_into(tmp, final)
        for other in MARK_KINDS:
            if other != kind:
                self._unmark(ref, other)
        self._write_meta(ref, headers, os.fstat(fd).st_size)

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
        meta = {
            "bucket": ref.bucket,
            "key": ref.key,
            "size": size,
            "fetched_at": time.time(),
            "headers": {k: v for k, v in headers.items() if k in KEPT_HEADERS or k.startswith("x-amz-meta-")},
        }
        tmp = str(self.layout.meta_temp_path(ref))
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(meta, fh, ensure_ascii=False)
            _rename_into(tmp, str(self.layout.meta_path(ref)))
        except (OSError, FillFailed) as exc:
            _unlink_quietly(tmp)
            log.warning("cached %s without metadata: %s", ref.name, exc)

# What a fetch can fail with: ours, requests', urllib3's (reading resp.raw: a
# connection cut mid-body is ProtocolError) and the disk's.
FILL_ERRORS = (FillFailed, requests.RequestException, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class StreamedMiss:
    status: int
    headers: dict[str, str]
    body: Iterable[bytes]


def _client_headers(headers: dict[str, str]) -> dict[str, str]:
    """S3's response headers worth passing to the client of a streamed miss."""
    keep = {k: v for k, v in headers.items()
            if k in KEPT_HEADERS or k.startswith("x-amz-meta-") or k in ("content-length", "accept-ranges")}
    return {"-".join(p.capitalize() for p in k.split("-")) if not k.startswith("x-amz") else k: v
            for k, v in keep.items()}


def _describe(reason: str, exc: BaseException) -> str:
    """The reason, then the detail unless it only repeats the reason."""
    detail = str(exc)
    return detail if detail == reason or detail.startswith(reason + ":") else f"{reason}: {detail}"


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, FillFailed):
        return exc.reason
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError)):
        return "timeout"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "truncated"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk-full"
    return "error"


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
