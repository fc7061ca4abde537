"""Grants without the stack: which URLs may have one, their windows, withdrawal, removal with the entry, the sweep."""

from __future__ import annotations

import os

from evictor.housekeeping import prune_grant_dirs, sweep_grants
from s3cache import entries, grants
from s3cache.layout import Layout, ObjectRef

SIG4 = "ab" * 32
V4 = (f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261202%2Fus-east-1%2Fs3%2Faws4_request"
      f"&X-Amz-Date=20261202T030000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={SIG4}")
V2 = "AWSAccessKeyId=AK&Expires=1796190000&Signature=abcdefghijklmnopqrstuvwxyz%2B%3D"


def test_url_part_names_form_method_signature_and_expiry():
    assert grants.url_part("GET", False, V4) == f"p_GET_v4_{SIG4}_20261202T030000Z_3600"
    assert grants.url_part("HEAD", True, V4) == f"v_HEAD_v4_{SIG4}_20261202T030000Z_3600"
    assert grants.url_part("GET", True, V2) == "v_GET_v2_abcdefghijklmnopqrstuvwxyz+=_1796190000"


def test_urls_that_must_be_checked_every_time_have_no_grant_name():
    assert grants.url_part("PUT", False, V4) is None
    assert grants.url_part("GET", False, V4 + "&response-content-type=text%2Fhtml") is None
    assert grants.url_part("GET", False, V4 + "&X-Amz-Signature=" + SIG4) is None  # repeated
    assert grants.url_part("GET", False, V4.replace("SignedHeaders=host", "SignedHeaders=host%3Brange")) is None
    assert grants.url_part("GET", False, V4.replace("X-Amz-Expires=3600", "X-Amz-Expires=")) is None
    assert grants.url_part("GET", False, V2.replace("%2B%3D", "%2F%3D")) is None  # "/" cannot be in a name
    assert grants.url_part("GET", False, V2, {"x-amz-date": "x"}) is None  # a header SigV2 signs
    assert grants.url_part("GET", False, V2 + "&versionId=3") is None
    assert grants.url_part("GET", False, "") is None


def test_window_drops_digits_of_the_time_as_caddy_does():
    assert grants.window(10, 1796182591.9) == "179618259"
    assert grants.window(1, 1796182591.9) == "1796182591"
    assert grants.window(1000, 1796182591) == "1796182"
    assert grants.window_of(b"1796182_p_GET_x") == 1796182
    assert grants.window_of(b"junk") is None


def test_etag_part_takes_s3_etags_only():
    assert grants.etag_part('"0123456789abcdef0123456789abcdef"') == "0123456789abcdef0123456789abcdef"
    assert grants.etag_part('"0123456789abcdef0123456789abcdef-12"') == "0123456789abcdef0123456789abcdef-12"
    assert grants.etag_part('W/"x"') is None and grants.etag_part(None) is None


def _cached(layout: Layout, ref: ObjectRef, body: bytes = b"x") -> None:
    path = layout.object_path(ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def test_a_grant_for_a_file_replaced_meanwhile_is_withdrawn(tmp_path):
    layout = Layout(tmp_path)
    layout.ensure()
    ref = ObjectRef("bkt", "dir/key")
    _cached(layout, ref)
    checked = grants.Identity.of(layout.object_path(ref))
    assert grants.record(layout, ref, "1_p_GET_a", "e", checked)
    assert os.listdir(layout.grant_dir(ref)) == ["1_p_GET_a"]
    assert grants.path(layout, ref, "1_p_GET_a", "e").is_file()
    _cached(layout, ref, b"new")  # a new fill: another file (size differs; inode may be reused)
    tmp = layout.object_path(ref).with_name("other")
    tmp.write_bytes(b"new!")
    os.replace(tmp, layout.object_path(ref))
    assert not grants.record(layout, ref, "1_p_GET_b", "e", checked)
    assert sorted(os.listdir(layout.grant_dir(ref))) == ["1_p_GET_a"]
    layout.object_path(ref).unlink()
    assert not grants.record(layout, ref, "1_p_GET_c", "e", checked)


def test_removing_an_entry_removes_its_grants(tmp_path):
    layout = Layout(tmp_path)
    layout.ensure()
    ref = ObjectRef("bkt", "key")
    _cached(layout, ref)
    assert grants.record(layout, ref, "1_p_GET_a", "e", grants.Identity.of(layout.object_path(ref)))
    assert entries.remove(layout, ref).outcome == "removed"
    assert not layout.grant_dir(ref).exists()


def test_the_sweep_removes_grants_of_past_windows_and_of_objects_gone(tmp_path):
    layout = Layout(tmp_path)
    layout.ensure()
    now = 1796182591
    live, gone = ObjectRef("bkt", "a/live"), ObjectRef("bkt", "a/gone")
    _cached(layout, live)
    current, past = grants.window(10, now), grants.window(10, now - 10)
    for ref in (live, gone):
        for w in (current, past):
            g = grants.path(layout, ref, f"{w}_p_GET_x", "e")
            g.parent.mkdir(parents=True)
            g.touch()
    (layout.grant_dir(live) / "not-a-grant").touch()

    dry = sweep_grants(layout, 10, now=now, dry_run=True)
    assert (dry.removed, dry.live) == (4, 1)
    assert len(os.listdir(layout.grant_dir(gone))) == 2 and grants.path(layout, gone, f"{past}_p_GET_x", "e").exists()

    swept = sweep_grants(layout, 10, now=now)
    assert (swept.removed, swept.live) == (4, 1)
    assert grants.path(layout, live, f"{current}_p_GET_x", "e").exists()
    assert not grants.path(layout, live, f"{past}_p_GET_x", "e").exists()
    assert not (layout.grant_dir(live) / "not-a-grant").exists()
    assert swept.bytes > 0  # the live grant's directories take space
    assert prune_grant_dirs(swept.dirs) >= 3  # the dead grants' directories
    assert os.listdir(layout.grant_dir(live)) == [f"{current}_p_GET_x"]
    assert os.listdir(layout.grant_dir(gone)) == []  # pruned by the next pass

    off = sweep_grants(layout, 0, now=now)  # S3CACHE_GRANT_TTL=0: none is alive
    assert (off.removed, off.live) == (1, 0)


def test_a_grant_only_where_caddy_alone_sends_the_headers_the_check_would(tmp_path):
    from sidecar.access import _caddy_alone_answers

    layout = Layout(tmp_path)
    layout.ensure()
    ref = ObjectRef("bkt", "x.bin")
    octet = {"content-type": "binary/octet-stream", "etag": '"0123456789abcdef0123456789abcdef"'}
    assert _caddy_alone_answers(layout, ref, {})
    assert not _caddy_alone_answers(layout, ref, octet)  # no octet mark: Caddy would guess another type
    mark = layout.mark_path(ref, "octet")
    mark.parent.mkdir(parents=True)
    mark.touch()
    assert _caddy_alone_answers(layout, ref, octet)
    # Told by a revalidation after the fill: file_server cannot send it.
    assert not _caddy_alone_answers(layout, ref, {**octet, "content-disposition": "attachment"})
    assert not _caddy_alone_answers(layout, ref, {**octet, "x-amz-meta-a": "1"})


def test_unexpired_reads_either_signatures_expiry():
    signed = 1796180400  # 20261202T030000Z
    assert grants.unexpired(V4, now=signed + 3600) and not grants.unexpired(V4, now=signed + 3601)
    assert grants.unexpired(V2, now=1796190000) and not grants.unexpired(V2, now=1796190001)
    assert not grants.unexpired("X-Amz-Signature=x&X-Amz-Date=junk&X-Amz-Expires=1", now=0)
    assert not grants.unexpired("", now=0)


def test_an_eviction_pass_sweeps_grants_and_counts_the_live_ones_as_cache_bytes(tmp_path):
    import time

    from evictor.run import run_pass
    from s3cache.config import Config
    from s3cache.usage import FsUsage

    layout = Layout(tmp_path)
    layout.ensure()
    now = time.time()
    cached, gone = ObjectRef("bkt", "a"), ObjectRef("bkt", "gone")
    _cached(layout, cached, b"x" * 100)
    for ref, w in ((cached, grants.window(10, now)), (cached, grants.window(10, now - 10)),
                   (gone, grants.window(10, now))):
        g = grants.path(layout, ref, f"{w}_p_GET_x", "e")
        g.parent.mkdir(parents=True, exist_ok=True)
        g.touch()
    config = Config.from_env({"S3CACHE_DIR": str(tmp_path), "S3CACHE_GRANT_TTL": "10"})
    summary = run_pass(config, usage=lambda: FsUsage(used=0, avail=10 ** 15), now=lambda: now)
    assert summary.grants_removed == 2
    assert summary.bytes_after > 100  # the object and the directories of its live grant
    assert os.listdir(layout.grant_dir(cached)) == [f"{grants.window(10, now)}_p_GET_x"]
