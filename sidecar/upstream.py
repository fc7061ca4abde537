"""How the sidecar talks to S3: every request it sends there (fill, streamed miss, revalidation).

- **The request target goes out byte for byte** as the client sent it.  A
  presigned signature covers the path and query exactly, and the cache stores
  the fetched bytes under the key the client's raw path decodes to, so a
  re-encoded target would fetch (and cache) a *different* object.  ``requests``
  and urllib3's ``urlopen`` both re-encode (raw UTF-8, ``#``, ``|``, lower-case
  escapes ...); we hand the target straight to the connection instead.  A
  target that HTTP/1.1 cannot carry unchanged (anything outside printable
  ASCII, and a raw ``#``) is refused with ``Unsendable`` before anything is sent: the caller
  redirects the client to S3 instead of fetching for it.
- Keep-alive connection pools per upstream host (virtual-hosted buckets each
  have their own host).
- An egress proxy from the standard ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``
  variables is used as ``requests`` would: an http upstream gets the
  absolute-form target (still byte for byte), an https one a CONNECT tunnel.
- Errors come in two kinds, and only two: ``Unreachable`` (S3 could not be
  reached: no connection, a timeout, the connection cut, a response that is
  not HTTP) and ``Unsendable`` (the client's request cannot be sent as it is:
  its target or a header it asks us to pass on).  Fail-open on an access
  check may only ever follow ``Unreachable``.
"""

from __future__ import annotations

import http.client
import re
import threading
import urllib.request
from dataclasses import dataclass
from typing import Mapping

import certifi
import urllib3
from urllib3.util import Timeout

# What HTTP/1.1 carries unchanged in a request target: printable ASCII, no space -- and no '#'.
# A raw '#' is not part of any request-target (no client sends one: it starts a fragment), so a
# server may well cut the path there, and S3 would answer for a different key than the one the
# file is stored under.
_SENDABLE_TARGET = re.compile(r"/[\x21\x22\x24-\x7e]*\Z")
# RFC 9110 token (a header name) and field value (visible latin-1 bytes, space and tab inside).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE = re.compile(r"(?:[\x21-\x7e\x80-\xff](?:[\x20\x09\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?\Z")

MAX_POOLS = 64          # distinct upstream hosts kept alive (one per virtual-hosted bucket)
POOL_MAXSIZE = 32       # idle keep-alive connections kept per host


class UpstreamError(Exception):
    """Base of the two ways a request to S3 can fail."""


class Unreachable(UpstreamError):
    """S3 could not be reached, or did not answer in time, or cut the connection."""


class Unsendable(UpstreamError):
    """The client's request cannot be sent to S3 unchanged (its target or a header it names)."""


@dataclass(frozen=True)
class Target:
    """An upstream URL split into where to connect and the exact request target."""

    scheme: str
    netloc: str   # sent as the Host header exactly (SigV4 signs it)
    host: str
    port: int
    target: str   # "/path?query", byte for byte

    @classmethod
    def parse(cls, url: str) -> "Target":
        """``url`` is S3CACHE_UPSTREAM (or its virtual-hosted form) + the client's raw URI.

        Raises Unsendable when the target cannot go out unchanged.
        """
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise Unsendable("not an http(s) URL")
        netloc, slash, tail = rest.partition("/")
        target = slash + tail
        if not sendable_target(target):
            raise Unsendable("the request target holds bytes HTTP cannot carry unchanged")
        host, port = netloc, 443 if scheme == "https" else 80
        if netloc.startswith("["):
            host, _, after = netloc[1:].partition("]")
            if after.startswith(":"):
                port = int(after[1:])
        elif ":" in netloc:
            host, _, port_text = netloc.rpartition(":")
            port = int(port_text)
        return cls(scheme, netloc, host, port, target)


def sendable_target(target: str) -> bool:
    """Whether ``target`` (a raw "/path?query") can be sent to S3 exactly as it is."""
    return bool(_SENDABLE_TARGET.match(target))


def sendable_url(url: str) -> bool:
    try:
        Target.parse(url)
    except (Unsendable, ValueError):
        return False
    return True


def check_headers(headers: Mapping[str, str]) -> None:
    """Unsendable unless every name is a token and every value a valid field value."""
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise Unsendable("a header name that HTTP cannot carry")
        if not isinstance(value, str) or not _FIELD_VALUE.match(value):
            raise Unsendable(f"a value of header {name} that HTTP cannot carry unchanged")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise Unsendable(f"a value of header {name} that HTTP cannot carry unchanged") from None


class _ExactPoolMixin:
    """A connection pool whose requests go out with the target exactly as given."""

    def send_exact(self, method: str, target: str, headers: dict[str, str], timeout: Timeout, body=None):
        for attempt in (1, 2):
            conn = self._get_conn()
            reused = conn.sock is not None
            try:
                return self._make_request(conn, method, target, body=body, headers=headers, timeout=timeout,
                                          retries=urllib3.Retry(0, read=False), response_conn=conn,
                                          preload_content=False, decode_content=False)
            except BaseException as exc:
                conn.close()
                self._put_conn(None)  # keeps the pool's size, as urlopen does
                # S3 may close an idle keep-alive connection just as we reuse it:
                # GET and HEAD are safe to send once more on a fresh one.
                if attempt == 1 and reused and body is None and _is_stale_connection(exc):
                    continue
                raise
        raise AssertionError("unreachable")


def _is_stale_connection(exc: BaseException) -> bool:
    return isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                            urllib3.exceptions.ProtocolError))


class _ExactHTTPPool(_ExactPoolMixin, urllib3.HTTPConnectionPool):
    pass


class _ExactHTTPSPool(_ExactPoolMixin, urllib3.HTTPSConnectionPool):
    pass


class Upstream:
    """The sidecar's one way to send a request to S3."""

    def __init__(self, *, maxsize: int = POOL_MAXSIZE):
        # certifi: the same trust store requests used before (slim images may lack the system's).
        self._manager = urllib3.PoolManager(num_pools=MAX_POOLS, maxsize=maxsize, block=False,
                                            ca_certs=certifi.where())
        self._manager.pool_classes_by_scheme = {"http": _ExactHTTPPool, "https": _ExactHTTPSPool}
        self._maxsize = maxsize
        self._proxies = urllib.request.getproxies_environment()  # read once, like the rest of the config
        self._proxy_managers: dict[str, urllib3.ProxyManager] = {}
        self._lock = threading.Lock()

    def _proxy_for(self, target: "Target") -> str | None:
        proxy = self._proxies.get(target.scheme)
        if not proxy or urllib.request.proxy_bypass_environment(target.host, self._proxies):
            return None
        return proxy

    def _pool(self, target: "Target") -> tuple[object, str, dict[str, str]]:
        """The pool to send on, the request target to send, and headers the proxy needs (under the lock)."""
        proxy = self._proxy_for(target)
        if proxy is None:
            return self._manager.connection_from_host(target.host, target.port, target.scheme), target.target, {}
        manager = self._proxy_managers.get(proxy)
        if manager is None:
            parsed = urllib3.util.parse_url(proxy)
            auth = urllib3.util.make_headers(proxy_basic_auth=parsed.auth) if parsed.auth else {}
            manager = urllib3.ProxyManager(proxy, num_pools=MAX_POOLS, maxsize=self._maxsize, block=False,
                                           ca_certs=certifi.where(), proxy_headers=auth)
            manager.pool_classes_by_scheme = {"http": _ExactHTTPPool, "https": _ExactHTTPSPool}
            self._proxy_managers[proxy] = manager
        pool = manager.connection_from_host(target.host, target.port, target.scheme)
        if target.scheme == "https":  # a CONNECT tunnel: the target is the origin-form one, as without a proxy
            return pool, target.target, {}
        # Plain HTTP through a proxy: the absolute form, the client's bytes after the authority.
        return pool, f"http://{target.netloc}{target.target}", dict(manager.proxy_headers)

    def request(self, method: str, url: str, headers: Mapping[str, str] | None = None, *,
                connect_timeout: float, read_timeout: float, body=None) -> urllib3.BaseHTTPResponse:
        """Send ``method url`` and return the open response (body unread, not decoded).

        ``body``: a file to send (an SDK client's passed-through write), sized by the
        caller's Content-Length header; such a request is never resent.

        The caller reads the body (``read1``/``read``) and must ``close()`` or
        ``release_conn()`` the response.  Raises Unsendable or Unreachable.
        """
        try:
            target = Target.parse(url)
        except ValueError as exc:  # a port that is not a number
            raise Unsendable("not a valid upstream URL") from exc
        check_headers(headers or {})
        # Case-insensitive: a caller's header replaces ours of the same name, never doubles it.
        sent = urllib3.HTTPHeaderDict({"Host": target.netloc, "Accept-Encoding": "identity"})
        for name, value in (headers or {}).items():
            sent[name] = value
        with self._lock:
            pool, request_target, proxy_headers = self._pool(target)
        for name, value in proxy_headers.items():
            sent[name] = value
        try:
            return pool.send_exact(method, request_target, sent, Timeout(connect=connect_timeout, read=read_timeout),
                                   body=body)
        except UpstreamError:
            raise
        except (ValueError, TypeError) as exc:  # http.client refusing something we were asked to send
            raise Unsendable(type(exc).__name__) from exc
        except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError) as exc:
            raise Unreachable(describe(exc)) from exc

    def close(self) -> None:
        self._manager.clear()
        for manager in self._proxy_managers.values():
            manager.clear()


def describe(exc: BaseException) -> str:
    """A short, URL-free description of a network error, for logs and reasons."""
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError subclass, yet no timeout
        return "connection failed"
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timeout"
    return type(exc).__name__


# Errors reading a response body: the connection cut, a timeout, a malformed chunk.
READ_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError)
# What is left of a body we are done with is read to its end (to keep the connection) up to this.
DRAIN_LIMIT = 64 * 1024


def done(resp: urllib3.BaseHTTPResponse) -> None:
    """Finished with ``resp``: its connection goes back to the pool for the next request (a 304, an
    error document: a keep-alive saves a handshake per hit), or is closed when the rest of the body
    is large, unsized or unreadable."""
    remaining = resp.length_remaining
    if remaining is not None and remaining <= DRAIN_LIMIT:
        try:
            while resp.read(DRAIN_LIMIT, decode_content=False):
                pass
        except READ_ERRORS:
            pass
        else:
            resp.release_conn()
            return
    resp.close()
    resp.release_conn()  # its slot back; the pool reconnects a closed connection when it is next used


def is_timeout(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, UpstreamError) else exc
    return (isinstance(cause, (urllib3.exceptions.TimeoutError, TimeoutError))
            and not isinstance(cause, urllib3.exceptions.NewConnectionError))
