"""Presigned S3 URL verification (query-string SigV2 and SigV4), from the AWS spec.

This module owns the question "would S3 accept this presigned request?". It
is pure (no I/O, the clock is a parameter) and deliberately does not import
botocore: the tests use it as an independent oracle *against* botocore's
signer, so sharing code with it would prove nothing.

Sources: "Signing and Authenticating REST Requests" (SigV2, incl. "Query
String Request Authentication Alternative") and "Authenticating Requests:
Using Query Parameters (AWS Signature Version 4)" in the S3 developer guide.

Where the two versions differ on the path, S3 differs too:
- SigV2 signs "the path part of the un-decoded HTTP Request-URI", so the
  resource is the raw path byte for byte; re-encoding it breaks the signature.
- SigV4 signs the key URI-encoded once (S3 does not double-encode), so the
  canonical URI is rebuilt from the decoded path and `%21` and `!` are equal.
- S3 decodes a literal '+' in the path as a space (only `%2B` is a plus), in
  the query as in the path; SigV4 canonicalization follows that.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import unquote_to_bytes

# Query parameters that are part of the SigV2 CanonicalizedResource. The spec
# lists the sub-resources and the response-header overrides; the rest are
# sub-resources S3 added later and still signs under SigV2.
V2_SUBRESOURCES = frozenset(
    {
        "accelerate", "acl", "analytics", "cors", "delete", "encryption",
        "intelligent-tiering", "inventory", "legal-hold", "lifecycle",
        "location", "logging", "metrics", "notification", "object-lock",
        "ownershipControls", "partNumber", "policy", "policyStatus",
        "publicAccessBlock", "replication", "requestPayment", "restore",
        "retention", "select", "select-type", "tagging", "torrent", "uploadId",
        "uploads", "versionId", "versioning", "versions", "website",
        "response-cache-control", "response-content-disposition",
        "response-content-encoding", "response-content-language",
        "response-content-type", "response-expires",
    }
)

V4_ALGORITHM = "AWS4-HMAC-SHA256"
V4_MAX_EXPIRES = 604800  # one week, S3's limit for X-Amz-Expires
V4_REQUIRED = (
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature",
    "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Expires",
)
V2_REQUIRED = ("AWSAccessKeyId", "Expires", "Signature")
_MISMATCH = ("The request signature we calculated does not match the signature you provided. "
             "Check your key and signing method.")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


@dataclass(frozen=True)
class Result:
    """Outcome of a check: ok, or the S3 error code and message to send."""

    ok: bool
    version: str  # "v2" or "v4"
    code: str = ""
    message: str = ""
    access_key: str = ""
    # For SignatureDoesNotMatch: what S3 also reports (StringToSign,
    # CanonicalRequest, ...), so a failing test shows what was signed.
    details: tuple[tuple[str, str], ...] = ()


def _fail(version: str, code: str, message: str, access_key: str = "",
          details: tuple[tuple[str, str], ...] = ()) -> Result:
    return Result(False, version, code, message, access_key, details)


def parse_query(raw_query: str) -> list[tuple[bytes, bytes | None]]:
    """Split a raw query string into decoded (name, value) byte pairs.

    A value is None when the parameter has no '=' at all (`?acl`). '+' means
    space, as in any form-encoded query S3 receives.
    """
    pairs: list[tuple[bytes, bytes | None]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, eq, value = part.partition("=")
        pairs.append((_unquote(name), _unquote(value) if eq else None))
    return pairs


def _unquote(s: str) -> bytes:
    return unquote_to_bytes(s.replace("+", "%20").encode("utf-8", "surrogateescape"))


def _text(b: bytes) -> str:
    # surrogateescape keeps invalid UTF-8 byte-exact when encoded back.
    return b.decode("utf-8", "surrogateescape")


def _first(pairs: list[tuple[bytes, bytes | None]]) -> dict[str, str]:
    """Parameter name -> first value (as text; '' for a bare name)."""
    out: dict[str, str] = {}
    for name, value in pairs:
        out.setdefault(_text(name), _text(value or b""))
    return out


def presign_version(raw_query: str) -> str | None:
    """"v4", "v2" or None (no presigned parameters in the query)."""
    names = {_text(n) for n, _ in parse_query(raw_query)}
    if names & {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"}:
        return "v4"
    if names & {"AWSAccessKeyId", "Signature"}:
        return "v2"
    return None


def uri_encode(data: bytes, keep_slash: bool) -> str:
    """AWS UriEncode: every byte but the unreserved ones as %XX (uppercase)."""
    out = []
    for byte in data:
        if byte in _UNRESERVED or (keep_slash and byte == 0x2F):
            out.append(chr(byte))
        else:
            out.append("%%%02X" % byte)
    return "".join(out)


def check(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    credentials: Mapping[str, str],
    now: float | None = None,
    region: str | None = "us-east-1",
    vhost_bucket: str | None = None,
) -> Result | None:
    """Verify a presigned request; None if it carries no presigned parameters.

    raw_path / raw_query are exactly as received (still percent-encoded);
    headers maps lower-case names to values; credentials maps access key id
    to secret. region None accepts any region in a SigV4 credential scope.
    vhost_bucket: the bucket a virtual-hosted Host named; SigV2 then signs
    "/bucket" + path, while SigV4 signs the path as sent (and the Host).
    """
    version = presign_version(raw_query)
    if version is None:
        return None
    now = time.time() if now is None else now
    pairs = parse_query(raw_query)
    headers = {k.lower(): v for k, v in headers.items()}
    if version == "v2":
        v2_path = f"/{vhost_bucket}{raw_path}" if vhost_bucket else raw_path
        return _check_v2(method, v2_path, pairs, headers, credentials, now)
    return _check_v4(method, raw_path, pairs, headers, credentials, now, region)


# --- SigV2 -----------------------------------------------------------------


def v2_string_to_sign(
    method: str, raw_path: str, pairs: list[tuple[bytes, bytes | None]], headers: Mapping[str, str]
) -> str:
    params = _first(pairs)
    # In query-string auth the signer may carry signed headers in the query
    # (botocore moves x-amz-*, Content-MD5 and Content-Type there); S3 reads
    # them as headers. Expires takes the place of Date.
    md5 = headers.get("content-md5", params.get("content-md5", ""))
    ctype = headers.get("content-type", params.get("content-type", ""))
    amz: dict[str, list[str]] = {}
    for name, value in headers.items():
        if name.startswith("x-amz-"):
            amz.setdefault(name, []).append(value.strip())
    for name, value in pairs:
        lname = _text(name).lower()
        if lname.startswith("x-amz-") and lname not in headers:
            amz.setdefault(lname, []).append(_text(value or b"").strip())
    amz_lines = "".join(f"{k}:{','.join(v)}\n" for k, v in sorted(amz.items()))
    return (
        f"{method.upper()}\n{md5.strip()}\n{ctype.strip()}\n{params.get('Expires', '')}\n"
        f"{amz_lines}{v2_canonical_resource(raw_path, pairs)}"
    )


def v2_canonical_resource(raw_path: str, pairs: list[tuple[bytes, bytes | None]]) -> str:
    """Raw (un-decoded) path plus sorted sub-resources with decoded values."""
    subs = []
    for name, value in pairs:
        tname = _text(name)
        if tname in V2_SUBRESOURCES:
            # "append the subresource, its value if it has one"
            subs.append((tname, f"{tname}={_text(value)}" if value else tname))
    subs.sort(key=lambda s: s[0])
    return raw_path + ("?" + "&".join(s for _, s in subs) if subs else "")


def v2_signature(secret: str, string_to_sign: str) -> str:
    mac = hmac.new(secret.encode("utf-8"), string_to_sign.encode("utf-8", "surrogateescape"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def _check_v2(method, raw_path, pairs, headers, credentials, now) -> Result:
    params = _first(pairs)
    if any(p not in params for p in V2_REQUIRED):
        return _fail("v2", "AccessDenied",
                     "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters")
    akid = params["AWSAccessKeyId"]
    secret = credentials.get(akid)
    if secret is None:
        return _fail("v2", "InvalidAccessKeyId",
                     "The AWS Access Key Id you provided does not exist in our records.", akid)
    expires = params["Expires"]
    if not re.fullmatch(r"[0-9]{1,12}", expires):
        return _fail("v2", "AccessDenied", f"Invalid date (should be seconds since epoch): {expires}", akid)
    if int(expires) < now:
        return _fail("v2", "AccessDenied", "Request has expired", akid)
    string_to_sign = v2_string_to_sign(method, raw_path, pairs, headers)
    expected = v2_signature(secret, string_to_sign)
    if not hmac.compare_digest(expected.encode(), params["Signature"].encode("utf-8", "surrogateescape")):
        return _fail("v2", "SignatureDoesNotMatch", _MISMATCH, akid, (
            ("AWSAccessKeyId", akid), ("StringToSign", string_to_sign),
            ("SignatureProvided", params["Signature"])))
    return Result(True, "v2", access_key=akid)


# --- SigV4 -----------------------------------------------------------------


def v4_canonical_uri(raw_path: str) -> str:
    """Decode the path once, then UriEncode every byte except '/' (no double encoding).

    A literal '+' in the path is a space to S3, so it canonicalizes as %20.
    """
    return uri_encode(_unquote(raw_path), keep_slash=True) or "/"


def v4_canonical_query(pairs: list[tuple[bytes, bytes | None]]) -> str:
    encoded = sorted(
        (uri_encode(n, False), uri_encode(v or b"", False))
        for n, v in pairs
        if n != b"X-Amz-Signature"
    )
    return "&".join(f"{n}={v}" for n, v in encoded)


def v4_canonical_request(method, raw_path, pairs, headers, signed_headers: list[str]) -> str:
    params = _first(pairs)
    lines = []
    for name in signed_headers:
        value = headers.get(name, "")
        lines.append(f"{name}:{' '.join(value.split())}\n")
    payload = params.get("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
    return "\n".join([
        method.upper(),
        v4_canonical_uri(raw_path),
        v4_canonical_query(pairs),
        "".join(lines),
        ";".join(signed_headers),
        payload,
    ])


def v4_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def _check_v4(method, raw_path, pairs, headers, credentials, now, region) -> Result:
    params = _first(pairs)
    missing = [p for p in V4_REQUIRED if p not in params]
    if missing:
        return _fail("v4", "AuthorizationQueryParametersError",
                     "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
                     "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
    if params["X-Amz-Algorithm"] != V4_ALGORITHM:
        return _fail("v4", "AuthorizationQueryParametersError",
                     'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    scope = params["X-Amz-Credential"].split("/")
    if len(scope) != 5 or scope[3] != "s3" or scope[4] != "aws4_request" or not re.fullmatch(r"\d{8}", scope[1]):
        return _fail("v4", "AuthorizationQueryParametersError",
                     "Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; "
                     'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".')
    akid, cdate, cregion, service, _ = scope
    amz_date = params["X-Amz-Date"]
    if not re.fullmatch(r"\d{8}T\d{6}Z", amz_date):
        return _fail("v4", "AuthorizationQueryParametersError",
                     "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    if cdate != amz_date[:8]:
        return _fail("v4", "AuthorizationQueryParametersError",
                     "Invalid credential date. Date is not the same as X-Amz-Date.")
    if region is not None and cregion != region:
        return _fail("v4", "AuthorizationQueryParametersError",
                     f"Error parsing the X-Amz-Credential parameter; the region '{cregion}' is wrong; "
                     f"expecting '{region}'")
    expires = params["X-Amz-Expires"]
    if not re.fullmatch(r"[0-9]{1,7}", expires):
        return _fail("v4", "AuthorizationQueryParametersError", "X-Amz-Expires should be a number")
    if int(expires) > V4_MAX_EXPIRES:
        return _fail("v4", "AuthorizationQueryParametersError",
                     "X-Amz-Expires must be less than a week (in seconds) that is; 604800")
    secret = credentials.get(akid)
    if secret is None:
        return _fail("v4", "InvalidAccessKeyId",
                     "The AWS Access Key Id you provided does not exist in our records.", akid)
    try:
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return _fail("v4", "AuthorizationQueryParametersError",
                     "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"", akid)
    if signed_at + int(expires) < now:
        return _fail("v4", "AccessDenied", "Request has expired", akid)
    signed_headers = params["X-Amz-SignedHeaders"].split(";")
    if ("host" not in signed_headers or signed_headers != sorted(set(signed_headers))
            or any(h != h.lower() for h in signed_headers)):
        return _fail("v4", "AuthorizationQueryParametersError",
                     "X-Amz-SignedHeaders must be lower-case, sorted, and include host", akid)
    unsigned = sorted(h for h in headers if h.startswith("x-amz-") and h not in signed_headers)
    if unsigned:
        # S3 insists that every x-amz-* header sent is covered by the signature.
        return _fail("v4", "AccessDenied",
                     "There were headers present in the request which were not signed: " + ", ".join(unsigned), akid)
    canonical = v4_canonical_request(method, raw_path, pairs, headers, signed_headers)
    string_to_sign = "\n".join([
        V4_ALGORITHM, amz_date, "/".join(scope[1:]),
        hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest(),
    ])
    key = v4_signing_key(secret, cdate, cregion, service)
    expected = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), params["X-Amz-Signature"].encode("utf-8", "surrogateescape")):
        return _fail("v4", "SignatureDoesNotMatch", _MISMATCH, akid, (
            ("AWSAccessKeyId", akid), ("StringToSign", string_to_sign),
            ("SignatureProvided", params["X-Amz-Signature"]), ("CanonicalRequest", canonical)))
    return Result(True, "v4", access_key=akid)


# --- SigV4 in the Authorization header (what the proxy sends with its own credentials) ----------


def header_access_key(authorization: str) -> str | None:
    """The access key id of a SigV4 Authorization header, or None for another form."""
    m = re.match(r"AWS4-HMAC-SHA256 +Credential=([^/,\s]+)/", authorization)
    return m.group(1) if m else None


def check_header_v4(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
                    credentials: Mapping[str, str], now: float | None = None,
                    region: str | None = "us-east-1") -> Result:
    """Verify a request signed in a SigV4 Authorization header, as S3 does (15 minutes of clock skew)."""
    now = time.time() if now is None else now
    headers = {k.lower(): v for k, v in headers.items()}
    fields = dict(part.strip().partition("=")[::2] for part in headers["authorization"][len(V4_ALGORITHM):].split(","))
    try:
        scope = fields["Credential"].split("/")
        signed_headers = fields["SignedHeaders"].split(";")
        provided = fields["Signature"]
    except KeyError:
        return _fail("v4", "AuthorizationHeaderMalformed", "The authorization header is malformed.")
    if len(scope) != 5 or scope[3] != "s3" or scope[4] != "aws4_request":
        return _fail("v4", "AuthorizationHeaderMalformed", "The authorization header is malformed.")
    akid, cdate, cregion, service, _ = scope
    if region is not None and cregion != region:
        return _fail("v4", "AuthorizationHeaderMalformed", f"the region '{cregion}' is wrong; expecting '{region}'")
    secret = credentials.get(akid)
    if secret is None:
        return _fail("v4", "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    amz_date = headers.get("x-amz-date", "")
    try:
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return _fail("v4", "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header", akid)
    if abs(signed_at - now) > 15 * 60:
        return _fail("v4", "RequestTimeTooSkewed",
                     "The difference between the request time and the current time is too large.", akid)
    if "x-amz-content-sha256" not in headers:
        return _fail("v4", "InvalidRequest", "Missing required header for this request: x-amz-content-sha256", akid)
    unsigned = sorted(h for h in headers if h.startswith("x-amz-") and h not in signed_headers)
    if unsigned or "host" not in signed_headers:
        return _fail("v4", "AccessDenied",
                     "There were headers present in the request which were not signed: " + ", ".join(unsigned), akid)
    pairs = parse_query(raw_query)
    lines = "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_headers)
    canonical = "\n".join([method.upper(), v4_canonical_uri(raw_path), v4_canonical_query(pairs), lines,
                           ";".join(signed_headers), headers["x-amz-content-sha256"]])
    string_to_sign = "\n".join([V4_ALGORITHM, amz_date, "/".join(scope[1:]),
                                hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()])
    expected = hmac.new(v4_signing_key(secret, cdate, cregion, service), string_to_sign.encode("utf-8"),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), provided.encode("utf-8", "surrogateescape")):
        return _fail("v4", "SignatureDoesNotMatch", _MISMATCH, akid, (
            ("StringToSign", string_to_sign), ("CanonicalRequest", canonical)))
    return Result(True, "v4", access_key=akid)
