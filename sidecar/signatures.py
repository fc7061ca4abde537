"""Local verification of S3 request signatures: presigned URLs (query-string SigV2 and SigV4) and
requests signed in the ``Authorization`` header (an SDK pointed at the proxy, ``sidecar.sdk``).

This module owns one question: *would S3 accept this signature?*  For the
``verify`` access mode, about a presigned GET/HEAD (``verify_presigned``); for
any header-signed request, whatever the access mode (``verify_header_signed``).
Both forms of each version share one canonical request / string to sign.
It answers from the configured signing keys alone,
without a round trip to S3, and says why not in S3's own terms (status, error
code, message).  (The ``AKID:SECRET`` key list is parsed by ``s3cache.config``
and the XML error body is written by ``sidecar.s3errors``.)

It is pure: no I/O, the clock is a parameter, and no request input can make it
raise -- every answer is a ``Verdict``.  It runs on every cached hit, so the
hot path avoids per-call regex compilation and caches SigV4 signing keys.

What is signed, and how S3 reads it (matched against botocore's signers):

- SigV2 signs the path *as sent*, still percent-encoded: botocore's
  HmacV1QueryAuth puts the URL path (``/bucket/a%20b%2Bc``) in the
  StringToSign, and the S3 spec says "the un-decoded Request-URI".  So the
  resource is ``raw_path`` byte for byte; re-encoding it would break
  signatures from clients that encode differently (``!`` vs ``%21``).  With
  virtual-hosted addressing the resource is still ``/bucket`` + path.  The
  sub-resources (``response-*`` overrides, ``versionId`` ...) are appended
  sorted by name, with *decoded* values.
- SigV4 signs S3's canonical URI: the path decoded once, then every byte but
  the unreserved ones and ``/`` re-encoded (S3 does not double-encode), so
  ``%21`` and ``!`` are the same request.  The query is canonicalized the
  same way, pair by pair, and sorted.
- S3 parses ``+`` as a space in the query (form encoding), and in the path
  too.  botocore never emits a raw ``+`` (it sends ``%2B``), so this only
  matters for hand-made URLs -- e.g. a base64 SigV2 ``Signature`` whose ``+``
  was not escaped fails here exactly as it fails at S3.
"""

from __future__ import annotations

import base64
import calendar
import functools
import hashlib
import hmac
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote_from_bytes, unquote_to_bytes

from s3cache.httpdate import parse_http_date

__all__ = ["Verdict", "canonical_target", "header_signed", "verify_header_signed", "verify_presigned"]

log = logging.getLogger("sidecar.signatures")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    status: int   # 200 when ok, else 403 (400 for malformed SigV4 parameters or mixed mechanisms)
    code: str     # "" when ok, else the S3 error code
    message: str  # S3-like; never carries a secret or an expected signature


OK = Verdict(True, 200, "", "")

V4_ALGORITHM = "AWS4-HMAC-SHA256"
V4_MAX_EXPIRES = 604800          # S3's limit: one week
V4_CLOCK_SKEW = 15 * 60          # how far in the future X-Amz-Date may be
V4_MARKERS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature")
V4_REQUIRED = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature",
               "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Expires")
V4_SINGLE = V4_REQUIRED + ("X-Amz-Security-Token", "X-Amz-Content-Sha256")
V2_REQUIRED = ("AWSAccessKeyId", "Expires", "Signature")
V2_MARKERS = ("AWSAccessKeyId", "Signature")
UNSIGNED_PAYLOAD = b"UNSIGNED-PAYLOAD"

# Query parameters that belong to the SigV2 CanonicalizedResource: botocore's
# HmacV1Auth.QSAOfInterest plus the sub-resources S3 added later.  Anything
# else in the query is not signed under SigV2 (S3 ignores it too).
V2_SUBRESOURCES = frozenset({
    "accelerate", "acl", "analytics", "cors", "defaultObjectAcl", "delete",
    "encryption", "intelligent-tiering", "inventory", "legal-hold",
    "lifecycle", "location", "logging", "metrics", "notification",
    "object-lock", "ownershipControls", "partNumber", "policy",
    "policyStatus", "publicAccessBlock", "replication", "requestPayment",
    "restore", "retention", "select", "select-type", "storageClass",
    "tagging", "torrent", "uploadId", "uploads", "versionId", "versioning",
    "versions", "website",
    "response-cache-control", "response-content-disposition",
    "response-content-encoding", "response-content-language",
    "response-content-type", "response-expires",
})

_MISMATCH = ("The request signature we calculated does not match the signature you provided. "
             "Check your key and signing method.")
_V4_MISSING = ("Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
               "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
_V2_MISSING = "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters"
_BAD_CREDENTIAL = ("Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; "
                   'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".')
_BAD_DATE = "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""

# Compiled once: this runs on every hit.
_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z", re.ASCII)
_DIGITS = re.compile(r"\d{1,12}", re.ASCII)   # 12 digits reach year 33658: plenty for epoch seconds
_EXPIRES = re.compile(r"\d{1,6}", re.ASCII)
_YMD = re.compile(r"\d{8}", re.ASCII)
_SIGNED_HEADER = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+", re.ASCII)
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
# Characters XML 1.0 cannot carry at all, not even as character references.


def _deny(code: str, message: str) -> Verdict:
    return Verdict(False, 403, code, message)


def _malformed(message: str) -> Verdict:
    return Verdict(False, 400, "AuthorizationQueryParametersError", message)


def _raw_bytes(s: str) -> bytes:
    # WSGI hands the request line over as latin-1 text, so latin-1 recovers the
    # bytes the client sent; anything wider came from a caller holding real text.
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _unquote(raw: bytes) -> bytes:
    if b"%" not in raw and b"+" not in raw:
        return raw
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _text(data: bytes) -> str:
    # surrogateescape: invalid UTF-8 still maps to one distinct string, and never raises.
    return data.decode("utf-8", "surrogateescape")


class _Query:
    """A raw query split into decoded pairs, with first-value and count lookups by name."""

    __slots__ = ("pairs", "first", "count")

    def __init__(self, raw_query: str) -> None:
        # (decoded name, the same as text, decoded value or None when there is no '=')
        self.pairs: list[tuple[bytes, str, bytes | None]] = []
        self.first: dict[str, bytes] = {}
        self.count: dict[str, int] = {}
        for part in _raw_bytes(raw_query).split(b"&"):
            if not part:
                continue
            name, eq, value = part.partition(b"=")
            bname = _unquote(name)
            dname = _text(bname)
            dvalue = _unquote(value) if eq else None
            self.pairs.append((bname, dname, dvalue))
            if dname in self.count:
                self.count[dname] += 1
            else:
                self.count[dname] = 1
                self.first[dname] = dvalue or b""

    def has_any(self, names: tuple[str, ...]) -> bool:
        return any(n in self.count for n in names)

    def text(self, name: str) -> str:
        return _text(self.first.get(name, b""))


def verify_presigned(method: str, raw_path: str, raw_query: str, host: str, keys: Mapping[str, str],
                     now: float | None = None, headers: Mapping[str, str] | None = None, *,
                     bucket: str | None = None) -> Verdict:
    """Would S3 serve this presigned request?  A Verdict, never an exception.

    ``raw_path``/``raw_query`` are exactly as the client sent them (still
    percent-encoded, query without '?').  ``host`` is the Host S3 would have
    seen -- the endpoint the URL was signed for, not the proxy's.  ``keys``
    maps access key id to secret.  ``headers`` are the client's request
    headers (any case).  ``bucket`` set means virtual-hosted addressing:
    ``raw_path`` is just ``/key`` and ``host`` already names the bucket.
    """
    try:
        return _verify(method, raw_path, raw_query, host, keys,
                       time.time() if now is None else now, headers or {}, bucket)
    except Exception:  # noqa: BLE001 -- fail closed: a verifier bug must never open the cache
        log.exception("presigned URL verification failed unexpectedly; denying")
        return _deny("AccessDenied", "Access Denied")


def _verify(method: str, raw_path: str, raw_query: str, host: str, keys: Mapping[str, str],
            now: float, headers: Mapping[str, str], bucket: str | None) -> Verdict:
    if not math.isfinite(now):
        return _deny("AccessDenied", "Access Denied")
    query = _Query(raw_query)
    lheaders = {str(k).lower(): str(v) for k, v in headers.items()}
    v4 = query.has_any(V4_MARKERS)
    v2 = query.has_any(V2_MARKERS)
    if v4 and v2:
        return _malformed("Only one auth mechanism allowed; found both SigV2 (Signature, AWSAccessKeyId) "
                          "and SigV4 (X-Amz-*) query parameters")
    if (v4 or v2) and "authorization" in lheaders:
        return _malformed("Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                          "Signature query string parameter or the Authorization header should be specified")
    if v4:
        return _verify_v4(method, raw_path, query, host, keys, now, lheaders)
    if v2:
        return _verify_v2(method, raw_path, query, keys, now, lheaders, bucket)
    if "authorization" in lheaders:
        return _deny("AccessDenied", "Requests signed in the Authorization header cannot be verified by "
                                     "the cache; use a presigned URL")
    return _deny("AccessDenied", "Anonymous access is forbidden for this operation")


# --- signed in the Authorization header --------------------------------------------

V4_HEADER_PREFIX = V4_ALGORITHM + " "
V2_HEADER_PREFIX = "AWS "
MAX_SKEW = 15 * 60               # S3's RequestTimeTooSkewed limit, either way
_SKEWED = "The difference between the request time and the current time is too large."
_NO_DATE = "AWS authentication requires a valid Date or x-amz-date header"
_V4_HEADER_FIELDS = ("Credential", "SignedHeaders", "Signature")
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def header_signed(headers: Mapping[str, str]) -> bool:
    """Whether the request carries an Authorization header (an SDK's signature, for S3 or for us)."""
    return any(str(k).lower() == "authorization" for k in headers.keys())


def verify_header_signed(method: str, raw_path: str, raw_query: str, host: str, headers: Mapping[str, str],
                         keys: Mapping[str, str], now: float | None = None, *,
                         bucket: str | None = None) -> Verdict:
    """Would S3 accept this request's ``Authorization`` header (SigV4 or SigV2)?  A Verdict, never an exception.

    The client signed the request it sent to the proxy: ``raw_path``/``raw_query``
    as sent, ``host`` the Host header it sent (port included).  ``bucket`` set
    means virtual-hosted addressing (SigV2 signs ``/bucket`` + path).
    """
    try:
        return _verify_header(method, raw_path, raw_query, host, headers, keys,
                              time.time() if now is None else now, bucket)
    except Exception:  # noqa: BLE001 -- fail closed
        log.exception("header signature verification failed unexpectedly; denying")
        return _deny("AccessDenied", "Access Denied")


def _header_malformed(message: str) -> Verdict:
    return Verdict(False, 400, "AuthorizationHeaderMalformed", f"The authorization header is malformed; {message}")


def _verify_header(method: str, raw_path: str, raw_query: str, host: str, headers: Mapping[str, str],
                   keys: Mapping[str, str], now: float, bucket: str | None) -> Verdict:
    if not math.isfinite(now):
        return _deny("AccessDenied", "Access Denied")
    query = _Query(raw_query)
    lheaders = {str(k).lower(): str(v) for k, v in headers.items()}
    auth = lheaders.get("authorization", "")
    if query.has_any(V4_MARKERS) or query.has_any(V2_MARKERS):
        return Verdict(False, 400, "InvalidArgument",
                       "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature "
                       "query string parameter or the Authorization header should be specified")
    if auth.startswith(V4_HEADER_PREFIX):
        return _verify_v4_header(method, raw_path, query, host, lheaders, keys, now, auth[len(V4_HEADER_PREFIX):])
    if auth.startswith(V2_HEADER_PREFIX):
        return _verify_v2_header(method, raw_path, query, lheaders, keys, now, bucket, auth[len(V2_HEADER_PREFIX):])
    return Verdict(False, 400, "InvalidArgument", "Unsupported Authorization Type")


def _skewed(signed_at: float, now: float) -> Verdict | None:
    if abs(now - signed_at) > MAX_SKEW:
        return _deny("RequestTimeTooSkewed", _SKEWED)
    return None


def _verify_v4_header(method: str, raw_path: str, query: _Query, host: str, headers: dict[str, str],
                      keys: Mapping[str, str], now: float, params: str) -> Verdict:
    fields: dict[str, str] = {}
    for part in params.split(","):
        name, eq, value = part.strip().partition("=")
        if eq and name in _V4_HEADER_FIELDS and name not in fields:
            fields[name] = value.strip()
    if any(not fields.get(f) for f in _V4_HEADER_FIELDS):
        return _header_malformed("it must hold Credential, SignedHeaders and Signature.")
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or not scope[0] or not scope[2] or not _YMD.fullmatch(scope[1]):
        return _header_malformed('the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".')
    akid, cdate, region, service, terminal = scope
    if service != "s3" or terminal != "aws4_request":
        return _header_malformed(f'incorrect service or terminal in the Credential; this endpoint is "s3", '
                                 f'"aws4_request".')
    amz_date = headers.get("x-amz-date", "")
    signed_at = _parse_amz_date(amz_date)
    if signed_at is None:
        return _deny("AccessDenied", _NO_DATE)
    if cdate != amz_date[:8]:
        return _header_malformed("Invalid credential date. Date is not the same as X-Amz-Date.")
    signed_headers = fields["SignedHeaders"].split(";")
    if ("host" not in signed_headers or signed_headers != sorted(set(signed_headers))
            or not all(_SIGNED_HEADER.fullmatch(h) for h in signed_headers)):
        return _header_malformed("SignedHeaders must be lower-case, sorted, unique, and include host.")
    payload = headers.get("x-amz-content-sha256")
    if payload is None:
        return Verdict(False, 400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    if payload != UNSIGNED_PAYLOAD.decode() and not _HEX64.fullmatch(payload) and not payload.startswith("STREAMING-"):
        return Verdict(False, 400, "InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                                                      "STREAMING-..., or a valid sha256 value.")
    secret = keys.get(akid)
    if secret is None:
        return _deny("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    skew = _skewed(signed_at, now)
    if skew is not None:
        return skew
    unsigned = _v4_unsigned_amz(headers, signed_headers)
    if unsigned is not None:
        return unsigned
    return _v4_check(method, raw_path, query, {**headers, "host": host}, signed_headers, _raw_bytes(payload),
                     amz_date, cdate, region, secret, _raw_bytes(fields["Signature"]))


def _verify_v2_header(method: str, raw_path: str, query: _Query, headers: dict[str, str],
                      keys: Mapping[str, str], now: float, bucket: str | None, params: str) -> Verdict:
    akid, sep, signature = params.strip().partition(":")
    if not sep or not akid or not signature:
        return Verdict(False, 400, "InvalidArgument",
                       "AWS authorization header is invalid.  Expected AwsAccessKeyId:signature")
    secret = keys.get(akid)
    if secret is None:
        return _deny("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    # x-amz-date, when sent, is the request's time (signed among the x-amz-* headers); Date then signs as empty.
    date = headers.get("x-amz-date", headers.get("date"))
    signed_at = parse_http_date(date)
    if signed_at is None:
        return _deny("AccessDenied", _NO_DATE)
    skew = _skewed(signed_at, now)
    if skew is not None:
        return skew
    date_field = "" if "x-amz-date" in headers else date
    return _v2_check(method, date_field, raw_path, query, headers, bucket, secret, _raw_bytes(signature),
                     in_query=False)


# --- SigV2 ------------------------------------------------------------------


def _verify_v2(method: str, raw_path: str, query: _Query, keys: Mapping[str, str], now: float,
               headers: Mapping[str, str], bucket: str | None) -> Verdict:
    # S3 answers a malformed SigV2 query with 403 AccessDenied (unlike SigV4's 400), in this order.
    if any(query.count.get(p) != 1 for p in V2_REQUIRED):
        # Missing, or repeated: with two values we could not say which one S3 would read.
        return _deny("AccessDenied", _V2_MISSING)
    secret = keys.get(query.text("AWSAccessKeyId"))
    if secret is None:
        return _deny("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    expires = query.text("Expires")
    if not _DIGITS.fullmatch(expires):
        return _deny("AccessDenied", f"Invalid date (should be seconds since epoch): {expires[:64]}")
    if int(expires) < now:
        return _deny("AccessDenied", "Request has expired")
    provided = query.first["Signature"]
    return _v2_check(method, expires, raw_path, query, headers, bucket, secret, provided, in_query=True)


def _v2_check(method: str, date: str, raw_path: str, query: _Query, headers: Mapping[str, str],
              bucket: str | None, secret: str, provided: bytes, *, in_query: bool) -> Verdict:
    """The one SigV2 string to sign, for the query form (``date`` is Expires) and the header form."""
    key = secret.encode("utf-8", "surrogatepass")
    for resource in _v2_resources(raw_path, query, bucket):
        string_to_sign = _v2_string_to_sign(method, date, resource, query, headers, in_query)
        expected = base64.b64encode(hmac.digest(key, string_to_sign, "sha1"))
        if hmac.compare_digest(expected, provided):
            return OK
    return _deny("SignatureDoesNotMatch", _MISMATCH)


def _v2_resources(raw_path: str, query: _Query, bucket: str | None) -> list[bytes]:
    """The CanonicalizedResource S3 computes, and botocore's variant where they differ.

    They differ only for a sub-resource with an empty value (``?versionId=``):
    botocore signs ``versionId=``, the spec (and S3-compatible servers) sign
    ``versionId``.  Both name the same request, so both are accepted.
    """
    path = _raw_bytes(raw_path)
    if bucket is not None:
        path = b"/" + bucket.encode("utf-8", "surrogatepass") + (path if path.startswith(b"/") else b"/" + path)
    if bucket is None and path.count(b"/") == 1 and len(path) > 1:
        # A path-style bucket request (``/bucket``): botocore signs ``/bucket/``, as for virtual-hosted.
        return [r for p in (path, path + b"/") for r in _v2_resources(p.decode("latin-1"), query, "")]
    if bucket == "":
        path = path[1:]
    subs = [(dname, value) for _, dname, value in query.pairs if dname in V2_SUBRESOURCES]
    if not subs:
        return [path]
    # A stable sort by name only, as botocore does: repeated names keep their order.
    subs.sort(key=lambda s: s[0])
    spec = path + b"?" + b"&".join(
        name.encode("utf-8", "surrogateescape") + (b"=" + value if value else b"") for name, value in subs)
    if not any(value == b"" for _, value in subs):
        return [spec]
    boto = path + b"?" + b"&".join(
        name.encode("utf-8", "surrogateescape") + (b"" if value is None else b"=" + value) for name, value in subs)
    return [spec, boto]


def _v2_string_to_sign(method: str, date: str, resource: bytes, query: _Query,
                       headers: Mapping[str, str], in_query: bool = True) -> bytes:
    # Presigned, Expires takes the place of Date, and a query-string signer may carry the
    # signed headers in the query (botocore moves Content-Type, Content-MD5 and x-amz-*
    # there); S3 reads them as headers.  Signed in the header, they are headers only.
    md5 = headers.get("content-md5")
    md5 = _raw_bytes(md5) if md5 is not None else query.first.get("content-md5", b"") if in_query else b""
    ctype = headers.get("content-type")
    ctype = _raw_bytes(ctype) if ctype is not None else query.first.get("content-type", b"") if in_query else b""
    amz: dict[bytes, list[bytes]] = {}
    for name, value in headers.items():
        if name.startswith("x-amz-"):
            amz.setdefault(_raw_bytes(name), []).append(_raw_bytes(value).strip())
    from_headers = set(amz)
    for bname, _, value in query.pairs if in_query else ():
        lname = bname.lower()
        if lname.startswith(b"x-amz-") and lname not in from_headers:
            amz.setdefault(lname, []).append((value or b"").strip())
    amz_lines = b"".join(name + b":" + b",".join(values) + b"\n" for name, values in sorted(amz.items()))
    return b"\n".join((_raw_bytes(method.upper()), md5.strip(), ctype.strip(), _raw_bytes(date),
                       amz_lines + resource))


# --- SigV4 ------------------------------------------------------------------


def _verify_v4(method: str, raw_path: str, query: _Query, host: str, keys: Mapping[str, str], now: float,
               headers: Mapping[str, str]) -> Verdict:
    if any(p not in query.count for p in V4_REQUIRED):
        return _malformed(_V4_MISSING)
    if any(query.count.get(p, 0) > 1 for p in V4_SINGLE):
        return _malformed("Each X-Amz-* authentication parameter may appear only once")
    if query.text("X-Amz-Algorithm") != V4_ALGORITHM:
        return _malformed('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    scope = query.text("X-Amz-Credential").split("/")
    if len(scope) != 5 or not scope[0] or not scope[2] or not _YMD.fullmatch(scope[1]):
        return _malformed(_BAD_CREDENTIAL)
    akid, cdate, region, service, terminal = scope
    if service != "s3":
        return _malformed(f'Error parsing the X-Amz-Credential parameter; incorrect service "{service[:32]}". '
                          'This endpoint belongs to "s3".')
    if terminal != "aws4_request":
        return _malformed(f'Error parsing the X-Amz-Credential parameter; incorrect terminal "{terminal[:32]}". '
                          'This endpoint uses "aws4_request".')
    amz_date = query.text("X-Amz-Date")
    signed_at = _parse_amz_date(amz_date)
    if signed_at is None:
        return _malformed(_BAD_DATE)
    if cdate != amz_date[:8]:
        return _malformed("Invalid credential date. Date is not the same as X-Amz-Date.")
    expires = query.text("X-Amz-Expires")
    if not _EXPIRES.fullmatch(expires):
        return _malformed("X-Amz-Expires should be a number")
    if not 1 <= int(expires) <= V4_MAX_EXPIRES:
        return _malformed("X-Amz-Expires must be between 1 and 604800 seconds (one week)")
    signed_headers = query.text("X-Amz-SignedHeaders").split(";")
    if ("host" not in signed_headers or signed_headers != sorted(set(signed_headers))
            or not all(_SIGNED_HEADER.fullmatch(h) for h in signed_headers)):
        return _malformed("X-Amz-SignedHeaders must be lower-case, sorted, unique, and include host")

    secret = keys.get(akid)
    if secret is None:
        return _deny("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    if signed_at + int(expires) < now:
        return _deny("AccessDenied", "Request has expired")
    if signed_at > now + V4_CLOCK_SKEW:
        return _deny("AccessDenied", "Request is not valid yet")
    unsigned = _v4_unsigned_amz(headers, signed_headers)
    if unsigned is not None:
        return unsigned
    payload = query.first.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    return _v4_check(method, raw_path, query, {**headers, "host": host.lower()}, signed_headers, payload,
                     amz_date, cdate, region, secret, query.first["X-Amz-Signature"])


def _v4_unsigned_amz(headers: Mapping[str, str], signed_headers: list[str]) -> Verdict | None:
    unsigned = sorted(h for h in headers if h.startswith("x-amz-") and h not in signed_headers)
    if unsigned:
        # S3 insists that every x-amz-* header sent is covered by the signature.
        return _deny("AccessDenied", "There were headers present in the request which were not signed: "
                     + ", ".join(unsigned[:8])[:256])
    return None


def _v4_check(method: str, raw_path: str, query: _Query, headers: Mapping[str, str], signed_headers: list[str],
              payload: bytes, amz_date: str, cdate: str, region: str, secret: str, provided: bytes) -> Verdict:
    """The one SigV4 canonical request and string to sign, for the query and the header form alike.

    ``headers`` (lower-case names) hold the value of every signed header, ``host`` included.
    """
    header_lines = []
    for name in signed_headers:
        value = headers.get(name)
        if value is None:
            # The signer fixed a header value this request does not carry.
            return _deny("SignatureDoesNotMatch", _MISMATCH)
        # Trimall on bytes: only ASCII whitespace collapses (str.split would also eat NBSP).
        header_lines.append(name.encode("ascii") + b":" + b" ".join(_raw_bytes(value).split()) + b"\n")
    canonical = b"\n".join((
        _raw_bytes(method.upper()),
        _v4_canonical_uri(raw_path),
        _v4_canonical_query(query),
        b"".join(header_lines),
        ";".join(signed_headers).encode("ascii"),
        payload,
    ))
    string_to_sign = b"\n".join((
        V4_ALGORITHM.encode("ascii"),
        amz_date.encode("ascii"),
        f"{cdate}/{region}/s3/aws4_request".encode("utf-8", "surrogateescape"),
        hashlib.sha256(canonical).hexdigest().encode("ascii"),
    ))
    key = _v4_signing_key(secret, cdate, region)
    expected = hmac.digest(key, string_to_sign, "sha256").hex().encode("ascii")
    if hmac.compare_digest(expected, provided):
        return OK
    return _deny("SignatureDoesNotMatch", _MISMATCH)


def _parse_amz_date(value: str) -> int | None:
    m = _AMZ_DATE.fullmatch(value)
    if m is None:
        return None
    y, mo, d, h, mi, s = map(int, m.groups())
    if not (1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1] and h < 24 and mi < 60 and s < 60):
        return None
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


def _v4_canonical_uri(raw_path: str) -> bytes:
    raw = _raw_bytes(raw_path)
    return quote_from_bytes(_unquote(raw), safe="/").encode("ascii") or b"/"


def _v4_canonical_query(query: _Query) -> bytes:
    encoded = sorted(
        (_uri_encode(name), _uri_encode(value or b""))
        for name, dname, value in query.pairs
        if dname != "X-Amz-Signature"
    )
    return b"&".join(n + b"=" + v for n, v in encoded)


def _uri_encode(data: bytes) -> bytes:
    # Most parameters (dates, hex, algorithm names) are all unreserved: skip quoting.
    if not data.rstrip(_UNRESERVED):
        return data
    return quote_from_bytes(data, safe="").encode("ascii")


def canonical_target(raw_path: str, raw_query: str) -> str:
    """The request target in S3's canonical encoding, naming what the raw one names for S3.

    The path decoded once and every byte but the unreserved ones and ``/``
    encoded; each query pair the same way, in the client's order.  A signer
    that signs the target as written (botocore) then signs what S3 computes.
    """
    target = _v4_canonical_uri(raw_path)
    pairs = [_uri_encode(name) + b"=" + _uri_encode(value or b"") for name, _, value in _Query(raw_query).pairs]
    if pairs:
        target += b"?" + b"&".join(pairs)
    return target.decode("ascii")


@functools.lru_cache(maxsize=256)
def _v4_signing_key(secret: str, date: str, region: str) -> bytes:
    # Four chained HMACs that only change once a day per key and region.
    key = b"AWS4" + secret.encode("utf-8", "surrogatepass")
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.digest(key, part.encode("utf-8", "surrogateescape"), "sha256")
    return key
