"""Proves the test origin (tests/origin) is a trustworthy S3 stand-in.

The origin's signature checker is an oracle for the integration tests, so it
is checked from both sides: everything botocore presigns (both signature
versions, every awkward key in tests/data/gateway-keys.txt) must be served
byte-exact, and every kind of tampering must be refused with 403 and no body.
Also covers the anonymous/public-bucket policy, counters, faults and
If-None-Match, plus the checker against AWS's published test vectors.
"""

from __future__ import annotations

import calendar
import hashlib
import http.client
import socket
import time
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import pytest
import requests
from botocore.auth import HmacV1QueryAuth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.origin import sigcheck
from tests.origin.credentials import (
    ACCESS_KEY_1, ACCESS_KEY_2, ADMIN_ACCESS_KEY, CREDENTIALS, SECRET_KEY_2,
)
from tests.origin.fixture import start_origin
from tests.presigned import wait_expired

KEYS = [k for k in (Path(__file__).parent / "data" / "gateway-keys.txt").read_text("utf-8").split("\n") if k]
BUCKET = "origin-test"
PUBLIC_BUCKET = "public-origin-test"
VERSIONS = ("v2", "v4")


def body_for(key: str) -> bytes:
    return f"object {key!r}\n".encode("utf-8") * 3


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """This module's own origin (shadowing conftest's session one): the resets
    and faults here then cannot touch any other module's origin."""
    o = start_origin(tmp_path_factory.mktemp("origin"))
    s3 = o.s3()
    for bucket in (BUCKET, PUBLIC_BUCKET):
        s3.create_bucket(Bucket=bucket)
    for key in KEYS:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body_for(key))
    s3.put_object(Bucket=PUBLIC_BUCKET, Key="pub.txt", Body=b"public bytes")
    yield o
    o.stop()


@pytest.fixture(autouse=True)
def _no_faults(request):
    yield
    if "origin" in request.fixturenames:
        request.getfixturevalue("origin").clear_faults()


def fetch(url: str, method: str = "GET", headers: dict | None = None, stream: bool = False) -> requests.Response:
    """Send url byte-exact: requests re-quotes URLs when preparing them."""
    with requests.Session() as session:
        prepared = session.prepare_request(requests.Request(method, url, headers=headers))
        prepared.url = url
        return session.send(prepared, timeout=30, stream=stream, allow_redirects=False)


def last_request(origin) -> dict:
    return origin.stats()["requests"][-1]


def assert_refused(resp: requests.Response, code: str, forbidden_body: bytes | None = None) -> None:
    assert resp.status_code == 403, resp.text
    assert f"<Code>{code}</Code>" in resp.text, resp.text
    if forbidden_body:
        assert forbidden_body not in resp.content


def put(origin, key: str, body: bytes, bucket: str = BUCKET) -> None:
    origin.s3().put_object(Bucket=bucket, Key=key, Body=body)


def with_query(url: str, **changes: str) -> str:
    """url with some query parameters replaced, re-encoded like botocore does."""
    parts = urlsplit(url)
    pairs = [(k, changes.get(k, v)) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(pairs, quote_via=quote, safe="-_.~")))


def tamper_signature(url: str, version: str) -> str:
    name = "Signature" if version == "v2" else "X-Amz-Signature"
    sig = dict(parse_qsl(urlsplit(url).query))[name]
    flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
    return with_query(url, **{name: flipped})


# --- everything botocore presigns is served, byte-exact ---------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("key", KEYS)
def test_presigned_get_serves_every_key(origin, key, version):
    url = origin.presign(BUCKET, key, version=version)
    resp = fetch(url)
    assert resp.status_code == 200, resp.text
    assert resp.content == body_for(key)
    seen = last_request(origin)
    # The origin saw the very bytes boto3 produced (no re-quoting on the way).
    assert (seen["path"], seen["query"]) == (urlsplit(url).path, urlsplit(url).query)
    assert seen["auth"] == version and seen["key"] == f"/{BUCKET}/{key}"


@pytest.mark.parametrize("version", VERSIONS)
def test_presigned_head(origin, version):
    key = "b/e.txt"
    resp = fetch(origin.presign(BUCKET, key, version=version, method="head_object"), method="HEAD")
    assert resp.status_code == 200
    assert int(resp.headers["Content-Length"]) == len(body_for(key))
    # The method is signed: a GET URL does not authorize a HEAD.
    assert fetch(origin.presign(BUCKET, key, version=version), method="HEAD").status_code == 403


@pytest.mark.parametrize("version", VERSIONS)
def test_response_override_params_are_signed_and_honoured(origin, version):
    key = "b/c/d.txt"
    overrides = {"ResponseContentType": "text/x-s3cache; charset=utf-8",
                 "ResponseContentDisposition": 'attachment; filename="d 1+2.txt"',
                 "ResponseCacheControl": "max-age=60"}
    url = origin.presign(BUCKET, key, version=version, params=overrides)
    resp = fetch(url)
    assert resp.status_code == 200, resp.text
    assert resp.content == body_for(key)
    assert resp.headers["Content-Type"] == overrides["ResponseContentType"]
    assert resp.headers["Content-Disposition"] == overrides["ResponseContentDisposition"]
    # The overrides are part of what is signed.
    tampered = with_query(url, **{"response-content-type": "text/html"})
    assert_refused(fetch(tampered), "SignatureDoesNotMatch", body_for(key))


# --- every kind of tampering is refused --------------------------------------

SECRET = b"object 'a.txt'"  # a fragment of body_for("a.txt")


@pytest.mark.parametrize("version", VERSIONS)
def test_tampered_signature(origin, version):
    url = origin.presign(BUCKET, "a.txt", version=version)
    resp = fetch(tamper_signature(url, version))
    assert_refused(resp, "SignatureDoesNotMatch", SECRET)
    assert "<StringToSign>" in resp.text  # what was expected, for debugging, as S3 does


@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_secret(origin, version):
    url = origin.presign(BUCKET, "a.txt", version=version, secret=SECRET_KEY_2)
    assert_refused(fetch(url), "SignatureDoesNotMatch", SECRET)


@pytest.mark.parametrize("version", VERSIONS)
def test_another_keys_id_with_this_keys_signature(origin, version):
    url = origin.presign(BUCKET, "a.txt", version=version, access_key=ACCESS_KEY_1)
    if version == "v2":
        swapped = with_query(url, AWSAccessKeyId=ACCESS_KEY_2)
    else:
        cred = dict(parse_qsl(urlsplit(url).query))["X-Amz-Credential"]
        swapped = with_query(url, **{"X-Amz-Credential": cred.replace(ACCESS_KEY_1, ACCESS_KEY_2)})
    assert swapped != url
    assert_refused(fetch(swapped), "SignatureDoesNotMatch", SECRET)


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_access_key(origin, version):
    url = origin.presign(BUCKET, "a.txt", version=version, access_key=ADMIN_ACCESS_KEY, secret="whatever")
    assert_refused(fetch(url), "InvalidAccessKeyId", SECRET)


@pytest.mark.parametrize("version", VERSIONS)
def test_signature_for_another_object(origin, version):
    url = origin.presign(BUCKET, "b/e.txt", version=version)
    moved = url.replace("/b/e.txt?", "/a.txt?")
    assert_refused(fetch(moved), "SignatureDoesNotMatch", SECRET)


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_signature_parameter(origin, version):
    url = origin.presign(BUCKET, "a.txt", version=version)
    name = "Signature" if version == "v2" else "X-Amz-Signature"
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if not p.startswith(name + "="))
    code = "AccessDenied" if version == "v2" else "AuthorizationQueryParametersError"
    assert_refused(fetch(urlunsplit(parts._replace(query=query))), code, SECRET)


def test_expired_urls(origin):
    # One URL each that is valid for a long while, and one that expires in a second: a 1-second URL
    # may already be past its whole second when it is first fetched, so only its expiry is asserted.
    valid = {v: origin.presign(BUCKET, "a.txt", version=v, expires=600) for v in VERSIONS}
    urls = {v: origin.presign(BUCKET, "a.txt", version=v, expires=1) for v in VERSIONS}
    assert all(fetch(u).status_code == 200 for u in valid.values())
    wait_expired(*urls.values())
    for url in urls.values():
        resp = fetch(url)
        assert_refused(resp, "AccessDenied", SECRET)
        assert "Request has expired" in resp.text


def test_unsigned_private_bucket_refused(origin):
    assert_refused(fetch(f"{origin.url}/{BUCKET}/a.txt"), "AccessDenied", SECRET)
    assert last_request(origin)["auth"] == "anonymous"
    assert fetch(f"{origin.url}/{BUCKET}/a.txt", method="HEAD").status_code == 403
    assert_refused(fetch(f"{origin.url}/"), "AccessDenied")  # ListBuckets


def test_unsigned_public_bucket_served(origin):
    resp = fetch(f"{origin.url}/{PUBLIC_BUCKET}/pub.txt")
    assert resp.status_code == 200 and resp.content == b"public bytes"
    # ...but a presigned URL for it is still checked.
    url = origin.presign(PUBLIC_BUCKET, "pub.txt", version="v4")
    assert_refused(fetch(tamper_signature(url, "v4")), "SignatureDoesNotMatch", b"public bytes")


def test_path_encoding_v2_is_byte_exact_v4_is_canonical(origin):
    """SigV2 signs the un-decoded path; SigV4 re-encodes the decoded key."""
    key = "a/%@!*()=$#^&|.txt"
    for version, expected in (("v2", 403), ("v4", 200)):
        url = origin.presign(BUCKET, key, version=version)
        assert "%21%2A%28%29" in url
        relaxed = url.replace("%21%2A%28%29", "!*()")  # same key, other spelling
        assert fetch(relaxed).status_code == expected


def raw_get(origin, target: bytes) -> tuple[int, bytes]:
    """GET with a request-target sent as raw bytes (no client re-encoding at all)."""
    url = urlsplit(origin.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + url.netloc.encode() + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_raw_non_ascii_path_is_refused(origin):
    """waitress answers 400 Bad URI to raw (not percent-encoded) UTF-8 in the
    request-target, before the origin sees it: a proxy must percent-encode."""
    url = urlsplit(origin.presign(BUCKET, "a/c/あ", version="v4"))
    status, _ = raw_get(origin, f"{unquote(url.path)}?{url.query}".encode("utf-8"))
    assert status == 400
    status, body = raw_get(origin, f"{url.path}?{url.query}".encode("ascii"))
    assert (status, body) == (200, body_for("a/c/あ"))


def test_literal_plus_in_path_is_a_space(origin):
    """S3 reads '+' in a path as a space; only %2B is a plus."""
    put(origin, "p/one two.txt", b"spaced")
    url = origin.presign(BUCKET, "a/plus+plus.txt", version="v4")
    assert "plus%2Bplus" in url
    # A proxy that decodes %2B would ask S3 for "a/plus plus.txt": refused.
    assert fetch(url.replace("%2B", "+")).status_code == 403
    signed_space = origin.presign(BUCKET, "p/one two.txt", version="v4")
    assert fetch(signed_space.replace("%20", "+")).content == b"spaced"


@pytest.mark.parametrize("version", VERSIONS)
def test_which_request_headers_matter(origin, version):
    key = "b/c/d.txt"
    url = origin.presign(BUCKET, key, version=version)
    ranged = fetch(url, headers={"Range": "bytes=0-5", "User-Agent": "s3cache-test", "If-Modified-Since":
                                 "Sat, 01 Jan 2000 00:00:00 GMT"})
    assert ranged.status_code == 206 and ranged.content == body_for(key)[:6]
    assert last_request(origin)["bytes"] == 6
    # x-amz-* headers are signed material (SigV2) or must be signed (SigV4).
    code = "SignatureDoesNotMatch" if version == "v2" else "AccessDenied"
    assert_refused(fetch(url, headers={"x-amz-request-payer": "requester"}), code, body_for(key))


# --- counters ------------------------------------------------------------------


def test_counters_and_reset(origin):
    key = "counted/file name.bin"
    body = bytes(range(256)) * 8
    put(origin, key, body)
    url = origin.presign(BUCKET, key, version="v2")
    origin.reset()
    assert fetch(url).content == body
    assert fetch(url).content == body
    fetch(tamper_signature(url, "v2"))
    stats = origin.stats()
    raw_path = urlsplit(url).path
    assert [r["status"] for r in stats["requests"]] == [200, 200, 403]
    assert stats["get_count_by_path"] == {raw_path: 3}
    assert stats["get_count_by_key"] == {f"/{BUCKET}/{key}": 3}
    assert stats["requests"][0]["bytes"] == len(body)
    assert stats["body_bytes"] == 2 * len(body) + stats["requests"][2]["bytes"]
    assert stats["requests"][0]["query"] == urlsplit(url).query
    origin.reset()
    assert origin.stats() == {"requests": [], "get_count_by_path": {}, "get_count_by_key": {}, "body_bytes": 0}


# --- faults -------------------------------------------------------------------


def test_truncate_fault(origin):
    key = "faults/truncate.bin"
    body = hashlib.sha256(b"x").digest() * 1000  # 32000 bytes
    put(origin, key, body)
    origin.fault(f"/{BUCKET}/{key}", "truncate")
    origin.reset()
    url = urlsplit(origin.presign(BUCKET, key))
    # http.client, not requests: it hands over the partial body with the error.
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("GET", f"{url.path}?{url.query}")
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(body)
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
    finally:
        conn.close()
    assert cut.value.partial == body[: len(body) // 2]
    assert last_request(origin)["bytes"] == len(body) // 2
    assert last_request(origin)["fault"] == "truncate"


def test_slow_fault(origin):
    key = "faults/slow.bin"
    body = b"s" * 3000
    put(origin, key, body)
    origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=5000)
    start = time.monotonic()
    resp = fetch(origin.presign(BUCKET, key))
    elapsed = time.monotonic() - start
    assert resp.content == body
    assert 0.5 <= elapsed < 60, elapsed  # slow on purpose; the upper bound only catches a hang


def test_bad_etag_fault(origin):
    key = "faults/etag.txt"
    put(origin, key, b"etag body")
    real = '"%s"' % hashlib.md5(b"etag body").hexdigest()
    url = origin.presign(BUCKET, key, version="v2")
    assert fetch(url).headers["ETag"] == real
    origin.fault(f"/{BUCKET}/{key}", "bad_etag")
    resp = fetch(url)
    assert resp.content == b"etag body"
    assert resp.headers["ETag"] != real and len(resp.headers["ETag"]) == 34


def test_status_fault_once_and_only_after_auth(origin):
    key = "faults/status.txt"
    put(origin, key, b"status body")
    url = origin.presign(BUCKET, key)
    origin.fault(f"/{BUCKET}/{key}", "status", status=503, once=True)
    assert_refused(fetch(tamper_signature(url, "v4")), "SignatureDoesNotMatch")  # not consumed
    resp = fetch(url)
    assert resp.status_code == 503 and b"status body" not in resp.content
    assert fetch(url).content == b"status body"  # once: gone
    origin.fault(f"/{BUCKET}/{key}", "status", status=500)
    assert fetch(url).status_code == 500
    assert fetch(url).status_code == 500
    origin.clear_faults()
    assert fetch(url).status_code == 200


def test_fault_validation(origin):
    with pytest.raises(requests.HTTPError):
        origin.fault(f"/{BUCKET}/a.txt", "explode")
    with pytest.raises(requests.HTTPError):
        origin.fault("no-slash", "truncate")


# --- conditional requests ------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_if_none_match(origin, version):
    key = "cond/file.txt"
    put(origin, key, b"conditional")
    etag = '"%s"' % hashlib.md5(b"conditional").hexdigest()
    url = origin.presign(BUCKET, key, version=version)
    for inm in (etag, etag.strip('"'), f'"nope", {etag}', f"W/{etag}", "*"):
        resp = fetch(url, headers={"If-None-Match": inm})
        assert resp.status_code == 304, inm
        assert resp.content == b"" and resp.headers["ETag"] == etag
        assert last_request(origin)["bytes"] == 0
    resp = fetch(url, headers={"If-None-Match": '"0123"'})
    assert resp.status_code == 200 and resp.content == b"conditional"
    head = origin.presign(BUCKET, key, version=version, method="head_object")
    assert fetch(head, method="HEAD", headers={"If-None-Match": etag}).status_code == 304


# --- the checker alone, against AWS's published examples and botocore --------


def test_sigv4_aws_documented_example():
    # "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", S3 API reference.
    query = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1"
             "%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
             "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    creds = {"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
    host = {"host": "examplebucket.s3.amazonaws.com"}
    signed_at = calendar.timegm((2013, 5, 24, 0, 0, 0))
    assert sigcheck.check("GET", "/test.txt", query, host, creds, now=signed_at + 86400).ok
    expired = sigcheck.check("GET", "/test.txt", query, host, creds, now=signed_at + 86401)
    assert (expired.ok, expired.code, expired.message) == (False, "AccessDenied", "Request has expired")
    assert sigcheck.check("GET", "/test.txt", query, {"host": "other"}, creds, now=signed_at).code == \
        "SignatureDoesNotMatch"
    assert sigcheck.check("GET", "/test.txt", query, host, creds, now=signed_at, region="eu-west-1").code == \
        "AuthorizationQueryParametersError"


def test_sigv2_aws_documented_example():
    # "Signing and authenticating REST requests" (SigV2), object GET example.
    sts = "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/awsexamplebucket1/photos/puppy.jpg"
    assert sigcheck.v2_signature("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", sts) == "qgk2+6Sv9/oM7G3qLEjTH1a1l1g="


def test_sigv2_expiry_boundary_and_subresources():
    pairs = sigcheck.parse_query("versionId=3%2B4&response-content-type=a%20b&prefix=x&acl")
    assert sigcheck.v2_canonical_resource("/b/k%20y", pairs) == \
        "/b/k%20y?acl&response-content-type=a b&versionId=3+4"
    sts = "GET\n\n\n100\n/b/k"
    query = "AWSAccessKeyId=AK&Expires=100&Signature=" + quote(sigcheck.v2_signature("s", sts), safe="")
    assert sigcheck.check("GET", "/b/k", query, {}, {"AK": "s"}, now=100).ok
    assert sigcheck.check("GET", "/b/k", query, {}, {"AK": "s"}, now=100.5).message == "Request has expired"
    assert sigcheck.check("GET", "/b/k", "", {}, {"AK": "s"}) is None


_key_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(key=_key_text, ctype=_key_text, version=st.sampled_from(VERSIONS))
def test_checker_agrees_with_botocore(key, ctype, version):
    """In-process, no HTTP: whatever botocore signs, the checker accepts, and
    the same signature on another key or query is rejected."""
    creds = Credentials(ACCESS_KEY_2, CREDENTIALS[ACCESS_KEY_2])
    url = f"http://127.0.0.1:9/bkt/{quote(key, safe='/~')}?response-content-type={quote(ctype, safe='-_.~')}"
    request = AWSRequest(method="GET", url=url)
    if version == "v2":
        HmacV1QueryAuth(creds, expires=600).add_auth(request)
    else:
        S3SigV4QueryAuth(creds, "s3", "us-east-1", expires=600).add_auth(request)
    parts = urlsplit(request.url)
    host = {"host": "127.0.0.1:9"}
    result = sigcheck.check("GET", parts.path, parts.query, host, CREDENTIALS)
    assert result is not None and result.ok, (result, request.url)
    other = sigcheck.check("GET", parts.path + "x", parts.query, host, CREDENTIALS)
    assert other.code == "SignatureDoesNotMatch"
    assert sigcheck.check("PUT", parts.path, parts.query, host, CREDENTIALS).code == "SignatureDoesNotMatch"
