"""README: fills cache the bytes S3 stored, gzip or not; a hit carries the object's Content-Encoding
(revalidate and verify), so the client gets exactly what S3 would have sent."""

from __future__ import annotations

import gzip
import http.client
import os
from urllib.parse import urlsplit

import pytest

from tests.origin.credentials import ACCESS_KEY_1, SECRET_KEY_1

pytestmark = pytest.mark.integration

BUCKET = "encoding-tests"


def raw_get(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET without any decoding: the body bytes as they came over the wire."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""),
                     headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["verify", "revalidate"])
def test_a_gzip_object_is_stored_raw_and_served_with_its_content_encoding(origin, make_stack, mode):
    origin.ensure_bucket(BUCKET)
    stack = make_stack(S3CACHE_ACCESS=mode, S3CACHE_SIGNING_KEYS=f"{ACCESS_KEY_1}:{SECRET_KEY_1}")
    key = f"zipped/{mode}.json"
    stored = gzip.compress(b'{"text": "%s"}' % os.urandom(20_000).hex().encode())
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=stored, ContentEncoding="gzip",
                           ContentType="application/json")
    url = stack.proxied(origin.presign(BUCKET, key))
    status, headers, _ = raw_get(url)
    assert (status, headers["x-cache"]) == (307, "MISS")
    assert stack.wait_cached(BUCKET, key).read_bytes() == stored  # raw: not decompressed
    status, headers, body = raw_get(url)
    assert (status, headers["x-cache"]) == (200, "HIT")
    assert body == stored
    assert headers.get("content-encoding") == "gzip"
    assert headers.get("content-type") == "application/json"
