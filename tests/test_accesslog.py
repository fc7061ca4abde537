"""The one reader of Caddy's access log, as both followers see it: records, and gzipped rolls."""

from __future__ import annotations

import gzip
import os
import time

import pytest

from s3cache import accesslog
from s3cache.accesslog import Follower
from tests.test_evictor_accesslog import CADDY_2_11_HIT_LINE, CADDY_2_11_MISS_LINE
from tests.test_status_units import collect


def test_a_caddy_line_becomes_one_record():
    rec = accesslog.parse(CADDY_2_11_HIT_LINE)
    assert (rec.method, rec.host, rec.status, rec.size) == ("GET", "127.0.0.1:18999", 200, 6)
    assert rec.raw_uri == "/bkt/dir/a.txt?X-Amz-Signature=REDACTED&foo=1" and rec.raw_path == "/bkt/dir/a.txt"
    assert rec.ts == 1795535564.0203056 and rec.x_cache() == ["HIT"]
    assert rec.request_header("User-Agent") == "curl/7.88.1"
    assert accesslog.parse(CADDY_2_11_MISS_LINE).x_cache() is None


def test_the_uri_comes_back_as_the_latin_1_text_of_its_bytes():
    line = CADDY_2_11_HIT_LINE.replace(b"/bkt/dir/a.txt", "/bkt/café".encode())
    assert accesslog.parse(line).raw_path == "/bkt/café".encode().decode("latin-1")


@pytest.mark.parametrize("line", [b"not json", b'["a"]', b'{"ts": 1}', b'{"ts": "x", "request": {"uri": "/"}}',
                                  b'{"ts": NaN, "request": {"uri": "/"}}', b'{"invalid utf-8 \xff": 1}'])
def test_what_is_not_a_record_is_a_value_error(line):
    with pytest.raises(ValueError):
        accesslog.parse(line)


def roll_gzipped(log, name: str) -> None:
    """What Caddy does by default: rename, start a new file, gzip the old one and delete it."""
    rolled = log.parent / name
    os.rename(log, rolled)
    with open(rolled, "rb") as src, gzip.open(f"{rolled}.gz", "wb") as dst:
        dst.write(src.read())
    rolled.unlink()


def test_the_sidecar_follower_reads_gzipped_rolls_too(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    f = Follower(log)
    for n, second in ((b"1", "00"), (b"2", "01")):  # two rolls, both gzipped, between two reads
        log.write_bytes(n + b"\n")
        roll_gzipped(log, f"access-2026-11-24T16-00-{second}.000-size.log")
        time.sleep(0.01)
    log.write_bytes(b"3\n")
    assert collect(f) == [b"1", b"2", b"3"]
    assert collect(f) == []


def test_rolls_from_before_the_follower_started_are_not_its_lines(tmp_path):
    log = tmp_path / "access.log"
    (tmp_path / "access-2026-11-24T16-00-00.000-size.log").write_bytes(b"old\n")
    f = Follower(log)
    log.write_bytes(b"new\n")
    assert collect(f) == [b"new"]
