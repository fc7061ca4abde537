"""S3CACHE_MISS=stream: the first request moves the object from the origin once, not twice."""

from __future__ import annotations

import os

import pytest

from tests.stack import raw_request

pytestmark = pytest.mark.integration

BUCKET = "stream-tests"


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)


def origin_body_bytes(origin, key):
    return sum(r["bytes"] for r in origin.stats()["requests"] if r["method"] == "GET" and r["key"].endswith(key))


@pytest.mark.parametrize("mode, origin_copies", [("stream", 1), ("redirect", 2)])
def test_first_request_moves_the_object_from_the_origin_once_when_streamed(origin, make_stack, mode, origin_copies):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_MISS=mode)
    key = f"{mode}/object.bin"
    body = os.urandom(700_000)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body, ContentType="application/x-streamed")
    url = origin.presign(BUCKET, key)
    origin.reset()
    first = stack.get(stack.proxied(url))
    if mode == "stream":
        assert (first.status_code, first.headers["X-Cache"], first.content) == (200, "MISS", body)
        assert first.headers["Content-Type"] == "application/x-streamed"
    else:
        assert first.status_code == 307
        assert raw_request("GET", first.headers["Location"]).content == body  # the client follows it
    stack.wait_cached(BUCKET, key)
    hit = stack.get(stack.proxied(url))
    assert (hit.headers["X-Cache"], hit.content) == ("HIT", body)
    assert origin_body_bytes(origin, key) == origin_copies * len(body)


def test_stream_relays_s3_refusals_and_caches_nothing(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_MISS="stream")
    key = "refused/object.bin"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"private")
    r = stack.get(stack.proxied(origin.presign(BUCKET, key, secret="wrong")))
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content
    assert not stack.object_file(BUCKET, key).exists()
    assert not list(stack.layout.tmp_dir.iterdir())


def test_a_truncated_stream_is_not_cached(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_MISS="stream")
    key = "cut/object.bin"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=os.urandom(200_000))
    origin.fault(f"/{BUCKET}/{key}", "truncate")
    try:
        try:
            stack.get(stack.proxied(origin.presign(BUCKET, key)))
        except Exception:
            pass  # the client sees the cut connection, as it would from S3
    finally:
        origin.clear_faults()
    assert not stack.object_file(BUCKET, key).exists()
    assert not list(stack.layout.tmp_dir.iterdir())
    # and the next miss fetches (and caches) it whole
    r = stack.get(stack.proxied(origin.presign(BUCKET, key)))
    assert r.status_code == 200 and len(r.content) == 200_000
    stack.wait_cached(BUCKET, key)
