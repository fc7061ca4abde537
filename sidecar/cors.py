"""CORS in the sidecar: preflights, and S3's own Access-Control-* headers relayed onto our answers.

A browser's ``fetch()`` of an object on another origin needs ``Access-Control-*``
headers on every answer it reads, and a preflight (``OPTIONS``) answered as S3
would answer it (never with a redirect: browsers do not follow one).

- **Preflights** for a read (``GET``/``HEAD``) from an origin in
  ``S3CACHE_CORS_ORIGINS`` are answered here from those rules; every other
  preflight is relayed to S3 with the client's URL and its ``Origin`` and
  ``Access-Control-Request-*`` headers, and S3's answer relayed back.
- **S3's own answer**: where the sidecar asks S3 for a client (a revalidation,
  a streamed miss) it sends the client's ``Origin``, and ``from_s3`` picks the
  headers of S3's answer that belong on the client's.
- **Redirects** without rules: S3 is asked what it would answer this origin
  (a preflight, ``Learned``), and its verdict goes on the redirect, which the
  browser follows only if it allows the origin.  Kept a minute per bucket and origin.
- The rules on hits, redirects and streamed misses are Caddy's
  (``cors_rules`` in the Caddyfile): they add the headers where S3's are absent.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Mapping

from flask import Response

from s3cache.config import Config
from sidecar.s3errors import error_response, retry_later
from sidecar.upstream import READ_ERRORS, Unreachable, Unsendable, Upstream, check_headers, done

log = logging.getLogger("sidecar.cors")

# A preflight is on the critical path of a page's request: answer fast or not at all.
PREFLIGHT_TIMEOUT = (3.0, 10.0)
MAX_RELAYED_BODY = 64 * 1024
READ_METHODS = ("GET", "HEAD")
# What a preflight sends S3 besides the Host: the question itself.
_PREFLIGHT_REQUEST = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")
# What of S3's preflight answer reaches the client (its CORS verdict, the error document's type, S3's ids).
_PREFLIGHT_RELAYED = ("content-type", "x-amz-request-id", "x-amz-id-2")
# S3's refusal of a preflight (its message, spelling included).
NOT_ALLOWED = ("CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, "
               "request method / Access-Control-Request-Method or Access-Control-Request-Headers are not "
               "whitelisted by the resource's CORS spec.")


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    return method == "OPTIONS" and bool(headers.get("Origin")) and bool(headers.get("Access-Control-Request-Method"))


def from_s3(headers: Mapping[str, str]) -> dict[str, str]:
    """S3's Access-Control-* headers and its Vary, which belong on our answer to the same request."""
    return {_canonical(k): v for k, v in headers.items()
            if k.lower().startswith("access-control-") or k.lower() == "vary"}


def client_origin(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's Origin, to send S3 along with a request made for it; none that HTTP cannot carry unchanged."""
    origin = headers.get("Origin")
    if not origin:
        return {}
    try:
        check_headers({"Origin": origin})
    except Unsendable:
        return {}
    return {"Origin": origin}


def with_vary_origin(headers: Mapping[str, str], config: Config) -> dict[str, str]:
    """``headers`` (S3's CORS verdict) with a Vary that names Origin once: the answer depends on it.

    With S3CACHE_CORS_ORIGINS set, Caddy adds ``Vary: Origin`` to every answer
    itself (cors_rules), so here it is left out rather than said twice.
    """
    out = {k: v for k, v in headers.items() if k != "Vary"}
    names = [n.strip() for n in headers.get("Vary", "").split(",") if n.strip() and n.strip().lower() != "origin"]
    if not config.cors_origins:
        names.insert(0, "Origin")
    if names:
        out["Vary"] = ", ".join(names)
    return out


def allows(config: Config, origin: str) -> bool:
    return config.cors_origins == ("*",) or origin in config.cors_origins


def preflight(config: Config, upstream: Upstream, url: str | None, headers: Mapping[str, str]) -> Response:
    """Answer an OPTIONS preflight: from the rules for reads, else S3's answer to it.

    ``url`` is the upstream URL the request names, or None when it names none
    S3 could be asked about (then only the rules can answer).
    """
    origin = headers.get("Origin", "")
    method = headers.get("Access-Control-Request-Method", "")
    if config.cors_origins and method in READ_METHODS:
        return _from_rules(config, origin, headers.get("Access-Control-Request-Headers"))
    if url is None:
        return _refused()
    return relay(upstream, url, headers)


def _from_rules(config: Config, origin: str, request_headers: str | None) -> Response:
    if not allows(config, origin):
        return _refused()
    resp = Response(status=200)
    del resp.headers["Content-Type"]
    resp.headers["Access-Control-Allow-Origin"] = "*" if config.cors_origins == ("*",) else origin
    resp.headers["Access-Control-Allow-Methods"] = ", ".join(READ_METHODS)
    if request_headers:
        # Any request header a read may carry (Range, If-None-Match, ...): S3's AllowedHeaders "*".
        resp.headers["Access-Control-Allow-Headers"] = request_headers
    if config.cors_expose_headers:
        resp.headers["Access-Control-Expose-Headers"] = config.cors_expose_headers.replace(",", ", ")
    resp.headers["Access-Control-Max-Age"] = str(config.cors_max_age)
    resp.headers["Vary"] = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"
    return resp


def _refused() -> Response:
    resp = error_response(403, "AccessForbidden", NOT_ALLOWED)
    resp.headers["Vary"] = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"
    return resp


def relay(upstream: Upstream, url: str, headers: Mapping[str, str]) -> Response:
    """Send the preflight to S3 (the client's URL byte for byte) and answer with S3's verdict."""
    sent = {name: headers[name] for name in _PREFLIGHT_REQUEST if headers.get(name)}
    try:
        resp = upstream.request("OPTIONS", url, headers=sent, connect_timeout=PREFLIGHT_TIMEOUT[0],
                                read_timeout=PREFLIGHT_TIMEOUT[1])
    except Unsendable:
        return error_response(400, "InvalidRequest", "This request cannot be forwarded to S3 unchanged.")
    except Unreachable as exc:
        log.warning("preflight not relayed: S3 unreachable (%s)", exc)
        return retry_later("Could not ask S3 about this CORS request; please retry.")
    try:
        try:
            body = resp.read(MAX_RELAYED_BODY, decode_content=False)
        except READ_ERRORS:
            body = b""
        relayed = Response(body, status=resp.status)
        del relayed.headers["Content-Type"]
        for name, value in resp.headers.items():
            if name.lower() in _PREFLIGHT_RELAYED:
                relayed.headers[_canonical(name)] = value
        relayed.headers.update(from_s3(resp.headers))
        return relayed
    finally:
        done(resp)


class Learned:
    """S3's CORS verdict for an origin, learned with a preflight, for the redirects we answer ourselves.

    A bucket's CORS configuration is one for all its keys, so the verdict is
    kept per (S3 host, bucket, origin, method) for ``TTL`` seconds.  Only the
    headers S3 puts on an actual GET for an allowed origin are kept; a refusal
    (S3's 403) is kept as "nothing".  When S3 cannot be asked, nothing is kept
    and the redirect goes without (the browser then stops, as it did before).
    """

    TTL = 60.0
    MAX_ENTRIES = 4096
    _KEPT = ("access-control-allow-origin", "access-control-expose-headers", "access-control-allow-credentials")

    def __init__(self, upstream: Upstream, clock=time.monotonic):
        self._upstream, self._clock = upstream, clock
        self._verdicts: dict[tuple[str, str, str, str], tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def headers(self, url: str, host: str, bucket: str, origin: str, method: str) -> dict[str, str]:
        """What S3 would put on ``method url`` for ``origin``: Access-Control-* headers, or none."""
        key = (host, bucket, origin, method)
        now = self._clock()
        with self._lock:
            known = self._verdicts.get(key)
        if known is not None and known[0] > now:
            return dict(known[1])
        verdict = self._ask(url, origin, method)
        if verdict is None:
            return {}
        with self._lock:
            if len(self._verdicts) >= self.MAX_ENTRIES:
                self._verdicts = {k: v for k, v in self._verdicts.items() if v[0] > now}
                if len(self._verdicts) >= self.MAX_ENTRIES:
                    self._verdicts.clear()
            self._verdicts[key] = (now + self.TTL, verdict)
        return dict(verdict)

    def _ask(self, url: str, origin: str, method: str) -> dict[str, str] | None:
        try:
            check_headers({"Origin": origin, "Access-Control-Request-Method": method})
            resp = self._upstream.request("OPTIONS", url, headers={"Origin": origin,
                                                                   "Access-Control-Request-Method": method},
                                          connect_timeout=PREFLIGHT_TIMEOUT[0], read_timeout=PREFLIGHT_TIMEOUT[1])
        except Unsendable:
            return None
        except Unreachable as exc:
            log.info("S3's CORS rules not learned: S3 unreachable (%s)", exc)
            return None
        try:
            if resp.status != 200:
                return {}
            return {_canonical(k): v for k, v in resp.headers.items() if k.lower() in self._KEPT}
        finally:
            done(resp)


def _canonical(name: str) -> str:
    lower = name.lower()
    if lower.startswith("x-amz-"):
        return lower
    return "-".join(part.capitalize() for part in lower.split("-"))
