"""sidecar.signatures against URLs presigned by boto3 (the signer S3 users actually run).

Every accepted case is a URL botocore produced; every refused case is such a
URL with one thing changed.  Clocks are moved with ``now=``, never slept on.
"""

from __future__ import annotations

import functools
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import boto3
import botocore.config
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import signatures
from s3cache.config import parse_signing_keys
from sidecar.s3errors import error_xml
from sidecar.signatures import Verdict, verify_presigned
from tests.origin import sigcheck
from tests.presigned import expires_at

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
OTHER_AKID = "AKIAI44QH8DHBEXAMPLE"
OTHER_SECRET = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"
KEYS = {AKID: SECRET, OTHER_AKID: OTHER_SECRET}
BUCKET = "my-bucket"
KEY = "b/c/d.txt"

GATEWAY_KEYS = Path(__file__).with_name("data").joinpath("gateway-keys.txt").read_text("utf-8").splitlines()
VERSIONS = ("s3", "s3v4")
# (endpoint_url, addressing style): default-port AWS host, host with a port, virtual-hosted.
ENDPOINTS = (
    ("https://s3.amazonaws.com", "path"),
    ("http://127.0.0.1:9000", "path"),
    ("https://s3.amazonaws.com", "virtual"),
)
OVERRIDES = {
    "ResponseContentType": "text/plain; charset=utf-8",
    "ResponseContentDisposition": 'attachment; filename="r\u00e9sum\u00e9 a+b%20.txt"',
    "ResponseCacheControl": "max-age=60, public",
}


@functools.lru_cache(maxsize=None)
def client(version: str, endpoint: str = "https://s3.amazonaws.com", style: str = "path",
           akid: str = AKID, secret: str = SECRET, region: str = "us-east-1"):
    cfg = botocore.config.Config(signature_version=version, s3={"addressing_style": style})
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=cfg,
                        aws_access_key_id=akid, aws_secret_access_key=secret)


@dataclass(frozen=True)
class Signed:
    method: str
    path: str
    query: str
    host: str
    bucket: str | None  # set for virtual-hosted URLs

    def verify(self, keys=KEYS, **changes) -> Verdict:
        args = dict(method=self.method, raw_path=self.path, raw_query=self.query, host=self.host,
                    keys=keys, bucket=self.bucket)
        args.update(changes)
        return verify_presigned(**args)

    def params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)

    def with_query(self, query: str) -> Signed:
        return Signed(self.method, self.path, query, self.host, self.bucket)

    def with_param(self, name: str, value: str) -> Signed:
        """The same URL with one parameter's raw (still encoded) value replaced."""
        parts = [p if p.partition("=")[0] != name else f"{name}={value}" for p in self.query.split("&")]
        return self.with_query("&".join(parts))

    def raw_param(self, name: str) -> str:
        return next(p.partition("=")[2] for p in self.query.split("&") if p.partition("=")[0] == name)


def signed_host(url: str) -> str:
    """The Host botocore signs: lower-case, default port dropped."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}[parts.scheme]
    return parts.hostname + (f":{parts.port}" if parts.port and parts.port != default else "")


def presign(version: str, key: str = KEY, *, endpoint: str = "https://s3.amazonaws.com", style: str = "path",
            akid: str = AKID, secret: str = SECRET, region: str = "us-east-1", expires: int = 3600,
            operation: str = "get_object", **params) -> Signed:
    c = client(version, endpoint, style, akid, secret, region)
    method = "HEAD" if operation == "head_object" else "GET"
    url = c.generate_presigned_url(operation, Params={"Bucket": BUCKET, "Key": key, **params},
                                   ExpiresIn=expires, HttpMethod=method)
    parts = urlsplit(url)
    return Signed(method, parts.path, parts.query, signed_host(url), BUCKET if style == "virtual" else None)


def assert_ok(v: Verdict) -> None:
    assert v == Verdict(True, 200, "", ""), v


def assert_mismatch(v: Verdict) -> None:
    assert (v.ok, v.status, v.code) == (False, 403, "SignatureDoesNotMatch"), v


def assert_malformed(v: Verdict) -> None:
    assert (v.ok, v.status, v.code) == (False, 400, "AuthorizationQueryParametersError"), v


def s3_model_answer(s: Signed, now: float) -> tuple[int, str]:
    """(status, code) the suite's own S3 model (tests/origin/sigcheck.py, the test origin's checker) gives."""
    result = sigcheck.check(s.method, s.path, s.query, {}, KEYS, now=now, region=None, vhost_bucket=s.bucket)
    assert result is not None, "not a presigned request"
    if result.ok:
        return 200, ""
    return (400 if result.code == "AuthorizationQueryParametersError" else 403), result.code


def assert_s3_agrees(s: Signed) -> Verdict:
    """The verifier refuses ``s`` exactly as S3 would: same status, same error code."""
    now = time.time()
    v = s.verify(now=now)
    assert (v.status, v.code) == s3_model_answer(s, now), v
    return v


# --- accepted: what botocore signs -------------------------------------------


@pytest.mark.parametrize("endpoint,style", ENDPOINTS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_gateway_key_verifies(version, endpoint, style):
    for key in GATEWAY_KEYS:
        s = presign(version, key, endpoint=endpoint, style=style)
        if style == "virtual":
            assert s.host == f"{BUCKET}.s3.amazonaws.com" and not s.path.startswith(f"/{BUCKET}/")
        assert_ok(s.verify())


@pytest.mark.parametrize("endpoint,style", ENDPOINTS)
@pytest.mark.parametrize("version", VERSIONS)
def test_response_overrides_verify(version, endpoint, style):
    for key in GATEWAY_KEYS:
        s = presign(version, key, endpoint=endpoint, style=style, **OVERRIDES)
        assert "response-content-disposition=" in s.query
        assert_ok(s.verify())


@pytest.mark.parametrize("version", VERSIONS)
def test_each_override_alone_and_empty(version):
    for name, value in OVERRIDES.items():
        assert_ok(presign(version, **{name: value}).verify())
        # botocore signs an empty sub-resource as "name=", the spec as "name": both are the same request.
        assert_ok(presign(version, **{name: ""}).verify())


@pytest.mark.parametrize("version", VERSIONS)
def test_head_url_verifies_for_head(version):
    s = presign(version, operation="head_object")
    assert s.method == "HEAD"
    assert_ok(s.verify())


@pytest.mark.parametrize("version", VERSIONS)
def test_order_of_query_parameters_does_not_matter(version):
    s = presign(version, **OVERRIDES)
    assert_ok(s.with_query("&".join(reversed(s.query.split("&")))).verify())


def test_v4_region_comes_from_the_credential_scope():
    s = presign("s3v4", endpoint="https://s3.eu-west-1.amazonaws.com", region="eu-west-1")
    assert "%2Feu-west-1%2F" in s.query
    assert_ok(s.verify())


def test_v4_signed_range_header_must_be_sent():
    s = presign("s3v4", Range="bytes=0-9")
    assert "X-Amz-SignedHeaders=host%3Brange" in s.query
    assert_ok(s.verify(headers={"Range": "bytes=0-9"}))
    assert_ok(s.verify(headers={"range": "  bytes=0-9 "}))  # trimmed, as SigV4 canonicalizes
    assert_mismatch(s.verify(headers={"Range": "bytes=0-10"}))
    assert_mismatch(s.verify(headers={}))


def test_v2_signed_amz_header_travels_in_the_query():
    s = presign("s3", SSECustomerAlgorithm="AES256")
    assert "x-amz-server-side-encryption-customer-algorithm=AES256" in s.query
    assert_ok(s.verify())
    assert_mismatch(s.with_param("x-amz-server-side-encryption-customer-algorithm", "aws:kms").verify())


def test_v4_signing_key_is_cached():
    s = presign("s3v4")
    s.verify()
    before = signatures._v4_signing_key.cache_info().hits
    assert_ok(s.verify())
    assert signatures._v4_signing_key.cache_info().hits == before + 1


# --- canonicalization: where V2 and V4 read the path differently --------------


def test_v2_signs_the_path_as_sent_v4_signs_it_decoded():
    key = "a/%@!*()=$#^&|.txt"
    for version in VERSIONS:
        s = presign(version, key)
        assert "%21%2A%28%29" in s.path  # botocore escapes !*() in the path
        assert_ok(s.verify())
        respelled = Signed(s.method, s.path.replace("%21", "!").replace("%2A", "*"), s.query, s.host, None)
        if version == "s3":
            # SigV2's resource is the un-decoded Request-URI: another spelling is another request.
            assert_mismatch(respelled.verify())
        else:
            # SigV4 decodes once and re-encodes: '!' and '%21' are the same canonical URI.
            assert_ok(respelled.verify())


def test_plus_in_the_path_is_a_space_for_v4():
    s = presign("s3v4", "a b.txt")
    assert s.path.endswith("/a%20b.txt")
    assert_ok(Signed(s.method, s.path.replace("%20", "+"), s.query, s.host, None).verify())
    p = presign("s3v4", "a/plus+plus.txt")
    assert "%2B" in p.path
    assert_mismatch(Signed(p.method, p.path.replace("%2B", "+"), p.query, p.host, None).verify())


@pytest.mark.parametrize("version", VERSIONS)
def test_plus_in_the_query_is_a_space(version):
    s = presign(version, ResponseContentDisposition="attachment; filename=a b.txt")
    raw = s.raw_param("response-content-disposition")
    assert "%20" in raw
    assert_ok(s.with_param("response-content-disposition", raw.replace("%20", "+")).verify())


def test_v2_unescaped_plus_in_signature_fails_as_at_s3():
    for expires in range(3600, 3700):
        s = presign("s3", expires=expires)
        if "%2B" in s.raw_param("Signature"):
            break
    else:  # pragma: no cover -- each base64 signature has a '+' with p ~ 0.35
        pytest.fail("no signature with a '+' in 100 tries")
    assert_ok(s.verify())
    assert_mismatch(s.with_param("Signature", s.raw_param("Signature").replace("%2B", "+")).verify())


def test_v2_virtual_host_needs_the_bucket():
    s = presign("s3", style="virtual")
    assert_ok(s.verify())
    assert_mismatch(s.verify(bucket=None))
    assert_mismatch(s.verify(bucket="other-bucket"))


def test_v2_unsigned_parameters_are_ignored_like_s3():
    s = presign("s3")
    assert_ok(s.with_query(s.query + "&x-id=GetObject&utm_source=mail").verify())


# --- refused ----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_tampered_signature(version):
    s = presign(version)
    name = "X-Amz-Signature" if version == "s3v4" else "Signature"
    raw = s.raw_param(name)
    tampered = ("A" if raw[0] != "A" else "B") + raw[1:]
    v = s.with_param(name, tampered).verify()
    assert_mismatch(v)
    assert SECRET not in v.message and raw not in v.message


@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_secret(version):
    s = presign(version, secret="not-the-secret")
    assert_mismatch(s.verify())


@pytest.mark.parametrize("version", VERSIONS)
def test_another_keys_id_with_this_signature(version):
    s = presign(version)
    if version == "s3":
        forged = s.with_param("AWSAccessKeyId", OTHER_AKID)
    else:
        forged = s.with_param("X-Amz-Credential", s.raw_param("X-Amz-Credential").replace(AKID, OTHER_AKID))
    assert_mismatch(forged.verify())


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_access_key(version):
    s = presign(version, akid="AKIAUNKNOWNEXAMPLE00")
    v = s.verify()
    assert (v.ok, v.status, v.code) == (False, 403, "InvalidAccessKeyId")


@pytest.mark.parametrize("version", VERSIONS)
def test_expired(version):
    s = presign(version, expires=60)
    last_valid_second = expires_at("?" + s.query)  # read from the URL: no guess at when it was signed
    assert_ok(s.verify(now=last_valid_second))
    v = s.verify(now=last_valid_second + 1)
    assert v == Verdict(False, 403, "AccessDenied", "Request has expired")


def test_v4_future_dated():
    s = presign("s3v4")
    assert_ok(s.verify(now=time.time() - 10 * 60))  # within S3's 15 minutes of clock skew
    v = s.verify(now=time.time() - 3600)
    assert v == Verdict(False, 403, "AccessDenied", "Request is not valid yet")


def test_unsigned():
    for query in ("", "response-content-type=text/plain", "Expires=99999999999", "X-Amz-Date=20250101T000000Z"):
        v = verify_presigned("GET", f"/{BUCKET}/{KEY}", query, "s3.amazonaws.com", KEYS)
        assert (v.ok, v.status, v.code) == (False, 403, "AccessDenied"), query
        assert "Anonymous" in v.message


@pytest.mark.parametrize("version", VERSIONS)
def test_changed_path(version):
    s = presign(version, "a.txt")
    other = Signed(s.method, s.path.replace("/a.txt", "/b/e.txt"), s.query, s.host, s.bucket)
    assert_mismatch(other.verify())


@pytest.mark.parametrize("version", VERSIONS)
def test_added_or_changed_override(version):
    s = presign(version)
    assert_mismatch(s.with_query(s.query + "&response-content-type=text%2Fhtml").verify())
    o = presign(version, ResponseContentType="text/plain")
    assert_mismatch(o.with_param("response-content-type", "text%2Fhtml").verify())


def test_v4_any_added_parameter_is_a_mismatch():
    s = presign("s3v4")
    assert_mismatch(s.with_query(s.query + "&x-id=GetObject").verify())


@pytest.mark.parametrize("endpoint,style", ENDPOINTS)
def test_v4_wrong_host(endpoint, style):
    s = presign("s3v4", endpoint=endpoint, style=style)
    for host in ("proxy.example.com", s.host + ":8080", "s3.us-east-2.amazonaws.com"):
        assert_mismatch(s.verify(host=host))
    assert_ok(s.verify(host=s.host.upper()))  # host names are case-insensitive; botocore signs lower case


def test_v2_does_not_sign_the_host():
    assert_ok(presign("s3").verify(host="proxy.example.com"))


@pytest.mark.parametrize("version", VERSIONS)
def test_head_on_a_get_url(version):
    s = presign(version)
    assert_mismatch(s.verify(method="HEAD"))
    assert_ok(s.verify(method="get"))


def test_v4_unsigned_amz_header_is_refused():
    v = presign("s3v4").verify(headers={"X-Amz-Meta-Foo": "bar"})
    assert (v.status, v.code) == (403, "AccessDenied") and "x-amz-meta-foo" in v.message


def test_v2_amz_request_headers_are_signed_like_s3():
    assert_mismatch(presign("s3").verify(headers={"x-amz-meta-foo": "bar"}))


# --- malformed authentication parameters (SigV4: 400; SigV2: 403, as S3 answers) ---


def test_v2_and_v4_mixed():
    s = presign("s3v4")
    assert_malformed(s.with_query(s.query + "&AWSAccessKeyId=" + AKID + "&Signature=x&Expires=1").verify())
    v2 = presign("s3")
    assert_malformed(v2.with_query(v2.query + "&X-Amz-Algorithm=AWS4-HMAC-SHA256").verify())


@pytest.mark.parametrize("version", VERSIONS)
def test_authorization_header_as_well(version):
    assert_malformed(presign(version).verify(headers={"Authorization": "AWS4-HMAC-SHA256 Credential=x"}))


def test_authorization_header_alone_cannot_be_verified_here():
    v = verify_presigned("GET", "/b/k", "", "s3.amazonaws.com", KEYS, headers={"authorization": "AWS x:y"})
    assert (v.status, v.code) == (403, "AccessDenied")


@pytest.mark.parametrize("expires", ["", "soon", "-5", "1.5", "1e9", "\uff11\uff12", "1" * 13])
def test_v2_malformed_expires(expires):
    v = assert_s3_agrees(presign("s3").with_param("Expires", expires))
    assert (v.status, v.code) == (403, "AccessDenied") and "Invalid date" in v.message


@pytest.mark.parametrize("name", ["AWSAccessKeyId", "Expires", "Signature"])
def test_v2_missing_or_repeated_parameter(name):
    s = presign("s3")
    missing = assert_s3_agrees(s.with_query("&".join(p for p in s.query.split("&") if not p.startswith(name + "="))))
    assert (missing.status, missing.code) == (403, "AccessDenied")
    # Repeated: refused with S3's answer for an unusable SigV2 query (we cannot know which value S3 reads).
    v = s.with_query(s.query + f"&{name}={s.raw_param(name)}").verify()
    assert (v.ok, v.status, v.code) == (False, 403, "AccessDenied"), v


@settings(max_examples=300)
@given(name=st.sampled_from(["AWSAccessKeyId", "Expires", "Signature"]), drop=st.booleans(),
       value=st.sampled_from(["", "0", "-1", "1" * 13, "9" * 12, "%zz", "+", AKID, "AKIANOBODY"])
       | st.text(st.characters(codec="ascii", exclude_characters="&#"), max_size=30))
def test_v2_refusals_agree_with_the_s3_model(name, drop, value):
    s = presign("s3")
    if drop:
        s = s.with_query("&".join(p for p in s.query.split("&") if not p.startswith(name + "=")))
    else:
        s = s.with_param(name, value)
    assert_s3_agrees(s)


@pytest.mark.parametrize("name", ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                                  "X-Amz-SignedHeaders", "X-Amz-Signature"])
def test_v4_missing_or_repeated_parameter(name):
    s = presign("s3v4")
    assert_malformed(s.with_query("&".join(p for p in s.query.split("&") if not p.startswith(name + "="))).verify())
    assert_malformed(s.with_query(s.query + f"&{name}={s.raw_param(name)}").verify())


@pytest.mark.parametrize("name,value", [
    ("X-Amz-Expires", "0"), ("X-Amz-Expires", "604801"), ("X-Amz-Expires", "-1"), ("X-Amz-Expires", "ten"),
    ("X-Amz-Expires", "1" * 40),
    ("X-Amz-Algorithm", "AWS4-HMAC-SHA512"),
    ("X-Amz-Date", "2025-01-01T00:00:00Z"), ("X-Amz-Date", "20251301T000000Z"), ("X-Amz-Date", "20250230T000000Z"),
    ("X-Amz-Date", "20250101T250000Z"),
    ("X-Amz-Credential", "nonsense"), ("X-Amz-Credential", f"{AKID}%2F2025%2Fus-east-1%2Fs3%2Faws4_request"),
    ("X-Amz-Credential", f"{AKID}%2F{{date}}%2Fus-east-1%2Fec2%2Faws4_request"),
    ("X-Amz-Credential", f"{AKID}%2F{{date}}%2Fus-east-1%2Fs3%2Faws3_request"),
    ("X-Amz-Credential", f"{AKID}%2F{{date}}%2F%2Fs3%2Faws4_request"),
    ("X-Amz-SignedHeaders", "range"), ("X-Amz-SignedHeaders", "range%3Bhost"), ("X-Amz-SignedHeaders", "Host"),
    ("X-Amz-SignedHeaders", "host%3Bhost"), ("X-Amz-SignedHeaders", "host%3B"),
])
def test_v4_malformed_parameter(name, value):
    s = presign("s3v4")
    date = s.raw_param("X-Amz-Date")[:8]
    assert_malformed(s.with_param(name, value.format(date=date)).verify())


def test_v4_credential_date_must_match_x_amz_date():
    s = presign("s3v4")
    cred = s.raw_param("X-Amz-Credential")
    date = s.raw_param("X-Amz-Date")[:8]
    v = s.with_param("X-Amz-Credential", cred.replace(date, "20200101")).verify()
    assert_malformed(v)
    assert "X-Amz-Date" in v.message


# --- never raises -------------------------------------------------------------

_PARAM_NAMES = st.sampled_from([
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
    "X-Amz-Signature", "X-Amz-Content-Sha256", "AWSAccessKeyId", "Expires", "Signature",
    "response-content-type", "versionId", "acl", "x-amz-security-token", "content-type", "X-Amz-%41lgorithm",
]) | st.text(max_size=12)
_PARAM_VALUES = st.sampled_from([
    "AWS4-HMAC-SHA256", f"{AKID}%2F20250101%2Fus-east-1%2Fs3%2Faws4_request", f"{AKID}/20250101/x/s3/aws4_request",
    "20250101T000000Z", "20250101T000000", "3600", "604800", "host", "host%3Brange", "host;x-amz-a", AKID,
    "1700000000", "%", "%zz", "%C3%28", "+", "%00", "\udcff", "\ud800", "\x00", "\u00e9",
]) | st.text(max_size=40)
_QUERIES = st.lists(st.tuples(_PARAM_NAMES, st.sampled_from(["=", ""]), _PARAM_VALUES), max_size=10).map(
    lambda pairs: "&".join(f"{n}{eq}{v}" for n, eq, v in pairs))
_HEADERS = st.dictionaries(st.sampled_from(["Range", "range", "Authorization", "x-amz-meta-a", "Content-Type",
                                            "Content-MD5", "host"]) | st.text(max_size=10), st.text(max_size=20),
                           max_size=4)


def _check_verdict(v: Verdict) -> None:
    assert isinstance(v, Verdict)
    assert (v.ok, v.status, v.code) == (True, 200, "") or (not v.ok and v.status in (400, 403) and v.code)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.text(max_size=8), path=st.text(max_size=60), query=st.one_of(st.text(max_size=200), _QUERIES),
       host=st.text(max_size=30), headers=_HEADERS, now=st.floats(allow_nan=True, allow_infinity=True),
       bucket=st.none() | st.text(max_size=10))
def test_never_raises(method, path, query, host, headers, now, bucket):
    # The private entry point: the public one would hide a crash behind its fail-closed guard.
    v = signatures._verify(method, path, query, host, {AKID: SECRET, "": "", "\udcff": "x"}, now, headers, bucket)
    _check_verdict(v)
    _check_verdict(verify_presigned(method, path, query, host, KEYS, now=now, headers=headers, bucket=bucket))


@functools.lru_cache(maxsize=None)
def _fuzz_seeds() -> tuple[Signed, ...]:
    return (presign("s3", **OVERRIDES), presign("s3v4", **OVERRIDES), presign("s3v4", Range="bytes=0-1"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2), where=st.sampled_from(["path", "query"]), pos=st.integers(0, 10_000),
       cut=st.integers(0, 3), insert=st.text(max_size=6))
def test_mutated_urls_never_raise_and_mutations_never_pass(seed, where, pos, cut, insert):
    s = _fuzz_seeds()[seed]
    text = getattr(s, where)
    pos %= len(text) + 1
    mutated_text = text[:pos] + insert + text[pos + cut:]
    mutated = Signed(s.method, mutated_text if where == "path" else s.path,
                     mutated_text if where == "query" else s.query, s.host, s.bucket)
    v = signatures._verify(mutated.method, mutated.path, mutated.query, mutated.host, KEYS, time.time(),
                           {"range": "bytes=0-1"}, None)
    _check_verdict(v)
    if v.ok:
        # Only another spelling of the same signed request may pass.
        assert _meaning(mutated, seed) == _meaning(s, seed), (mutated_text, text)


def _meaning(s: Signed, seed: int):
    params = parse_qsl(s.query, keep_blank_values=True)
    if seed == 0:
        # SigV2: the raw path, and only the parameters it signs (S3 ignores the rest).
        signed = signatures.V2_SUBRESOURCES | {"AWSAccessKeyId", "Expires", "Signature"}
        return s.path, sorted(p for p in params if p[0] in signed or p[0].lower().startswith("x-amz-"))
    return unquote_plus(s.path), sorted(params)


# --- keys ---------------------------------------------------------------------


def test_parse_signing_keys():
    assert parse_signing_keys("") == {}
    assert parse_signing_keys(f"{AKID}:{SECRET}") == {AKID: SECRET}
    assert parse_signing_keys(f" {AKID} : {SECRET} , {OTHER_AKID}:{OTHER_SECRET}, ") == KEYS
    text = f"\ufeff# production keys\r\n{AKID}:{SECRET}\r\n\n  # rotated 2025\n{OTHER_AKID}:{OTHER_SECRET}\n"
    assert parse_signing_keys(text) == KEYS
    assert parse_signing_keys("A:se:cret") == {"A": "se:cret"}
    assert parse_signing_keys(f"{AKID}:{SECRET},{AKID}:{SECRET}") == {AKID: SECRET}


@pytest.mark.parametrize("text,fragment", [
    ("AKIDONLY", "no ':'"),
    (":Zs3cr3t", "access key id"),
    ("AKID:", "secret"),
    ("AKID: Zs3c r3t", "whitespace"),
    ("AK ID:Zs3cr3t", "whitespace"),
    ("AK/ID:Zs3cr3t", "'/'"),
    ("A:Zs3cr3tOne\nA:Zs3cr3tTwo", "twice"),
])
def test_parse_signing_keys_errors(text, fragment):
    with pytest.raises(ValueError) as exc:
        parse_signing_keys(text)
    message = str(exc.value)
    assert fragment in message and "\n" not in message and "Zs3c" not in message


def test_parse_signing_keys_error_never_echoes_the_entry():
    with pytest.raises(ValueError) as exc:
        parse_signing_keys(f"{AKID}:{SECRET}\n{SECRET}")
    assert SECRET not in str(exc.value) and "line 2" in str(exc.value)


# --- error bodies -------------------------------------------------------------


def test_error_xml_is_s3_shaped_and_escaped():
    body = error_xml("AccessDenied", 'a <b> & "c"', "/bucket/x&y<z>", "REQ1")
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(body)
    assert root.tag == "Error"
    assert [(c.tag, c.text) for c in root] == [
        ("Code", "AccessDenied"), ("Message", 'a <b> & "c"'), ("Resource", "/bucket/x&y<z>"), ("RequestId", "REQ1")]


def test_error_xml_survives_characters_xml_cannot_carry():
    root = ET.fromstring(error_xml("Code", "bad \x00\x1b\ud800 bytes", "/b/\u00e9\U0001f600"))
    assert root.find("Message").text == "bad \ufffd\ufffd\ufffd bytes"
    assert root.find("Resource").text == "/b/\u00e9\U0001f600"


def test_error_xml_always_has_a_request_id():
    a, b = (ET.fromstring(error_xml("C", "m")).find("RequestId").text for _ in range(2))
    assert a and b and a != b

