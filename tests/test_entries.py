"""Listing and purging cache entries (s3cache/entries.py), and the admin API over them
(``/_s3cache/objects``, sidecar/objects_api.py) on the Flask app: name order, prefixes, paging, odd keys
byte for byte, the S3CACHE_ADMIN_ALLOW guard, and the evictor leaving a locked entry alone."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, strategies as st

from evictor.remove import remove_object
from evictor.report import Errors
from s3cache import entries, objectlock, wire
from s3cache.config import Config
from s3cache.layout import MARK_KINDS, Layout, ObjectRef, uncacheable_reason
from s3cache.ledger import CacheSize, Reading
from sidecar.app import create_app

GATEWAY_KEYS = (Path(__file__).parent / "data" / "gateway-keys.txt").read_text(encoding="utf-8").splitlines()
BUCKET = "entries-bkt"


def cache(layout: Layout, bucket: str, key: str, body: bytes = b"x", etag: str | None = None) -> None:
    ref = ObjectRef(bucket, key)
    obj, meta = layout.object_path(ref), layout.meta_path(ref)
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(body)
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"bucket": bucket, "key": key, "size": len(body), "fetched_at": 1000.0,
                                "headers": {"etag": etag or '"e"'}}))
    mark = layout.mark_path(ref, "headers")
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()


@pytest.fixture
def layout(tmp_path):
    lay = Layout(tmp_path / "cache")
    lay.ensure()
    return lay


def names(layout, prefix="", after=""):
    return [e.name for e in entries.iter_entries(layout, prefix, after)]


def test_the_listing_is_in_bytewise_name_order_whatever_the_directories(layout):
    keys = ["a-c", "a/b", "a0", "a/b-x/y", "a/c", "z", "é", "a.b/c"]
    for k in keys:
        cache(layout, BUCKET, k)
    cache(layout, "other-bkt", "k")
    expected = sorted(f"{BUCKET}/{k}" for k in keys)
    assert sorted(expected, key=lambda n: n.encode()) == expected  # code points order as UTF-8 bytes do
    assert names(layout) == expected + ["other-bkt/k"]
    assert names(layout, f"{BUCKET}/a/") == [f"{BUCKET}/a/b", f"{BUCKET}/a/b-x/y", f"{BUCKET}/a/c"]
    assert names(layout, f"{BUCKET}/a/b") == [f"{BUCKET}/a/b", f"{BUCKET}/a/b-x/y"]
    for i, name in enumerate(expected):
        assert names(layout, after=name) == expected[i + 1:] + ["other-bkt/k"]


@given(st.lists(st.text(st.sampled_from("ab/-.é"), min_size=1, max_size=6), max_size=12, unique=True),
       st.integers(1, 4))
def test_paging_returns_each_cached_object_once_in_order(tmp_path_factory, keys, limit):
    layout = Layout(tmp_path_factory.mktemp("paging") / "cache")
    layout.ensure()
    stored = []
    for k in keys:
        if uncacheable_reason(ObjectRef(BUCKET, k)) is None:
            try:
                cache(layout, BUCKET, k)
                stored.append(f"{BUCKET}/{k}")
            except (FileExistsError, NotADirectoryError, IsADirectoryError):  # `a` vs `a/b`: one of them
                pass
    got, after = [], ""
    while True:
        page, cursor = entries.page(layout, "", after, limit)
        assert len(page) <= limit
        got += [e.name for e in page]
        if cursor is None:
            break
        after = cursor
    on_disk = sorted(f"{BUCKET}/{os.path.relpath(os.path.join(d, f), layout.objects_dir / BUCKET)}"
                     for d, _, fs in os.walk(layout.objects_dir) for f in fs)
    assert got == on_disk


def test_remove_takes_the_object_its_metadata_and_marks_and_subtracts_it_from_the_ledger(layout):
    cache(layout, BUCKET, "k/one", b"12345")
    cache(layout, BUCKET, "k/two", b"123")
    ledger = CacheSize(layout.cache_bytes_file)
    ledger.set_after_pass(8, 2, 0, 0, Reading())  # a pass measured both
    ref = ObjectRef(BUCKET, "k/one")
    removal = entries.remove(layout, ref)
    assert (removal.outcome, removal.bytes) == ("removed", 5)
    assert not layout.object_path(ref).exists() and not layout.meta_path(ref).exists()
    assert not any(layout.mark_path(ref, k).exists() for k in MARK_KINDS)
    assert entries.remove(layout, ref).outcome == "absent"
    assert entries.remove(layout, ObjectRef(BUCKET, "a//b")).outcome == "absent"  # never cacheable
    after = ledger.read()  # once: the second removal found nothing
    assert (after.bytes, after.files, after.changed_bytes, after.changed_files, after.changes) == (3, 1, -5, -1, 1)
    assert not list(layout.tmp_dir.iterdir())


def test_a_purge_happens_even_where_the_ledger_cannot_be_kept(layout):
    cache(layout, BUCKET, "k", b"123")
    layout.run_dir.rmdir()  # no run/ to keep run/cache-bytes in: the next pass measures anyway
    assert entries.remove(layout, ObjectRef(BUCKET, "k")).outcome == "removed"
    assert not layout.object_path(ObjectRef(BUCKET, "k")).exists()


def test_the_evictor_leaves_an_entry_whose_fill_is_running(layout):
    cache(layout, BUCKET, "busy")
    ref = ObjectRef(BUCKET, "busy")
    obj = os.fsencode(layout.object_path(ref))
    meta = os.fsencode(layout.meta_path(ref))
    marks = [os.fsencode(layout.mark_path(ref, k)) for k in MARK_KINDS]
    tmp = str(layout.temp_path(ref))
    fd = objectlock.try_lock(tmp)
    try:
        assert remove_object(layout, obj, meta, Errors(), marks) is False
        assert os.path.exists(obj) and os.path.exists(meta)
    finally:
        objectlock.release(fd, tmp)
    assert remove_object(layout, obj, meta, Errors(), marks) is True
    assert not os.path.exists(obj) and not os.path.exists(meta)


def test_a_purge_prefix_must_name_its_bucket(layout):
    for bad in ("", "entries", "/x"):
        with pytest.raises(ValueError):
            list(entries.purge_prefix(layout, bad))


# -- the admin API on the app -----------------------------------------------------------------


@pytest.fixture
def app_layout(tmp_path):
    config = Config.from_env({"S3CACHE_DIR": str(tmp_path / "cache"), "S3CACHE_ADMIN_ALLOW": "192.0.2.0/24"})
    app = create_app(config)
    return app.test_client(), Layout(config.dir)


def call(client, method: str, target: str, peer: str = "192.0.2.7", via_caddy: bool = False):
    headers = {wire.RAW_URI_HEADER: target, wire.CLIENT_IP_HEADER: peer} if via_caddy else {}
    return client.open(target, method=method, headers=headers,
                       environ_base={"REMOTE_ADDR": "127.0.0.1" if via_caddy else peer, "REQUEST_URI": target})


def test_odd_keys_round_trip_through_the_listing_and_purge_one_by_one(app_layout):
    client, layout = app_layout
    keys = GATEWAY_KEYS + ["ctl\nkey\t.txt", "q?x=1&y#z", "pct%2Fslash", "sp ace+plus"]
    for k in keys:
        cache(layout, BUCKET, k, k.encode())
    listed, after = [], ""
    while True:
        resp = call(client, "GET", f"{wire.OBJECTS_PATH}?prefix={quote(BUCKET + '/', safe='')}"
                                   f"&after={quote(after, safe='')}&limit=7")
        assert resp.status_code == 200, resp.data
        listed += resp.json["objects"]
        if resp.json["next_after"] is None:
            break
        after = resp.json["next_after"]
    assert [o["key"] for o in listed] == sorted(keys)
    for o in listed:
        assert o["size"] == len(o["key"].encode()) and o["etag"] == '"e"' and o["stored"] == 1000.0
        one = call(client, "GET", o["path"], via_caddy=True)
        assert one.status_code == 200 and one.json["key"] == o["key"]
        gone = call(client, "DELETE", o["path"], via_caddy=True)
        assert gone.status_code == 200, gone.data
        assert gone.json["objects"] == [{"bucket": BUCKET, "key": o["key"], "outcome": "removed",
                                         "bytes": o["size"], "detail": ""}]
        assert not layout.object_path(ObjectRef(BUCKET, o["key"])).exists()
        assert call(client, "GET", o["path"]).status_code == 404
    assert call(client, "GET", wire.OBJECTS_PATH).json["objects"] == []


def test_purge_by_prefix_takes_only_that_prefix_of_that_bucket(app_layout):
    client, layout = app_layout
    for k in ("b/1", "b/2", "b-c", "bb/3"):
        cache(layout, BUCKET, k, b"abc")
    cache(layout, "other-bkt", "b/1")
    resp = call(client, "DELETE", f"{wire.OBJECTS_PATH}?prefix={BUCKET}%2Fb%2F")
    assert resp.status_code == 200 and resp.json["counts"]["removed"] == 2 and resp.json["bytes"] == 6
    assert names(layout) == [f"{BUCKET}/b-c", f"{BUCKET}/bb/3", "other-bkt/b/1"]
    refused = call(client, "DELETE", f"{wire.OBJECTS_PATH}?prefix={BUCKET}")
    assert refused.status_code == 400 and b"<Code>InvalidArgument</Code>" in refused.data
    assert call(client, "DELETE", wire.OBJECTS_PATH).status_code == 400  # no prefix: not "everything"


@pytest.mark.parametrize("method,target", [
    ("DELETE", f"{wire.OBJECTS_PATH}/{BUCKET}/k"), ("GET", f"{wire.OBJECTS_PATH}/{BUCKET}/k"),
    ("GET", wire.OBJECTS_PATH), ("DELETE", f"{wire.OBJECTS_PATH}?prefix={BUCKET}/")])
def test_the_allow_list_guards_the_objects_api(app_layout, method, target):
    client, layout = app_layout
    cache(layout, BUCKET, "k")
    for refused in (call(client, method, target, peer="127.0.0.1"),
                    call(client, method, target, peer="203.0.113.9", via_caddy=True)):
        assert refused.status_code == 403 and b"S3CACHE_ADMIN_ALLOW" in refused.data
    assert layout.object_path(ObjectRef(BUCKET, "k")).exists()
    assert call(client, method, target, via_caddy=True).status_code == 200


@pytest.mark.parametrize("target,status", [
    (f"{wire.OBJECTS_PATH}/{BUCKET}/%zz", 400), (f"{wire.OBJECTS_PATH}/-bad-/k", 400),
    (f"{wire.OBJECTS_PATH}/{BUCKET}", 400), (f"{wire.OBJECTS_PATH}?limit=0", 400),
    (f"{wire.OBJECTS_PATH}?limit=x", 400), (f"{wire.OBJECTS_PATH}/{BUCKET}/k?wait=-1", 400),
    (f"{wire.OBJECTS_PATH}/{BUCKET}/a/../../x", 200)])
def test_bad_requests_get_s3_style_errors(app_layout, target, status):
    client, _ = app_layout
    method = "GET" if "limit" in target else "DELETE"
    resp = call(client, method, target)
    assert resp.status_code == status, resp.data
    if status == 400:
        assert resp.data.startswith(b"<?xml") and b"<Code>" in resp.data
    else:
        assert resp.json["counts"]["absent"] == 1  # dot segments: never cached, nothing removed
