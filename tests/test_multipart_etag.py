"""README: only a plain-MD5 ETag is checked against the body; an object uploaded in parts (ETag
"<md5 of the parts' md5s>-N", not the body's MD5) is filled and served all the same, with S3's ETag."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.origin.credentials import ACCESS_KEY_1, SECRET_KEY_1

pytestmark = pytest.mark.integration

BUCKET = "multipart-tests"
PART = 5 * 1024 * 1024  # S3's (and moto's) smallest part but the last


def put_multipart(origin, key: str, parts: list[bytes]) -> str:
    s3 = origin.s3()
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=n,
                                                     Body=part)["ETag"]}
            for n, part in enumerate(parts, 1)]
    etag = s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                        MultipartUpload={"Parts": done})["ETag"]
    return etag


@pytest.mark.parametrize("mode", ["verify", "revalidate"])
def test_a_multipart_object_is_filled_and_served_with_its_own_etag(origin, make_stack, mode):
    origin.ensure_bucket(BUCKET)
    stack = make_stack(S3CACHE_ACCESS=mode, S3CACHE_SIGNING_KEYS=f"{ACCESS_KEY_1}:{SECRET_KEY_1}")
    key = f"parts/{mode}.bin"
    parts = [os.urandom(PART), os.urandom(1000)]
    body = b"".join(parts)
    etag = put_multipart(origin, key, parts)
    assert etag.strip('"').endswith("-2") and etag.strip('"') != hashlib.md5(body).hexdigest()
    url = stack.proxied(origin.presign(BUCKET, key))
    assert stack.get(url).headers["X-Cache"] == "MISS"
    assert stack.wait_cached(BUCKET, key, timeout=30).read_bytes() == body
    hit = stack.get(url)
    assert (hit.status_code, hit.headers["X-Cache"]) == (200, "HIT")
    assert hit.content == body
    assert hit.headers["ETag"] == etag
