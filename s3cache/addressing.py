"""Which bucket a request is for, and which upstream URL its signature was made for.

Three addressing styles reach the same cache entry ``objects/<bucket>/<key>``:

- path-style ``/bucket/key`` (the default): upstream ``S3CACHE_UPSTREAM/bucket/key``;
- virtual-hosted ``bucket.<S3CACHE_DOMAIN>/key`` (wildcard DNS to the proxy):
  upstream ``<scheme>://bucket.<upstream host>/key``;
- a host that fronts one bucket, ``S3CACHE_BUCKET``: ``/key`` on any host,
  upstream ``<scheme>://<S3CACHE_BUCKET>.<upstream host>/key`` — the
  ``http://[bucket].s3.amazonaws.com/`` part of a URL replaced by the proxy's name;
- host-in-path ``/<original host>/<path>`` on a host that names no bucket, for the hosts
  S3CACHE_UPSTREAM_HOSTS allows (``s3cache.upstream_hosts`` says which first segment is a
  host): upstream ``<scheme>://<original host>/<path>``, the bucket from that host or the path.

The redirect and the fetch go to the URL form the client's signature was made
for: SigV4 signs the Host, so a virtual-hosted URL must stay virtual-hosted.
Used by the sidecar (misses, access checks) and the evictor (access-log lines).

Which bucket a Host names is decided here, once (``canonical_host`` and
``Addressing.bucket_for_host``): host names are case-insensitive, may end in
dots and carry a port.  Caddy cannot lower-case, so its bucket ``map`` serves a
virtual-hosted file from disk only for the canonical spelling (lower case, no
trailing dot) and sends every other name under S3CACHE_DOMAIN to the sidecar,
which answers it as a miss under the bucket this module names.  The sidecar
receives the client's Host as sent (``{http.request.hostport}``) and splits off
the port exactly as Go's ``net.SplitHostPort`` does for Caddy's
``{http.request.host}``, so both read one Host the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from s3cache.request_path import BadRequest, ParsedURI, decode_component, parse_uri
from s3cache.upstream_hosts import Refused, UpstreamHosts


@dataclass(frozen=True)
class Resolved:
    parsed: ParsedURI
    virtual: bool        # the bucket came from the Host (or S3CACHE_BUCKET), not the path
    upstream_url: str    # where S3 answers this exact request
    upstream_host: str   # the Host that URL carries (what SigV4 signs)
    host_in_path: bool = False  # /<original host>/<path>: the host came from the path


@dataclass(frozen=True)
class Addressing:
    upstream: str               # scheme://host[:port], normalised by config
    domain: str | None = None   # S3CACHE_DOMAIN, lower case
    bucket: str | None = None   # S3CACHE_BUCKET
    hosts: UpstreamHosts | None = None  # S3CACHE_UPSTREAM_HOSTS; None: no host-in-path URLs

    def bucket_for_host(self, host: str) -> str | None:
        """The bucket a Host header names, or None for path-style.

        ``<name>.<S3CACHE_DOMAIN>`` names bucket ``<name>`` (which parse_uri then checks; an
        empty or invalid name is refused there); any other host names S3CACHE_BUCKET, if set.
        """
        name = canonical_host(host)
        if self.domain and name.endswith("." + self.domain):
            return name[: -len(self.domain) - 1]
        return self.bucket

    def resolve(self, host: str, raw_uri: str) -> Resolved:
        """Raises BadRequest for what S3 would refuse (including a Host naming an invalid bucket)."""
        bucket = self.bucket_for_host(host)
        if bucket is None and self.hosts is not None:
            resolved = self.host_in_path(raw_uri)
            if resolved is not None:
                return resolved
        parsed = parse_uri(raw_uri, bucket=bucket)
        scheme, _, upstream_host = self.upstream.partition("://")
        if bucket is None:
            return Resolved(parsed, False, self.upstream + raw_uri, upstream_host)
        vhost = f"{parsed.bucket}.{upstream_host}"
        return Resolved(parsed, True, f"{scheme}://{vhost}{raw_uri}", vhost)

    def host_in_path(self, raw_uri: str) -> Resolved | None:
        """``/<original host>/<path>?<query>``: the URL the client was given, byte for byte, is
        ``<scheme>://<original host>/<path>?<query>``.  None when the first segment is a bucket."""
        raw_path, sep, raw_query = raw_uri.partition("?")
        if not raw_path.startswith("/"):
            return None  # parse_uri refuses it
        raw_segment, slash, rest = raw_path[1:].partition("/")
        try:
            decoded = decode_component(raw_segment, "bucket name")
        except BadRequest:
            return None  # the path-style reading refuses it the same way
        try:
            found = self.hosts.classify(raw_segment, decoded)
        except Refused as exc:
            raise BadRequest(exc.status, exc.code, exc.message) from None
        if found is None:
            return None
        target = slash + rest if slash else "/"
        parsed = parse_uri(target + sep + raw_query, bucket=found.bucket)
        return Resolved(parsed, found.bucket is not None, found.origin + target + sep + raw_query, found.segment,
                        host_in_path=True)

    def resolve_url(self, url: str) -> Resolved:
        """An S3 URL as a client holds it (for `s3cache warm`): path-style, virtual-hosted under the
        upstream's host, or under S3CACHE_DOMAIN / S3CACHE_BUCKET like a request to the proxy."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadRequest(400, "InvalidURI", "not an http(s) URL")
        raw_uri = url.split(parts.netloc, 1)[1].split("#", 1)[0] or "/"
        upstream_name = canonical_host(self.upstream.partition("://")[2])
        name = canonical_host(parts.netloc)
        if name.endswith("." + upstream_name):
            return Addressing(self.upstream, domain=upstream_name).resolve(parts.netloc, raw_uri)
        if name == upstream_name:
            return Addressing(self.upstream).resolve(parts.netloc, raw_uri)
        if self.hosts is not None and self.hosts.match(parts.netloc) is not None:
            resolved = self.host_in_path("/" + parts.netloc + raw_uri)
            if resolved is not None:
                return resolved
        return self.resolve(parts.netloc, raw_uri)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def canonical_host(host: str) -> str:
    """The name a Host header means: the port dropped (as Caddy does), ASCII lower case (DNS
    names are case-insensitive; Caddy's ``(?i)`` regexes fold ASCII only), trailing dots stripped."""
    return split_host_port(host.strip(" \t")).translate(_ASCII_LOWER).rstrip(".")


def split_host_port(hostport: str) -> str:
    """The host part of ``hostport`` exactly as Caddy's ``{http.request.host}`` gives it: Go's
    ``net.SplitHostPort``, and the whole value unchanged wherever that reports an error.

    ``[a.b]:80`` is ``a.b`` (Go does not check what is inside brackets); ``::1`` and ``a:b:c``
    stay whole.  Mirrored rather than improved: any difference would let Caddy serve one bucket
    while the sidecar authorizes another.
    """
    i = hostport.rfind(":")
    if i < 0:
        return hostport  # missing port
    j = k = 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != i:
            return hostport  # missing ']', missing port, or too many colons
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            return hostport  # too many colons
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return hostport  # unexpected bracket
    return host
