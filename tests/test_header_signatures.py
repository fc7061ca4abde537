"""sidecar.signatures.verify_header_signed against requests botocore signs in the Authorization header.

Every accepted case is a request a real boto3 client built (captured just before it
would be sent); every refused case is such a request with one thing changed.
Clocks are moved with ``now=``, never slept on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import boto3
import botocore.config
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.signatures import _parse_amz_date, header_signed, verify_header_signed

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEYS = {AKID: SECRET}
BUCKET = "my-bucket"


class _Captured(Exception):
    def __init__(self, request):
        self.request = request


@dataclass(frozen=True)
class Sent:
    method: str
    raw_path: str
    raw_query: str
    host: str
    headers: dict
    bucket: str | None = None

    def verify(self, keys=KEYS, now=None, **changes):
        sent = replace(self, **changes)
        return verify_header_signed(sent.method, sent.raw_path, sent.raw_query, sent.host, sent.headers, keys,
                                    now=self.signed_at() if now is None else now, bucket=sent.bucket)

    def signed_at(self) -> float:
        amz = self.headers.get("X-Amz-Date")
        if amz and amz[:1].isdigit():
            return _parse_amz_date(amz)
        return parsedate_to_datetime(self.headers.get("Date") or amz).timestamp()


def _capture(request, **_):
    raise _Captured(request)


@functools.lru_cache(maxsize=None)
def client(version: str, endpoint: str = "http://127.0.0.1:8080", style: str = "path", secret: str = SECRET):
    cfg = botocore.config.Config(signature_version=version, s3={"addressing_style": style},
                                 retries={"max_attempts": 1})
    c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=cfg,
                     aws_access_key_id=AKID, aws_secret_access_key=secret)
    c.meta.events.register("before-send.s3", _capture)
    return c


def sent(operation: str, version: str = "s3v4", endpoint: str = "http://127.0.0.1:8080", style: str = "path",
         secret: str = SECRET, **params) -> Sent:
    with pytest.raises(_Captured) as caught:
        getattr(client(version, endpoint, style, secret), operation)(**params)
    req = caught.value.request
    parts = urlsplit(req.url)
    headers = {k: v.decode("latin-1") if isinstance(v, bytes) else v for k, v in req.headers.items()}
    # Virtual-hosted when botocore put the bucket in the Host (it keeps GetBucketLocation path-style).
    bucket = params["Bucket"] if parts.netloc.startswith(params.get("Bucket", "/") + ".") else None
    return Sent(req.method, parts.path or "/", parts.query, parts.netloc, headers, bucket)


READS = [
    ("get_object", {"Bucket": BUCKET, "Key": "a/b.txt"}),
    ("get_object", {"Bucket": BUCKET, "Key": "a/b.txt", "Range": "bytes=0-9"}),
    ("get_object", {"Bucket": BUCKET, "Key": "a/b.txt", "IfNoneMatch": '"abc"'}),
    ("get_object", {"Bucket": BUCKET, "Key": "a/b.txt", "ResponseContentType": "text/plain; charset=utf-8",
                    "ResponseContentDisposition": 'attachment; filename="r\u00e9sum\u00e9 a+b.txt"'}),
    ("get_object", {"Bucket": BUCKET, "Key": "sp ace/pl+us/t~il!de/\u00e9t\u00e9/%41"}),
    ("head_object", {"Bucket": BUCKET, "Key": "a/b.txt"}),
    ("list_objects_v2", {"Bucket": BUCKET, "Prefix": "a/", "ContinuationToken": "tok/en+=="}),
    ("head_bucket", {"Bucket": BUCKET}),
    ("get_bucket_location", {"Bucket": BUCKET}),
    ("put_object", {"Bucket": BUCKET, "Key": "a/b.txt", "Body": b"hello"}),
]


@pytest.mark.parametrize("version", ["s3v4", "s3"])
@pytest.mark.parametrize("endpoint,style", [("http://127.0.0.1:8080", "path"), ("https://cache.example", "path"),
                                            ("https://cache.example", "virtual")])
@pytest.mark.parametrize("operation,params", READS, ids=[f"{op}-{i}" for i, (op, _) in enumerate(READS)])
def test_botocore_signed_requests_verify(version, endpoint, style, operation, params):
    s = sent(operation, version, endpoint, style, **params)
    assert header_signed(s.headers)
    assert s.verify().ok, s


def test_unsigned_payload_form_verifies():
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    class Unsigned(S3SigV4Auth):
        def payload(self, request):
            return "UNSIGNED-PAYLOAD"

    req = AWSRequest(method="GET", url="https://cache.example/my-bucket/a%20b?partNumber=1", headers={})
    Unsigned(Credentials(AKID, SECRET), "s3", "us-east-1").add_auth(req)
    headers = dict(req.headers.items())
    assert headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    s = Sent("GET", "/my-bucket/a%20b", "partNumber=1", "cache.example", headers)
    assert s.verify().ok
    h = sent("get_object", endpoint="http://127.0.0.1:8080", Bucket=BUCKET, Key="k")
    assert h.headers["X-Amz-Content-SHA256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert h.verify().ok


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_wrong_secret_is_signature_does_not_match(version):
    s = sent("get_object", version, secret="not-the-secret", Bucket=BUCKET, Key="k")
    v = s.verify()
    assert (v.ok, v.status, v.code) == (False, 403, "SignatureDoesNotMatch")


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_unknown_key_id(version):
    v = sent("get_object", version, Bucket=BUCKET, Key="k").verify(keys={"OTHER": "x"})
    assert (v.status, v.code) == (403, "InvalidAccessKeyId")


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_clock_skew_is_s3s_fifteen_minutes(version):
    s = sent("get_object", version, Bucket=BUCKET, Key="k")
    t = s.signed_at()
    assert s.verify(now=t + 14 * 60).ok
    assert s.verify(now=t - 14 * 60).ok
    for now in (t + 16 * 60, t - 16 * 60):
        v = s.verify(now=now)
        assert (v.status, v.code) == (403, "RequestTimeTooSkewed")


@pytest.mark.parametrize("version", ["s3v4", "s3"])
@pytest.mark.parametrize("change", [
    {"raw_path": "/my-bucket/other"},
    {"method": "DELETE"},
    {"raw_query": "x-id=GetObject&versionId=1" },
])
def test_a_changed_request_does_not_verify(version, change):
    s = sent("get_object", version, Bucket=BUCKET, Key="k")
    v = s.verify(**change)
    assert (v.ok, v.code) == (False, "SignatureDoesNotMatch")


def test_v4_signs_the_host():
    s = sent("get_object", Bucket=BUCKET, Key="k")
    assert s.verify(host="127.0.0.1:9999").code == "SignatureDoesNotMatch"


def test_v4_unsigned_amz_header_refused():
    s = sent("get_object", Bucket=BUCKET, Key="k")
    v = s.verify(headers={**s.headers, "x-amz-meta-extra": "1"})
    assert (v.status, v.code) == (403, "AccessDenied")
    assert "not signed" in v.message


def test_v4_missing_content_sha256():
    s = sent("get_object", Bucket=BUCKET, Key="k")
    headers = {k: v for k, v in s.headers.items() if k.lower() != "x-amz-content-sha256"}
    v = s.verify(headers=headers)
    assert (v.status, v.code) == (400, "InvalidRequest")


@pytest.mark.parametrize("auth", ["Bearer xyz", "AWS4-HMAC-SHA256 Credential=x", "AWS nocolon", "AWS4-HMAC-SHA256 "])
def test_malformed_authorization_is_a_clear_error(auth):
    s = sent("get_object", Bucket=BUCKET, Key="k")
    v = s.verify(headers={**s.headers, "Authorization": auth})
    assert not v.ok and v.status in (400, 403) and v.code


def test_query_and_header_signature_together_refused():
    s = sent("get_object", Bucket=BUCKET, Key="k")
    v = s.verify(raw_query="X-Amz-Signature=abc")
    assert (v.status, v.code) == (400, "InvalidArgument")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40),
       version=st.sampled_from(["s3v4", "s3"]))
def test_any_key_botocore_signs_verifies(key, version):
    s = sent("get_object", version, Bucket=BUCKET, Key=key)
    assert s.verify().ok, s
    assert s.verify(raw_path=s.raw_path + "x").code == "SignatureDoesNotMatch"


@settings(max_examples=200, deadline=None)
@given(auth=st.one_of(st.text(max_size=200), st.builds(lambda a, b: f"AWS4-HMAC-SHA256 {a}", st.text(max_size=120), st.none()),
                      st.builds(lambda a: f"AWS {a}", st.text(max_size=60))),
       extra=st.dictionaries(st.sampled_from(["x-amz-date", "date", "x-amz-content-sha256", "host", "x-amz-meta-a"]),
                             st.text(max_size=40), max_size=4),
       path=st.text(max_size=30), query=st.text(max_size=30), now=st.floats(allow_nan=True, allow_infinity=True))
def test_attacker_controlled_input_never_raises_nor_passes(auth, extra, path, query, now):
    v = verify_header_signed("GET", "/" + path, query, "h", {"Authorization": auth, **extra}, KEYS, now=now)
    assert not v.ok and v.status in (400, 403) and v.code
