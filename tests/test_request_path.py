"""Raw request URI -> (bucket, key), refusing what S3 would refuse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3cache.request_path import BadRequest, parse_uri


def test_path_style_uri_is_decoded_once():
    p = parse_uri("/bkt/dir/a%20b%2Bc%2525.txt?X-Amz-Signature=abc&x=1")
    assert (p.bucket, p.key) == ("bkt", "dir/a b+c%25.txt")
    assert p.raw_query == "X-Amz-Signature=abc&x=1"
    assert not p.literal_plus


def test_raw_plus_is_flagged_because_s3_may_read_it_as_space():
    assert parse_uri("/bkt/a+b").literal_plus


def test_encoded_slash_is_part_of_the_key_as_s3_reads_it():
    assert parse_uri("/bkt/a%2Fb").key == "a/b"


def test_bucket_level_requests_have_an_empty_key():
    assert parse_uri("/bkt").key == ""
    assert parse_uri("/bkt/").key == ""


@pytest.mark.parametrize("uri, code", [
    ("//key", "InvalidRequest"),
    ("/Bad..Bucket/key", "InvalidBucketName"),
    ("/a/key", "InvalidBucketName"),
    ("/bkt/broken%zzescape", "InvalidURI"),
    ("/bkt/truncated%2", "InvalidURI"),
    ("/bkt/nul%00byte", "InvalidURI"),
    ("/bkt/not-utf8-%C3", "InvalidURI"),
    ("bkt/no-leading-slash", "InvalidURI"),
    ("/bkt/" + "k" * 1025, "KeyTooLongError"),
    ("/bkt/" + "k" * 9000, "RequestURITooLong"),
])
def test_malformed_requests_get_s3_error_codes(uri, code):
    with pytest.raises(BadRequest) as exc:
        parse_uri(uri)
    assert exc.value.code == code
    assert 400 <= exc.value.status < 500


def test_subresources_are_recognised():
    assert parse_uri("/bkt/k?versionId=3&X-Amz-Date=1").subresources == ["versionId"]
    assert parse_uri("/bkt/k?acl").subresources == ["acl"]
    assert parse_uri("/bkt/k?response-content-type=x").subresources == []


@given(st.text(st.characters(codec="latin-1"), max_size=200))
def test_never_raises_anything_but_bad_request(raw):
    try:
        parse_uri(raw)
    except BadRequest:
        pass
