"""S3CACHE_TTL and S3CACHE_FILL_ON_RANGE against the signature-enforcing origin."""

from __future__ import annotations

import json
import os

import pytest

from s3cache.layout import ObjectRef
from tests.origin.credentials import ACCESS_KEY_1, SECRET_KEY_1
from tests.stack import raw_request, wait_until

pytestmark = pytest.mark.integration

BUCKET = "freshness-tests"


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)


# Long enough that an entry is never stale by accident, however slow the machine; the test makes an
# entry stale on purpose by moving its recorded fetch/confirmation time back (``age_entry``).
TTL = 600


def age_entry(stack, key: str, seconds: float) -> None:
    """Move the entry's fetched/validated time ``seconds`` into the past, as if that much time had passed."""
    path = stack.layout.meta_path(ObjectRef(BUCKET, key))
    wait_until(path.is_file, what="the entry's metadata")  # written just after the object is renamed in
    meta = json.loads(path.read_text(encoding="utf-8"))
    for field in ("fetched_at", "validated_at"):
        if meta.get(field) is not None:
            meta[field] -= seconds
    tmp = stack.workdir / "aged-meta.json"  # same filesystem: the replace is atomic
    tmp.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(tmp, path)


@pytest.mark.parametrize("mode", ["verify", "open"])
def test_ttl_revalidates_stale_entries_without_body_bytes_and_never_serves_old_bytes(origin, make_stack, mode):
    stack = make_stack(S3CACHE_ACCESS=mode, S3CACHE_TTL=str(TTL),
                       S3CACHE_SIGNING_KEYS=f"{ACCESS_KEY_1}:{SECRET_KEY_1}")
    key = f"ttl/{mode}.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"first version")
    url = stack.proxied(origin.presign(BUCKET, key))
    stack.get(url)
    stack.wait_cached(BUCKET, key)

    origin.reset()
    fresh = stack.get(url)  # younger than the TTL: S3 is not asked
    assert (fresh.headers["X-Cache"], fresh.content) == ("HIT", b"first version")
    assert origin.stats()["requests"] == []

    age_entry(stack, key, TTL + 1)
    stale_unchanged = stack.get(url)  # older than the TTL: one conditional request, 304, no body
    assert (stale_unchanged.headers["X-Cache"], stale_unchanged.content) == ("HIT", b"first version")
    stats = origin.stats()
    assert [r["status"] for r in stats["requests"]] == [304] and stats["body_bytes"] == 0
    origin.reset()
    assert stack.get(url).content == b"first version"  # confirmed: fresh again for a TTL
    assert origin.stats()["requests"] == []

    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"second version")
    age_entry(stack, key, TTL + 1)
    changed = stack.get(url)
    assert b"first version" not in changed.content
    assert (changed.status_code, changed.headers["X-Cache"]) == (307, "MISS")
    wait_until(lambda: stack.object_file(BUCKET, key).read_bytes() == b"second version", what="the refresh")
    assert stack.get(url).content == b"second version"


@pytest.mark.parametrize("setting, filled", [("on", True), ("off", False)])
def test_range_miss_fills_the_whole_object_only_when_enabled(origin, make_stack, setting, filled):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_FILL_ON_RANGE=setting)
    key = f"range-miss/{setting}.bin"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"0123456789" * 100)
    url = stack.proxied(origin.presign(BUCKET, key))
    origin.reset()
    before = stack.stats()
    r = raw_request("GET", url, headers={"Range": "bytes=0-9"})
    assert (r.status_code, r.headers["X-Cache"]) == (307, "MISS")
    if filled:
        stack.wait_cached(BUCKET, key)
        hit = raw_request("GET", url, headers={"Range": "bytes=0-9"})
        assert (hit.status_code, hit.content) == (206, b"0123456789")
    else:
        # The miss was answered without queueing a fill (decided before the 307 was sent).
        after = stack.wait_fills_settled(before)
        assert after["sidecar_misses"] == {"fill": 0, "redirect": 1}
        assert not stack.object_file(BUCKET, key).exists()
        assert origin.stats()["requests"] == []
