"""Turn a raw request URI (exactly as the client sent it) into an S3 object reference.

Used by the sidecar for every miss and by the evictor to map access-log lines
back to cache entries, so both read a URI the same way.

S3 percent-decodes the path to get the key; we do the same, strictly: broken
escapes, non-UTF-8 bytes and NUL are client errors, reported the way S3 would
(an error code and message for an S3-style XML body).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from s3cache.layout import MAX_KEY_BYTES, ObjectRef, is_valid_bucket

# Longer raw paths than this are refused before any decoding work.
MAX_RAW_PATH = 8192

_BROKEN_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")

# Query parameters that address something other than the object's current
# bytes (a version, a part, its ACL ...).  Such requests are never cached and
# never served from the cache.  The Caddyfile repeats this list in its
# @subresource matcher; tests/test_caddyfile.py keeps the two in step.
SUBRESOURCES = (
    "acl", "attributes", "legal-hold", "partNumber", "restore", "retention",
    "select", "tagging", "torrent", "uploadId", "uploads", "versionId", "versioning",
)


@dataclass(frozen=True)
class BadRequest(Exception):
    """A request S3 itself would refuse; carries the S3 error code."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class ParsedURI:
    raw_path: str
    raw_query: str  # without the '?'; '' when absent
    has_query: bool
    bucket: str
    key: str  # decoded; '' for bucket-level requests

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.bucket, self.key)

    @property
    def literal_plus(self) -> bool:
        """A raw '+' in the path: S3 may read it as a space, so we cannot be sure which key it is."""
        return "+" in self.raw_path

    @property
    def subresources(self) -> list[str]:
        names = [p.split("=", 1)[0] for p in self.raw_query.split("&") if p]
        return [n for n in names if n in SUBRESOURCES]


def _decode(raw: str, what: str) -> str:
    if _BROKEN_ESCAPE.search(raw):
        raise BadRequest(400, "InvalidURI", f"Couldn't parse the specified URI: broken percent-encoding in the {what}.")
    try:
        # The raw URI arrives as latin-1 text (WSGI); recover its bytes first.
        data = unquote_to_bytes(raw.encode("latin-1"))
        text = data.decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise BadRequest(400, "InvalidURI", f"Couldn't parse the specified URI: the {what} is not UTF-8.") from None
    if "\x00" in text:
        raise BadRequest(400, "InvalidURI", f"Couldn't parse the specified URI: NUL in the {what}.")
    return text


def decode_component(raw: str, what: str) -> str:
    """A percent-encoded path segment or query value, decoded as S3 decodes a key (``+`` stays a plus)."""
    return _decode(raw, what)


def parse_uri(raw_uri: str, bucket: str | None = None) -> ParsedURI:
    """Parse a request URI: path-style ``/bucket/key?query``, or ``/key?query`` when the bucket
    is already known from the Host (virtual-hosted style; see s3cache.addressing).

    Raises BadRequest for anything S3 would refuse.  ``key`` is '' for
    ``/bucket`` and ``/bucket/`` (bucket-level requests).
    """
    raw_path, has_query, raw_query = raw_uri.partition("?")
    if not raw_path.startswith("/"):
        raise BadRequest(400, "InvalidURI", "Couldn't parse the specified URI: the path must start with '/'.")
    if len(raw_path) > MAX_RAW_PATH:
        raise BadRequest(414, "RequestURITooLong", "The request URI is too long.")
    if bucket is None:
        raw_bucket, _, raw_key = raw_path[1:].partition("/")
        bucket = _decode(raw_bucket, "bucket name")
    else:
        raw_key = raw_path[1:]
    if not bucket:
        raise BadRequest(400, "InvalidRequest", "No bucket in the request path.")
    if not is_valid_bucket(bucket):
        raise BadRequest(400, "InvalidBucketName", "The specified bucket is not valid.")
    key = _decode(raw_key, "key")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise BadRequest(400, "KeyTooLongError", "Your key is too long.")
    return ParsedURI(raw_path, raw_query, bool(has_query), bucket, key)
