"""README (S3CACHE_MISS=stream): a Range miss is redirected as usual (never streamed as the whole object),
and the object is filled whole in the background for the hits that follow."""

from __future__ import annotations

import os

import pytest

from tests.stack import raw_request

pytestmark = pytest.mark.integration

BUCKET = "stream-range-tests"


def test_a_range_miss_in_stream_mode_is_redirected_and_then_served_from_cache(origin, make_stack):
    origin.ensure_bucket(BUCKET)
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_MISS="stream")
    key = "ranged.bin"
    body = os.urandom(300_000)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    presigned = origin.presign(BUCKET, key)
    url = stack.proxied(presigned)
    miss = raw_request("GET", url, headers={"Range": "bytes=1000-1999"})
    assert (miss.status_code, miss.headers["X-Cache"]) == (307, "MISS")
    assert miss.headers["Location"] == presigned
    ranged = raw_request("GET", miss.headers["Location"], headers={"Range": "bytes=1000-1999"})
    assert (ranged.status_code, ranged.content) == (206, body[1000:2000])  # what the client gets from S3
    assert stack.wait_cached(BUCKET, key).read_bytes() == body  # filled whole
    hit = raw_request("GET", url, headers={"Range": "bytes=1000-1999"})
    assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (206, "HIT", body[1000:2000])
