"""The key -> path mapping: never outside the cache, never two keys on one file."""

from __future__ import annotations

import os

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from s3cache.layout import Layout, ObjectRef, Uncacheable, uncacheable_reason

ROOT = "/srv/cache"
layout = Layout(ROOT)

# Keys as S3 allows them: any Unicode, with a bias towards the characters that break paths.
key_chars = st.one_of(st.sampled_from(list("/./..%+ \\\x00~*?[]{}'\"")), st.characters(codec="utf-8"))
keys = st.text(key_chars, min_size=0, max_size=60)
buckets = st.from_regex(r"[a-z0-9][a-z0-9.\-_]{1,20}[a-z0-9]", fullmatch=True)


def _cacheable(bucket, key):
    ref = ObjectRef(bucket, key)
    try:
        return ref, layout.object_path(ref)
    except Uncacheable:
        return ref, None


@given(buckets, keys)
@settings(max_examples=2000, deadline=None)
def test_no_key_maps_outside_the_objects_tree(bucket, key):
    ref, path = _cacheable(bucket, key)
    assume(path is not None)
    real = os.path.normpath(path)
    assert real == str(path), "the mapped path would be cleaned into another path"
    assert real.startswith(str(layout.objects_dir) + os.sep)
    # The meta file lives in a sibling tree, and the temp file in tmp/.
    assert os.path.normpath(layout.meta_path(ref)).startswith(str(layout.meta_dir) + os.sep)
    assert layout.temp_path(ref).parent == layout.tmp_dir


@given(buckets, keys, buckets, keys)
@settings(max_examples=2000, deadline=None)
def test_distinct_keys_never_share_a_file(b1, k1, b2, k2):
    assume((b1, k1) != (b2, k2))
    _, p1 = _cacheable(b1, k1)
    _, p2 = _cacheable(b2, k2)
    assume(p1 is not None and p2 is not None)
    assert p1 != p2
    assert layout.temp_path(ObjectRef(b1, k1)) != layout.temp_path(ObjectRef(b2, k2))


@given(buckets, keys)
def test_the_mapping_reads_back_as_the_same_key(bucket, key):
    ref, path = _cacheable(bucket, key)
    assume(path is not None)
    assert layout.ref_for_object_file(path) == ref
    assert layout.object_path_for_meta_file(layout.meta_path_for_object_file(path)) == path


@pytest.mark.parametrize("key, reason", [
    ("double//slash", "empty path segment"),
    ("/leading-slash", "empty path segment"),
    ("trailing-slash/", "trailing slash"),
    ("dot/./segment", "dot segment"),
    ("dotdot/../escape", "dot segment"),
    ("..", "dot segment"),
    ("x" * 256, "longer than 255 bytes"),
    ("dir/" + "é" * 128, "longer than 255 bytes"),  # 256 bytes in UTF-8, 128 characters
    ("nul\x00byte", "NUL"),
    ("", "empty key"),
    ("k" * 1025, "1024"),
])
def test_keys_that_cannot_be_stored_faithfully_are_uncacheable(key, reason):
    assert reason in uncacheable_reason(ObjectRef("bucket", key))
    with pytest.raises(Uncacheable):
        layout.object_path(ObjectRef("bucket", key))


@pytest.mark.parametrize("key", [
    "x" * 255, ".hidden", "...", "a/.tmp/b", "tmp/x.part", "meta/x", "index.html", "sp ace", "plus+sign",
    "%2e%2e", "back\\slash", "ファイル.txt",
])
def test_unusual_but_faithful_keys_are_cacheable(key):
    assert uncacheable_reason(ObjectRef("bucket", key)) is None


@pytest.mark.parametrize("bucket", ["..", ".", "a", "-leading", "trailing-", "has/slash", "has..dots", ""])
def test_invalid_bucket_names_are_uncacheable(bucket):
    assert uncacheable_reason(ObjectRef(bucket, "key")) == "invalid bucket name"
