"""Access control on hits: may this request receive the cached bytes?

Caddy asks ``/_s3cache/auth`` before serving a cached file in the ``verify``
and ``revalidate`` modes (and in ``open`` mode for objects whose S3 headers
file_server cannot send itself); a 2xx answer lets Caddy serve the file with
the headers it carries, anything else is relayed to the client instead of the
bytes.

- ``verify``: check the presigned signature and expiry locally, with the keys
  from S3CACHE_SIGNING_KEYS(_FILE).  No S3 round trip.
- ``revalidate``: ask S3 itself, with the client's own URL, conditionally
  (``If-None-Match`` with the cached ETag).  ``304`` means S3 would have served
  this very object to this very URL; no body bytes move.
- with ``S3CACHE_TTL``, ``verify`` and ``open`` revalidate the same way once
  an entry is older than the TTL (``open`` reaches this module only then).

A URL accepted by the signature check (``verify`` without a TTL) or by S3's
own answer (``revalidate``) gets a grant (``s3cache.grants``): Caddy serves
its later hits alone until the grant's window ends.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import parse_qsl

from flask import Response

from s3cache import metadata
from s3cache.config import Config
from s3cache.httpdate import format_http_date
from s3cache import entries, grants, objectlock
from s3cache.layout import MARK_KINDS, Layout, ObjectRef, Uncacheable
from s3cache.request_path import BadRequest
from s3cache.wire import GRANT_HEADER, SERVED_HEADER
from sidecar import cors, freshness, hit_headers
from sidecar.fill import Filler
from sidecar.redirect import redirect_307
from sidecar.s3errors import error_response, retry_later
from sidecar.signatures import verify_presigned
from sidecar.upstream import READ_ERRORS, Unreachable, Unsendable, Upstream, done, sendable_url

log = logging.getLogger("sidecar.access")

# Revalidation is on the hit path: it must answer fast or not at all.
REVALIDATE_TIMEOUT = (3.0, 10.0)
# S3 error bodies are small XML documents; never relay more than this.
MAX_RELAYED_BODY = 64 * 1024


@dataclass(frozen=True)
class HitRequest:
    method: str      # GET or HEAD, as the client sent it
    raw_uri: str
    headers: Mapping[str, str]
    host: str = ""   # the client's Host: names the bucket for virtual-hosted requests

    @property
    def raw_query(self) -> str:
        return self.raw_uri.partition("?")[2]


def serves_object(served: str | None, relative: str) -> bool:
    """Is ``served`` (the header as waitress decoded it, latin-1) the file ``objects/<relative>``?"""
    if served is None:
        return False
    try:
        return served.encode("latin-1") == ("/" + relative + "|").encode("utf-8")
    except UnicodeEncodeError:
        return False


@dataclass(frozen=True)
class Grant:
    """The grant a check that accepts this URL may leave for Caddy (``s3cache.grants``)."""
    name: str
    etag: str
    checked: grants.Identity


def allow(hit: HitRequest, ref: ObjectRef, layout: Layout, told: Mapping[str, str] | None = None,
          overrides: bool = True, extra: Mapping[str, str] | None = None, grant: Grant | None = None) -> Response:
    """Let Caddy serve the file, with S3's headers; or answer a conditional request ourselves.

    ``told``: S3's answer to this very URL about the same object (a revalidation),
    which may tell headers the fill could not store.  ``overrides``: apply the
    URL's response-* parameters; only for a URL S3 or the signature check has
    accepted with them (S3 refuses them on unsigned requests: from anyone else
    they would be a reflected Content-Type / Content-Disposition).  ``extra``:
    headers of S3's answer that belong on this one as they are (its CORS verdict).
    """
    try:
        mtime = hit_headers.object_mtime(layout, ref)
    except FileNotFoundError:  # evicted since Caddy looked
        return deny(404, "NoSuchKey", "The specified key does not exist.")
    if told is not None:
        hit_headers.record(layout, ref, told, hit.raw_query)
    stored = metadata.load_headers(layout, ref)
    result = hit_headers.answer(hit.method, hit.headers, stored, hit.raw_query if overrides else "", mtime)
    if grant is not None and _caddy_alone_answers(layout, ref, stored):
        grants.record(layout, ref, grant.name, grant.etag, grant.checked)
    resp = Response(status=result.status)
    # Caddy copies this answer's headers onto the hit: none but S3's may be there (not Flask's text/html).
    del resp.headers["Content-Type"]
    resp.headers.update(result.headers)
    resp.headers.update(extra or {})
    if result.status != hit_headers.SERVE:
        resp.headers["X-Cache"] = "HIT"  # a conditional answer from the cache is still a hit
    return resp


def deny(status: int, code: str, message: str, resource: str = "") -> Response:
    resp = error_response(status, code, message, resource)
    resp.headers["X-Cache"] = "DENIED"
    return resp


def check_hit(hit: HitRequest, config: Config, layout: Layout, filler: Filler,
              session: Upstream) -> Response:
    try:
        resolved = config.addressing.resolve(hit.host, hit.raw_uri)
        parsed = resolved.parsed
        ref = parsed.ref
        layout.object_path(ref)
        relative = layout.relative_path(ref)
    except (BadRequest, Uncacheable):
        # Caddy only asks about paths that exist on disk; anything else is not ours to serve.
        return deny(403, "AccessDenied", "Access Denied")
    if not serves_object(hit.headers.get(SERVED_HEADER), relative):
        # Caddy matched another file than the object checked here (a Host or path the two read
        # differently): whatever this check would say is about the wrong bytes.
        log.warning("refused a hit: Caddy matched %r, the request names %r",
                    hit.headers.get(SERVED_HEADER), relative)
        return deny(403, "AccessDenied", "Access Denied")
    url = resolved.upstream_url
    # Host-in-path URLs get none: a grant's name binds the form of path-style and virtual-hosted URLs only.
    grant = None if resolved.host_in_path else _grant(hit, ref, resolved.virtual, config, layout)
    # (Not for a browser's request in revalidate: S3's CORS answer for its Origin goes on the hit.)
    if (grant is not None and grants.path(layout, ref, grant.name, grant.etag).is_file()
            and grants.unexpired(hit.raw_query)
            and not (config.access == "revalidate" and cors.client_origin(hit.headers))):
        return allow(hit, ref, layout)  # written since Caddy looked (a concurrent check): it stands for this URL
    if config.access == "revalidate":
        return revalidate(hit, ref, url, config, layout, filler, session, grant)
    if config.access == "verify":
        # The Host S3 would have seen: SigV4 signs it; SigV2 signs /bucket/key whatever the style.
        verdict = verify_presigned(hit.method, parsed.raw_path, parsed.raw_query, resolved.upstream_host,
                                   config.keys(), headers=hit.headers,
                                   bucket=parsed.bucket if resolved.virtual else None)
        if not verdict.ok:
            return deny(verdict.status, verdict.code, verdict.message, parsed.raw_path)
    # verify (signature good) or open: S3 is asked only once the entry is older than S3CACHE_TTL.
    if config.ttl is not None and freshness.age(layout, ref) > config.ttl:
        return revalidate(hit, ref, url, config, layout, filler, session)
    # open: nobody checked the URL, so its response-* parameters are not applied.
    return allow(hit, ref, layout, overrides=config.access != "open", grant=grant)


def _grant(hit: HitRequest, ref: ObjectRef, virtual: bool, config: Config, layout: Layout) -> Grant | None:
    """The grant this URL gets if the check accepts it, or None (grants off, or a request Caddy must check).

    Written only under the name Caddy looked for: whatever either side makes
    of a request, a grant is found only by requests Caddy names as this one.
    """
    if not config.grant_ttl or "Authorization" in hit.headers or config.access == "open":
        return None
    if config.access == "verify" and config.ttl is not None:
        return None  # a grant would outlive the entry's freshness
    part = grants.url_part(hit.method, virtual, hit.raw_query, hit.headers)
    if part is None:
        return None
    name = f"{grants.window(config.grant_ttl)}_{part}"
    if hit.headers.get(GRANT_HEADER) != name + "|":
        return None
    etag = grants.etag_part(metadata.load_headers(layout, ref).get("etag"))
    if etag is None:
        return None
    checked = grants.Identity.of(layout.object_path(ref))
    return None if checked is None else Grant(name, etag, checked)


def _caddy_alone_answers(layout: Layout, ref: ObjectRef, stored: Mapping[str, str]) -> bool:
    """Would a granted hit (file_server, plus the octet mark's type) carry the headers this check sends?

    Judged from the headers known now (a revalidation may have told more than
    the fill knew), against the marks Caddy will look at.
    """
    kind = hit_headers.mark_kind(ref.key, stored)
    present = {k for k in MARK_KINDS if layout.mark_path(ref, k).exists()}
    return kind != "headers" and present == ({kind} if kind else set())


def _cached_validators(layout: Layout, ref: ObjectRef) -> dict[str, str]:
    etag = metadata.load_headers(layout, ref).get("etag")
    if etag:
        return {"If-None-Match": etag}
    # No metadata: the file's mtime is S3's Last-Modified.
    mtime = os.stat(layout.object_path(ref)).st_mtime
    return {"If-Modified-Since": format_http_date(mtime)}


# Headers the check sets itself (the Host S3 is asked at, our validators, identity encoding).
_OURS = ("host", "if-none-match", "if-modified-since", "accept-encoding")


def _signed_client_headers(raw_query: str, headers: Mapping[str, str]) -> dict[str, str]:
    """Headers the client's SigV4 signature covers (besides host) must reach S3 unchanged.

    Names and values are the client's: ``upstream`` refuses (Unsendable) what
    HTTP cannot carry unchanged, and that refusal is the client's error.
    """
    signed = dict(parse_qsl(raw_query, keep_blank_values=True)).get("X-Amz-SignedHeaders", "")
    present = {k.lower(): k for k in headers.keys()}
    return {name: headers.get(present[name]) for name in signed.lower().split(";")
            if name and name not in _OURS and name in present}


@dataclass
class _Flight:
    """One revalidation of a grantable URL in flight: concurrent hits of the same URL wait for its answer."""
    done: threading.Event = field(default_factory=threading.Event)
    told: Mapping[str, str] | None = None  # S3's headers, once it confirmed the URL


_flights: dict[str, _Flight] = {}
_flights_lock = threading.Lock()


def revalidate(hit: HitRequest, ref: ObjectRef, url: str, config: Config, layout: Layout, filler: Filler,
               session: Upstream, grant: Grant | None = None) -> Response:
    """``ask_s3``, once for all the concurrent hits of one grantable URL (the same grant name).

    When a window ends, every client of a popular URL reaches the check at
    once; one of them asks S3 and the others take its answer if it confirmed
    the URL (their own otherwise).  By the time a flight ends its grant is
    written, so a later hit is Caddy's: S3 is asked about once per window.
    """
    if grant is None or cors.client_origin(hit.headers):
        # (A browser's request: S3's CORS answer is for its Origin alone, not to be shared.)
        return ask_s3(hit, ref, url, config, layout, filler, session, grant)
    with _flights_lock:
        flight = _flights.get(grant.name)
        leading = flight is None
        if leading:
            flight = _flights[grant.name] = _Flight()
    if not leading:
        if flight.done.wait(sum(REVALIDATE_TIMEOUT)) and flight.told is not None:
            # (told is empty when the leader took another process's grant: nothing new to record)
            return allow(hit, ref, layout, told=flight.told or None)
        return ask_s3(hit, ref, url, config, layout, filler, session)
    # The request workers share no memory: the leaders of one URL in each process take turns on a lock
    # file, and a leader that finds the grant written meanwhile by another process's answer takes it.
    lock_path = str(layout.check_lock_path(ref, grant.name))
    lock = None
    try:
        try:
            lock = objectlock.acquire_within(lock_path, sum(REVALIDATE_TIMEOUT))
        except OSError:
            lock = None  # (no tmp dir, a full disk: ask S3 uncoordinated, as before)
        if (lock is not None and grants.path(layout, ref, grant.name, grant.etag).is_file()
                and grants.unexpired(hit.raw_query)):
            flight.told = {}
            return allow(hit, ref, layout)
        return ask_s3(hit, ref, url, config, layout, filler, session, grant, flight)
    finally:
        if lock is not None:
            objectlock.release(lock, lock_path)
        with _flights_lock:
            _flights.pop(grant.name, None)
        flight.done.set()


def ask_s3(hit: HitRequest, ref: ObjectRef, url: str, config: Config, layout: Layout, filler: Filler,
           session: Upstream, grant: Grant | None = None, flight: _Flight | None = None) -> Response:
    """Ask S3 with the client's own URL, sent byte for byte; serve only on its 304 (or an equal ETag).

    Fail-open (S3CACHE_REVALIDATE_ON_ERROR=open) follows only ``Unreachable``
    and a 5xx: S3 could not be asked.  A request that cannot be sent as the
    client made it is refused, never served.
    """
    if not sendable_url(url):
        # S3 would be asked about a different key than the file Caddy serves: let S3 answer the client.
        return redirect_307(url, x_cache="DENIED")
    try:
        validators = _cached_validators(layout, ref)
    except FileNotFoundError:
        return deny(404, "NoSuchKey", "The specified key does not exist.")
    # The client's Origin too: S3's answer then carries the Access-Control-* headers it would send this client.
    headers = {**_signed_client_headers(hit.raw_query, hit.headers), **cors.client_origin(hit.headers), **validators}
    try:
        resp = session.request(hit.method, url, headers=headers,
                               connect_timeout=REVALIDATE_TIMEOUT[0], read_timeout=REVALIDATE_TIMEOUT[1])
    except Unsendable as exc:
        log.info("refusing the hit on %s: %s", ref.name, exc)
        return deny(400, "InvalidRequest", "A header the request signs cannot be forwarded to S3 unchanged.")
    except Unreachable as exc:
        return unreachable(hit, ref, config, layout, str(exc))
    keep_open = False
    # S3's CORS verdict for this client, on whatever we answer; it depends on Origin.
    s3_cors = cors.with_vary_origin(cors.from_s3(resp.headers), config)
    try:
        status = resp.status
        if status == 304 or (status == 200 and validators.get("If-None-Match")
                             and resp.headers.get("ETag") == validators["If-None-Match"]):
            # (a 200 with the same ETag: an origin that ignores If-None-Match)
            if status == 304 and config.ttl is not None:
                metadata.mark_validated(layout, ref)
            if flight is not None:
                flight.told = dict(resp.headers)
            return allow(hit, ref, layout, told=resp.headers, extra=s3_cors, grant=grant)
        if status == 200:
            # Changed at the origin: the client gets nothing stale.
            if hit.method == "GET":
                keep_open = filler.refresh(ref, url, resp)
            else:
                remove_cached(layout, ref)  # a HEAD-signed URL cannot fetch the new body
            log.info("stale %s: changed at the origin; redirected and refreshing", ref.name)
            redirect = redirect_307(url)
            redirect.headers.update(s3_cors)
            return redirect
        if status >= 500:
            return unreachable(hit, ref, config, layout, f"origin answered {status}")
        if status == 404:
            remove_cached(layout, ref)
        try:
            body = resp.read(MAX_RELAYED_BODY, decode_content=False) if hit.method == "GET" else b""
        except READ_ERRORS:
            body = b""  # the refusal stands; only its explanation was lost
        relayed = Response(body, status=status, content_type=resp.headers.get("Content-Type", "application/xml"))
        relayed.headers["X-Cache"] = "DENIED"
        relayed.headers["Cache-Control"] = "no-store"
        relayed.headers.update(s3_cors)
        return relayed
    finally:
        if not keep_open:
            done(resp)


def unreachable(hit: HitRequest, ref: ObjectRef, config: Config, layout: Layout, why: str,
                overrides: bool = False) -> Response:
    """S3 could not be asked (no connection, a timeout, a 5xx): the only case S3CACHE_REVALIDATE_ON_ERROR governs.

    ``overrides``: whether a served copy applies the URL's response-* parameters (not for a presigned URL
    nobody confirmed; yes for a request whose signature the proxy checked itself).
    """
    if config.revalidate_on_error == "open":
        log.warning("S3 unreachable (%s); serving the cached copy (S3CACHE_REVALIDATE_ON_ERROR=open)", why)
        return allow(hit, ref, layout, overrides=overrides)
    log.warning("S3 unreachable (%s); refusing the hit (S3CACHE_REVALIDATE_ON_ERROR=closed)", why)
    resp = retry_later("Could not confirm access with S3; please retry.")
    resp.headers["X-Cache"] = "ERROR"
    return resp


def remove_cached(layout: Layout, ref: ObjectRef) -> None:
    """S3 says the object is gone (or changed, for a HEAD): drop the entry, unless a fill is writing it now."""
    removal = entries.remove(layout, ref, wait=0.0)
    if removal.outcome not in ("removed", "absent"):
        log.info("kept %s: %s (%s)", ref.name, removal.outcome, removal.detail)
