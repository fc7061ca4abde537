"""Which bucket a request is for, and which upstream URL its signature was made for.

Three addressing styles reach the same cache entry ``objects/<bucket>/<key>``:

- path-style ``/bucket/key`` (the default): upstream ``S3CACHE_UPSTREAM/bucket/key``;
- virtual-hosted ``bucket.<S3CACHE_DOMAIN>/key`` (wildcard DNS to the proxy):
  upstream ``<scheme>://bucket.<upstream host>/key``;
- a host that fronts one bucket, ``S3CACHE_BUCKET``: ``/key`` on any host,
  upstream ``<scheme>://<S3CACHE_BUCKET>.<upstream host>/key`` — the
  ``http://[bucket].s3.amazonaws.com/`` part of a URL replaced by the proxy's name.

The redirect and the fetch go to the URL form the client's signature was made
for: SigV4 signs the Host, so a virtual-hosted URL must stay virtual-hosted.
Used by the sidecar (misses, access checks) and the evictor (access-log lines).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from s3cache.request_path import BadRequest, ParsedURI, parse_uri


@dataclass(frozen=True)
class Resolved:
    parsed: ParsedURI
    virtual: bool        # the bucket came from the Host (or S3CACHE_BUCKET), not the path
    upstream_url: str    # where S3 answers this exact request
    upstream_host: str   # the Host that URL carries (what SigV4 signs)


@dataclass(frozen=True)
class Addressing:
    upstream: str               # scheme://host[:port], normalised by config
    domain: str | None = None   # S3CACHE_DOMAIN, lower case
    bucket: str | None = None   # S3CACHE_BUCKET

    def bucket_for_host(self, host: str) -> str | None:
        """The bucket a Host header names, or None for path-style."""
        name = _hostname(host)
        if self.domain and name.endswith("." + self.domain):
            return name[: -len(self.domain) - 1]
        return self.bucket

    def resolve(self, host: str, raw_uri: str) -> Resolved:
        """Raises BadRequest for what S3 would refuse (including a Host naming an invalid bucket)."""
        bucket = self.bucket_for_host(host)
        parsed = parse_uri(raw_uri, bucket=bucket)
        scheme, _, upstream_host = self.upstream.partition("://")
        if bucket is None:
            return Resolved(parsed, False, self.upstream + raw_uri, upstream_host)
        vhost = f"{parsed.bucket}.{upstream_host}"
        return Resolved(parsed, True, f"{scheme}://{vhost}{raw_uri}", vhost)

    def resolve_url(self, url: str) -> Resolved:
        """An S3 URL as a client holds it (for `s3cache warm`): path-style, virtual-hosted under the
        upstream's host, or under S3CACHE_DOMAIN / S3CACHE_BUCKET like a request to the proxy."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadRequest(400, "InvalidURI", "not an http(s) URL")
        raw_uri = url.split(parts.netloc, 1)[1].split("#", 1)[0] or "/"
        upstream_name = _hostname(self.upstream.partition("://")[2])
        name = _hostname(parts.netloc)
        if name.endswith("." + upstream_name):
            return Addressing(self.upstream, domain=upstream_name).resolve(parts.netloc, raw_uri)
        if name == upstream_name:
            return Addressing(self.upstream).resolve(parts.netloc, raw_uri)
        return self.resolve(parts.netloc, raw_uri)


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6]:port
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
