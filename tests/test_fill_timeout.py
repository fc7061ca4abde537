"""README: S3CACHE_FILL_TIMEOUT is how long a fetch may stall before it is abandoned -- and then nothing
is cached, and the failure is counted as a timeout."""

from __future__ import annotations

import pytest

from tests.stack import wait_until

pytestmark = pytest.mark.integration

BUCKET = "fill-timeout-tests"


def test_a_stalled_fill_is_abandoned_and_nothing_is_cached(origin, make_stack):
    origin.ensure_bucket(BUCKET)
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_FILL_TIMEOUT="0.5")
    key = "stalls.bin"
    body = b"s" * 60  # at one byte a second the origin would take a minute to send it
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=1)  # a one-second stall before every byte
    try:
        url = origin.presign(BUCKET, key)
        before = stack.stats()["fills"]
        miss = stack.get(stack.proxied(url))
        assert (miss.status_code, miss.headers["X-Cache"]) == (307, "MISS")
        # Abandoned after a stall, long before the origin could have sent the whole body.
        fills = wait_until(lambda: (f := stack.stats()["fills"])["failed"] > before["failed"] and f, timeout=30,
                           what="the stalled fill to be abandoned")
        assert fills["failed_by_reason"].get("timeout", 0) == before["failed_by_reason"].get("timeout", 0) + 1
        assert fills["filled"] == before["filled"]
        assert not stack.object_file(BUCKET, key).exists()
        assert not list(stack.layout.tmp_dir.iterdir())
    finally:
        origin.clear_faults()
    # Once the origin answers again, the object is filled as usual.
    assert stack.get(stack.proxied(url)).headers["X-Cache"] == "MISS"
    assert stack.wait_cached(BUCKET, key).read_bytes() == body
