"""Units of hit headers: what a fill stores, what a hit answers, which objects need the sidecar in open mode."""

from __future__ import annotations

import json
import os
import time
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st

from evictor.policy import FsUsage
from evictor.run import run_pass
from s3cache import metadata
from s3cache.config import Config
from s3cache.layout import Layout, ObjectRef
from sidecar import hit_headers
from sidecar.hit_headers import OVERRIDABLE

OWN = {"content-type": "application/pdf", "content-disposition": "inline", "content-encoding": "gzip",
       "content-language": "de", "cache-control": "max-age=60", "expires": "Thu, 01 Jan 2099 00:00:00 GMT",
       "etag": '"0123456789abcdef0123456789abcdef"', "x-amz-meta-owner": "alice"}
PARAMS = sorted(OVERRIDABLE.values())
overrides = st.dictionaries(st.sampled_from(PARAMS), st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                                             min_size=1, max_size=8), max_size=len(PARAMS))
param_case = st.sampled_from([str.lower, str.upper, str.title])


def _s3_answer(own: dict, params: dict) -> dict:
    """S3's answer to a URL: the object's headers with that URL's overrides (and S3 always says Content-Type)."""
    out = dict(own)
    for header, param in OVERRIDABLE.items():
        if param in params:
            out[header] = params[param]
    return out


@given(fill_with=overrides, hit_with=overrides, case=param_case)
def test_a_hit_answers_the_objects_own_headers_with_only_its_own_overrides(fill_with, hit_with, case):
    # The filling URL may spell its parameter names in any case: what it may have overridden is left out.
    fill_query = urlencode({case(k): v for k, v in fill_with.items()})
    stored = hit_headers.object_headers(_s3_answer(OWN, fill_with), fill_query)
    got = hit_headers.s3_headers(stored, urlencode(hit_with))
    for header, param in OVERRIDABLE.items():
        if param in hit_with:
            assert got[header] == hit_with[param]
        elif param in fill_with:
            assert header not in got  # unknown, never the filling URL's value
        else:
            assert got[header] == OWN[header]
    assert got["etag"] == OWN["etag"] and got["x-amz-meta-owner"] == "alice"


def _layout_with_meta(tmp_path, headers: dict) -> tuple[Layout, ObjectRef]:
    layout = Layout(tmp_path / "cache")
    layout.ensure()
    ref = ObjectRef("bkt", "dir/obj")
    for path in (layout.object_path(ref), layout.meta_path(ref)):
        path.parent.mkdir(parents=True, exist_ok=True)
    layout.object_path(ref).write_bytes(b"x")
    layout.meta_path(ref).write_text(json.dumps({"bucket": "bkt", "key": "dir/obj", "headers": headers}))
    return layout, ref


def test_a_response_naming_the_stored_etag_tells_the_headers_it_did_not_override(tmp_path):
    stored = {k: v for k, v in OWN.items() if k not in ("content-type", "content-encoding")}
    layout, ref = _layout_with_meta(tmp_path, stored)
    # A revalidation through a URL that overrides Content-Encoding: only Content-Type is learnt.
    told = {"ETag": OWN["etag"], "Content-Type": OWN["content-type"], "Content-Encoding": "br"}
    hit_headers.record(layout, ref, told, "response-content-encoding=br")
    got = metadata.load_headers(layout, ref)
    assert got["content-type"] == OWN["content-type"] and "content-encoding" not in got
    assert not [p for p in layout.tmp_dir.iterdir()]  # nothing left behind


def test_a_response_for_another_etag_tells_nothing(tmp_path):
    stored = {"etag": OWN["etag"]}
    layout, ref = _layout_with_meta(tmp_path, stored)
    hit_headers.record(layout, ref, {"ETag": '"other"', "Content-Type": "text/html"}, "")
    assert metadata.load_headers(layout, ref) == stored


def test_only_objects_whose_headers_file_server_cannot_send_are_marked():
    plain = {"content-type": "image/png", "etag": '"x"', "last-modified": "y", "x-amz-server-side-encryption": "AES256"}
    kind = hit_headers.mark_kind
    assert kind("a/photo.PNG", plain) is None
    assert kind("a/no-metadata", {}) is None
    assert kind("a/photo", plain) == "headers"  # no extension: Caddy sends no Content-Type at all
    assert kind("a/photo.jpg", plain) == "headers"  # Caddy would say image/jpeg
    assert kind("page.html", {"content-type": "text/html"}) == "headers"  # Caddy adds a charset
    assert kind("page.html", {"content-type": "binary/octet-stream"}) == "octet"  # S3 makes it a download
    assert kind("data/blob", {"content-type": "binary/octet-stream"}) == "octet"
    assert kind("data/blob.bin", {"content-type": "application/octet-stream"}) == "app-octet"
    assert kind("data/blob.bin", {"content-type": "application/octet-stream; x=1"}) == "headers"
    for extra in ("content-encoding", "content-disposition", "content-language", "cache-control", "expires",
                  "x-amz-meta-anything"):
        assert kind("a/photo.png", {**plain, extra: "v"}) == "headers", extra
        assert kind("a/blob", {"content-type": "binary/octet-stream", extra: "v"}) == "headers", extra


def test_marks_go_with_their_objects_and_orphans_after_the_grace_period(tmp_path):
    layout, ref = _layout_with_meta(tmp_path, {})
    now = time.time()
    marks = [layout.mark_path(ref, kind) for kind in ("headers", "octet")]
    for mark in marks:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
    orphan = layout.mark_dirs["octet"] / "bkt" / "gone" / "long-ago"
    young = layout.mark_dirs["headers"] / "bkt" / "fill-about-to-rename"
    for path, age in ((orphan, 3600), (young, 5)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (now - age, now - age))
    config = Config.from_env({"S3CACHE_DIR": str(layout.root), "S3CACHE_EVICT_HIGH": "90", "S3CACHE_EVICT_LOW": "80"})
    summary = run_pass(config, usage=lambda: FsUsage(used=95, avail=5))  # the disk above HIGH
    assert summary.evicted_files == 1
    assert not layout.object_path(ref).exists() and not any(mark.exists() for mark in marks)
    assert not orphan.exists() and not (layout.mark_dirs["octet"] / "bkt" / "gone").exists()
    assert young.exists()


def test_nothing_is_recorded_while_a_fill_of_the_object_runs(tmp_path):
    import fcntl
    stored = {"etag": OWN["etag"]}
    layout, ref = _layout_with_meta(tmp_path, stored)
    with open(layout.temp_path(ref), "w") as part:
        fcntl.flock(part, fcntl.LOCK_EX)  # a fill (refresh) holds the object
        hit_headers.record(layout, ref, {"ETag": OWN["etag"], "Content-Type": "image/png"}, "")
        assert metadata.load_headers(layout, ref) == stored
    hit_headers.record(layout, ref, {"ETag": OWN["etag"], "Content-Type": "image/png"}, "")
    assert metadata.load_headers(layout, ref) == {**stored, "content-type": "image/png"}
