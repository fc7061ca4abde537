"""A hit answers as S3 does for the same URL: status, body, and S3's headers (overrides included)."""

from __future__ import annotations

import os

import pytest

from tests.origin.credentials import ACCESS_KEY_1, SECRET_KEY_1
from tests.stack import raw_request

pytestmark = pytest.mark.integration

BUCKET = "fidelity-tests"
COMPARED = ("Content-Type", "ETag", "Last-Modified", "Content-Disposition", "Cache-Control",
            "Content-Language", "Content-Length")


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)


OBJECTS = {
    # key: put_object extras — each names the edge case it exists for
    "no-extension": {"ContentType": "application/x-no-extension-but-typed"},
    "misleading.txt": {"ContentType": "image/png"},
    "download.bin": {"ContentType": "application/octet-stream", "ContentDisposition": 'attachment; filename="d.bin"',
                     "CacheControl": "max-age=60", "ContentLanguage": "de"},
}
OVERRIDES = [
    {},
    {"ResponseContentType": "text/csv"},
    {"ResponseContentDisposition": 'attachment; filename="report 2026.csv"'},
    {"ResponseCacheControl": "no-cache", "ResponseContentLanguage": "fr"},
]


def _cached(origin, stack, key, body, extras):
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body, **extras)
    url = origin.presign(BUCKET, key)
    stack.get(stack.proxied(url))
    stack.wait_cached(BUCKET, key)


@pytest.mark.parametrize("mode", ["revalidate", "verify"])
@pytest.mark.parametrize("version", ["v2", "v4"])
def test_hit_headers_equal_the_origins_for_the_same_url(origin, make_stack, mode, version):
    stack = make_stack(S3CACHE_ACCESS=mode, S3CACHE_SIGNING_KEYS=f"{ACCESS_KEY_1}:{SECRET_KEY_1}")
    for key, extras in OBJECTS.items():
        body = os.urandom(1000)
        _cached(origin, stack, f"{mode}/{version}/{key}", body, extras)
        for params in OVERRIDES:
            url = origin.presign(BUCKET, f"{mode}/{version}/{key}", version=version, params=params)
            s3 = raw_request("GET", url)
            hit = stack.get(stack.proxied(url))
            assert (hit.status_code, hit.content) == (s3.status_code, s3.content), (key, params)
            assert hit.headers["X-Cache"] == "HIT"
            for name in COMPARED:
                assert hit.headers.get(name) == s3.headers.get(name), (key, params, name)


def test_conditional_requests_are_judged_against_s3s_etag(origin, make_stack):
    stack = make_stack()
    key = "conditional/object.bin"
    body = bytes(range(256)) * 40
    _cached(origin, stack, key, body, {})
    url = origin.presign(BUCKET, key)
    s3 = raw_request("GET", url)
    etag, last_modified = s3.headers["ETag"], s3.headers["Last-Modified"]
    proxied = stack.proxied(url)

    def get(**headers):
        return raw_request("GET", proxied, headers=headers)

    r = get(**{"If-None-Match": etag})
    assert (r.status_code, r.content, r.headers["ETag"]) == (304, b"", etag)
    assert get(**{"If-None-Match": '"something-else"'}).status_code == 200
    assert get(**{"If-Match": etag}).content == body
    assert get(**{"If-Match": '"something-else"'}).status_code == 412
    assert get(**{"If-Modified-Since": last_modified}).status_code == 304
    # If-None-Match wins over If-Modified-Since (RFC 9110): a mismatching tag means the full body.
    assert get(**{"If-None-Match": '"old"', "If-Modified-Since": last_modified}).status_code == 200
    r = get(Range="bytes=10-19", **{"If-Range": etag})
    assert (r.status_code, r.content) == (206, body[10:20])
    r = get(Range="bytes=10-19", **{"If-Range": '"stale"'})
    assert (r.status_code, r.content) == (200, body)  # the validator changed: whole object
    r = get(Range="bytes=10-19")
    assert (r.status_code, r.content) == (206, body[10:20])
    # And S3 answers the same conditionals the same way.
    assert raw_request("GET", url, headers={"If-None-Match": etag}).status_code == 304
