"""Virtual-hosted URLs and single-bucket hosts reach the same cache entry as path-style URLs.

Nothing resolves ``<bucket>.localhost`` on these machines, so the stack's
outgoing requests go through the test origin acting as an HTTP proxy
(``HTTP_PROXY``); the origin reads the bucket from the Host, as S3 does.
"""

from __future__ import annotations

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig

from tests.origin.credentials import ACCESS_KEY_1, SECRET_KEY_1

pytestmark = pytest.mark.integration

BUCKET = "vhost-tests"
DOMAIN = "s3cache.test"


@pytest.fixture(scope="module")
def upstream(origin):
    """The origin's URL under a name whose subdomains are buckets."""
    origin.ensure_bucket(BUCKET)
    return origin.url.replace("127.0.0.1", "localhost")


def presign(upstream: str, key: str, version: str, style: str = "virtual") -> str:
    client = boto3.client("s3", endpoint_url=upstream, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY_1, aws_secret_access_key=SECRET_KEY_1,
                          config=BotoConfig(signature_version="s3v4" if version == "v4" else "s3",
                                            s3={"addressing_style": style}))
    return client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600)


def vhost_url(upstream: str, key: str, version: str) -> str:
    url = presign(upstream, key, version)
    assert url.startswith(f"http://{BUCKET}.localhost:")
    return url


def send(url: str, *, via: str, host: str | None = None) -> requests.Response:
    """GET the path and query of ``url``, byte for byte, from the proxy at ``via`` with the given Host."""
    target = via + "/" + url.split("/", 3)[3]
    req = requests.Request("GET", target, headers={"Host": host} if host else {}).prepare()
    req.url = target  # requests would re-quote it otherwise
    return requests.Session().send(req, allow_redirects=False, timeout=10)


@pytest.mark.parametrize("version", ["v2", "v4"])
def test_virtual_hosted_and_path_style_urls_share_one_entry(origin, make_stack, upstream, version):
    stack = make_stack(S3CACHE_UPSTREAM=upstream, S3CACHE_DOMAIN=DOMAIN, HTTP_PROXY=origin.url, NO_PROXY="")
    key = f"styles/{version}/shared object.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"one object, two URL styles", ContentType="text/x-demo")
    vurl = vhost_url(upstream, key, version)

    # The user's move for virtual-hosted URLs: bucket.<upstream> -> bucket.<S3CACHE_DOMAIN>.
    miss = send(vurl, via=stack.url, host=f"{BUCKET}.{DOMAIN}")
    assert (miss.status_code, miss.headers["X-Cache"]) == (307, "MISS")
    assert miss.headers["Location"] == vurl  # the form the signature was made for, byte for byte
    stack.wait_cached(BUCKET, key)

    hit = send(vurl, via=stack.url, host=f"{BUCKET}.{DOMAIN}")
    assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (200, "HIT", b"one object, two URL styles")
    assert hit.headers["Content-Type"] == "text/x-demo"
    path_style = presign(upstream, key, version, style="path")
    hit = send(path_style, via=stack.url)
    assert hit.status_code == 200, hit.text
    assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (200, "HIT", b"one object, two URL styles")
    files = [p for p in stack.layout.objects_dir.rglob("*") if p.is_file()]
    assert files == [stack.object_file(BUCKET, key)]


def test_a_host_that_fronts_one_bucket(origin, make_stack, upstream):
    stack = make_stack(S3CACHE_UPSTREAM=upstream, S3CACHE_BUCKET=BUCKET, HTTP_PROXY=origin.url, NO_PROXY="")
    key = "single/bucket.bin"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"the proxy's host alone")
    vurl = vhost_url(upstream, key, "v4")
    # http://<bucket>.<upstream>/ replaced by the proxy's host alone:
    miss = send(vurl, via=stack.url)
    assert (miss.status_code, miss.headers["Location"]) == (307, vurl)
    stack.wait_cached(BUCKET, key)
    hit = send(vurl, via=stack.url)
    assert (hit.headers["X-Cache"], hit.content) == ("HIT", b"the proxy's host alone")
    # An attacker's tampered URL gets nothing (revalidate asks the origin, which refuses).
    bad = send(vurl[:-1] + ("0" if vurl[-1] != "0" else "1"), via=stack.url)
    assert bad.status_code == 403 and b"the proxy's host alone" not in bad.content
