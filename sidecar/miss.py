"""What to do with a cache miss: where to redirect, and whether the object may be filled.

Plain functions of the request (method, raw URI, headers) and the config, so
the rules are testable without HTTP.  The redirect target is the upstream URL
byte for byte: presigned signatures cover the path and query exactly as sent.
A fill sends that same target byte for byte (``sidecar.upstream``), so only a
target that can go out unchanged is ever filled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from s3cache.config import Config
from s3cache.layout import Layout, ObjectRef, Uncacheable
from s3cache.addressing import Resolved
from sidecar.upstream import sendable_url


@dataclass(frozen=True)
class MissPlan:
    location: str
    fill: ObjectRef | None  # None: redirect only
    why_not: str = ""       # why it is not filled (for logs)


def plan_miss(method: str, raw_uri: str, headers: Mapping[str, str], config: Config, layout: Layout,
              host: str = "") -> MissPlan:
    """Raises request_path.BadRequest for requests S3 itself would refuse."""
    resolved = config.addressing.resolve(host, raw_uri)
    return plan_resolved(method, resolved, headers, config, layout)


def plan_resolved(method: str, resolved: Resolved, headers: Mapping[str, str], config: Config,
                  layout: Layout) -> MissPlan:
    parsed = resolved.parsed
    location = resolved.upstream_url

    def redirect_only(why: str) -> MissPlan:
        return MissPlan(location, None, why)

    if method != "GET":
        # HEAD is signed as HEAD: a GET fetch with the same URL would be refused.
        return redirect_only(f"method {method}")
    if not parsed.key:
        return redirect_only("bucket-level request")
    if not sendable_url(location):
        # The fetch must name the very key the file is stored under: a target
        # HTTP cannot carry unchanged (raw non-ASCII, space, control bytes) is
        # left to the client and S3.
        return redirect_only("request target cannot be sent to S3 unchanged")
    if parsed.literal_plus:
        return redirect_only("raw '+' in path (S3 may read it as a space)")
    if parsed.subresources:
        return redirect_only("sub-resource " + ",".join(parsed.subresources))
    if not config.fill_on_range and any(k.lower() == "range" for k in headers.keys()):
        return redirect_only("range request (S3CACHE_FILL_ON_RANGE=off)")
    if any(k.lower() == "authorization" for k in headers.keys()):
        # A header signature names the proxy's host and cannot be replayed to S3.
        return redirect_only("header-signed request")
    ref = parsed.ref
    try:
        layout.object_path(ref)
    except Uncacheable as exc:
        return redirect_only(f"uncacheable key: {exc}")
    return MissPlan(location, ref)
