"""Which misses are filled and which are only redirected (no HTTP involved)."""

from __future__ import annotations

import pytest

from s3cache.config import Config
from s3cache.layout import Layout, ObjectRef
from s3cache.request_path import BadRequest
from sidecar.miss import plan_miss


@pytest.fixture
def cfg(tmp_path):
    return Config.from_env({"S3CACHE_UPSTREAM": "https://s3.example.com", "S3CACHE_DIR": str(tmp_path)})


def plan(cfg, uri, method="GET", headers=None):
    return plan_miss(method, uri, headers or {}, cfg, Layout(cfg.dir))


def test_location_is_upstream_plus_the_raw_uri_byte_for_byte(cfg):
    uri = "/bkt/a%20b%2Bc?Signature=x%2By%3D&Expires=1&AWSAccessKeyId=K&b=2&a=1"
    p = plan(cfg, uri)
    assert p.location == "https://s3.example.com" + uri
    assert p.fill == ObjectRef("bkt", "a b+c")


@pytest.mark.parametrize("uri, method, headers, why", [
    ("/bkt/key", "HEAD", {}, "method HEAD"),
    ("/bkt/key", "PUT", {}, "method PUT"),
    ("/bkt", "GET", {}, "bucket-level"),
    ("/bkt/raw+plus", "GET", {}, "raw '+'"),
    ("/bkt/key?versionId=abc", "GET", {}, "sub-resource versionId"),
    ("/bkt/key", "GET", {"Authorization": "AWS4-HMAC-SHA256 ..."}, "header-signed"),
    ("/bkt/a//b", "GET", {}, "uncacheable key"),
    ("/bkt/a/%2E%2E/b", "GET", {}, "uncacheable key"),
    ("/bkt/dir/", "GET", {}, "uncacheable key"),
    # Targets a fetch cannot send unchanged (issue 12 item 2): the fill would store a look-alike key.
    ("/bkt/\xc3\xa9", "GET", {}, "cannot be sent to S3 unchanged"),
    ("/bkt/a#b", "GET", {}, "cannot be sent to S3 unchanged"),
    ("/bkt/key?x=\xff", "GET", {}, "cannot be sent to S3 unchanged"),
])
def test_redirect_only(cfg, uri, method, headers, why):
    p = plan(cfg, uri, method, headers)
    assert p.fill is None
    assert why in p.why_not
    assert p.location == "https://s3.example.com" + uri


def test_bad_requests_raise(cfg):
    with pytest.raises(BadRequest):
        plan(cfg, "/bkt/%zz")
