"""Grants: a URL the sidecar accepted once, recorded where Caddy serves its later hits without asking again.

A grant is an empty file ``grants/<bucket>/<key>/<name>/<etag>`` (``Layout.grant_dir``).
Caddy builds the same name from the request (the Caddyfile's ``grant_*``
maps) and tests it with its ``file`` matcher; only then, and only while the
URL has not expired by Caddy's own check, does file_server answer alone.

    <window>_<form>_<method>_v4_<X-Amz-Signature>_<X-Amz-Date>_<X-Amz-Expires>/<etag>
    <window>_<form>_<method>_v2_<Signature>_<Expires>/<etag>

- ``window``: the unix time less its last N digits, S3CACHE_GRANT_TTL = 10^N
  seconds: a grant serves until the end of the window it was made in (at
  most S3CACHE_GRANT_TTL seconds), then the next hit is checked again.
- ``form``: ``v`` when the bucket came from the Host (virtual-hosted, or
  S3CACHE_BUCKET), ``p`` for path-style; both reach the same file, but a
  signature is made for one form (SigV4 signs the Host).
- ``method``: GET or HEAD (S3 signs the method).
- the signature and the expiry parameters, verbatim: a URL with another
  expiry, another signature or for another object (another directory) has no
  grant.  A SigV2 signature with a ``/`` cannot be a file name: such URLs are
  always checked.
- ``etag``: S3's ETag without its quotes, which Caddy sends on grant hits
  (file_server's own is mtime+size); Caddy finds it with a glob (``<name>/*``)
  and reads it from the matched path.  A directory of its own per grant, so
  that glob reads one entry, however many URLs an object has grants for.

Only what file_server alone answers as the checked path would is granted
(``grantable``): no response-* or other parameter beyond the signature's own,
no signed header but the Host, an object with a plain S3 ETag.  Caddy also
takes the checked path for conditional requests, an Authorization header and
objects marked ``headers``.

A grant dies with its window, with the URL's expiry (Caddy's check), and with
the object: every removal of an entry (``s3cache.entries``) and every fill
that installs a new object removes the object's grants, and a grant written
while its object changed is withdrawn (``record``).  The evictor removes those
of past windows (``evictor.housekeeping.sweep_grants``) and counts the rest toward the cache's bytes.
"""

from __future__ import annotations

import calendar
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import parse_qsl

from s3cache.layout import Layout, ObjectRef

# What the signature itself consists of; any other parameter (response-*, a sub-resource ...) is checked.
V4_PARAMS = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                       "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token", "x-id"})
V2_PARAMS = frozenset({"AWSAccessKeyId", "Signature", "Expires", "x-amz-security-token", "x-id"})

# The shapes the Caddyfile's grant_name map accepts (keep in step with it).
_V4_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_V4_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_V4_EXPIRES = re.compile(r"[0-9]{1,6}")
_V2_SIGNATURE = re.compile(r"[A-Za-z0-9+]{27}=")
_V2_EXPIRES = re.compile(r"[0-9]{1,12}")
# S3's ETag of a plain or multipart upload; Caddy puts the quotes back.
_ETAG = re.compile(r'"([0-9a-f]{32}(?:-[0-9]{1,5})?)"')
_WINDOW = re.compile(rb"([0-9]{1,10})_")

# Request headers a SigV2 signature may cover besides the path (x-amz-* too): a URL used with them is checked.
_V2_SIGNED_HEADERS = ("content-md5", "content-type")


def window(ttl: int, now: float | None = None) -> str:
    """The window a grant made now belongs to, as Caddy writes it ({time.now.unix} less log10(ttl) digits)."""
    return str(int(time.time() if now is None else now) // ttl)


def window_of(name: bytes) -> int | None:
    """The window a grant's file name says it belongs to (None: not a grant's name)."""
    m = _WINDOW.match(name)
    return int(m.group(1)) if m else None


def url_part(method: str, virtual: bool, raw_query: str, headers: Mapping[str, str] | None = None) -> str | None:
    """The part of a grant's name that the URL decides (no window, no ETag), or None if it cannot have one."""
    if method not in ("GET", "HEAD"):
        return None
    pairs = parse_qsl(raw_query, keep_blank_values=True)
    params = dict(pairs)
    if len(params) != len(pairs):
        return None  # a parameter twice: which one counts is for the check to say, every time
    form = "v" if virtual else "p"
    lowered = {k.lower() for k in (headers.keys() if headers is not None else ())}
    if set(params) <= V4_PARAMS and "X-Amz-Signature" in params:
        sig, date, expires = params["X-Amz-Signature"], params.get("X-Amz-Date", ""), params.get("X-Amz-Expires", "")
        if params.get("X-Amz-SignedHeaders") != "host":
            return None  # a signed header (a Range, say) restricts the URL: every use is checked
        if _V4_SIGNATURE.fullmatch(sig) and _V4_DATE.fullmatch(date) and _V4_EXPIRES.fullmatch(expires):
            return f"{form}_{method}_v4_{sig}_{date}_{expires}"
        return None
    if set(params) <= V2_PARAMS and "Signature" in params:
        sig, expires = params["Signature"], params.get("Expires", "")
        if any(h.startswith("x-amz-") or h in _V2_SIGNED_HEADERS for h in lowered):
            return None
        if _V2_SIGNATURE.fullmatch(sig) and _V2_EXPIRES.fullmatch(expires):
            return f"{form}_{method}_v2_{sig}_{expires}"
    return None


def unexpired(raw_query: str, now: float | None = None) -> bool:
    """Has a URL that can have a grant (``url_part``) not expired yet?  S3's rule, as the Caddyfile checks it."""
    params = dict(parse_qsl(raw_query, keep_blank_values=True))
    now = time.time() if now is None else now
    try:
        if "X-Amz-Signature" in params:
            signed = calendar.timegm(time.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
            return now <= signed + int(params["X-Amz-Expires"])
        return now <= int(params["Expires"])
    except (KeyError, ValueError):
        return False


def etag_part(etag: str | None) -> str | None:
    m = _ETAG.fullmatch(etag or "")
    return m.group(1) if m else None


@dataclass(frozen=True)
class Identity:
    """The object file a check accepted; a grant is withdrawn when the file is another by the time it is written."""
    ino: int
    dev: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path) -> "Identity | None":
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


def path(layout: Layout, ref: ObjectRef, name: str, etag: str):
    return layout.grant_dir(ref) / name / etag


def record(layout: Layout, ref: ObjectRef, name: str, etag: str, checked: Identity) -> bool:
    """Write the grant ``name`` for ``ref``; True if it stands.  Best effort: a grant is only a shortcut."""
    directory = layout.grant_dir(ref) / name
    grant = directory / etag
    for _ in range(3):  # the evictor may prune the directory between makedirs and open
        try:
            directory.mkdir(parents=True, exist_ok=True)
            os.close(os.open(grant, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644))
            break
        except FileNotFoundError:
            continue
        except OSError:
            return False
    else:
        return False
    # A removal or a new fill of the object removes its grants after changing the file: seen changed here,
    # the grant may have been written after that removal, so it goes.
    if Identity.of(layout.object_path(ref)) != checked:
        _unlink(grant)
        try:
            os.rmdir(directory)
        except OSError:
            pass
        return False
    return True


def remove_dir(directory) -> None:
    """Remove an object's grants (str, bytes or Path); nothing there is fine."""
    shutil.rmtree(directory, ignore_errors=True)


def remove(layout: Layout, ref: ObjectRef) -> None:
    remove_dir(layout.grant_dir(ref))


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
