"""The evictor's access-log reading: hits become atimes, across Caddy's rolls, truncation and half-written lines."""

from __future__ import annotations

import gzip
import os
import time

import pytest

from evictor import accesslog
from tests.test_evictor import NOW, Cache, caddy_line, ns_ago

# Captured from Caddy 2.11.7 running the project's Caddyfile (a hit with a redacted signature).
CADDY_2_11_HIT_LINE = (
    b'{"level":"info","ts":1795535564.0203056,"logger":"http.log.access.log0","msg":"handled request",'
    b'"request":{"remote_ip":"127.0.0.1","remote_port":"53436","client_ip":"127.0.0.1","proto":"HTTP/1.1",'
    b'"method":"GET","host":"127.0.0.1:18999","uri":"/bkt/dir/a.txt?X-Amz-Signature=REDACTED&foo=1",'
    b'"headers":{"User-Agent":["curl/7.88.1"],"Accept":["*/*"]}},"bytes_read":0,"user_id":"","duration":0.001987206,'
    b'"size":6,"status":200,"resp_headers":{"Content-Length":["6"],"Server":["Caddy"],"X-Cache":["HIT"],'
    b'"Vary":["Accept-Encoding"],"Etag":["\\"dn3k8i45fa0x-6\\""],"Content-Type":["text/plain; charset=utf-8"],'
    b'"Last-Modified":["Tue, 24 Nov 2026 15:52:42 GMT"],"Accept-Ranges":["bytes"]}}'
)
CADDY_2_11_MISS_LINE = (
    b'{"level":"error","ts":1795535564.0370378,"logger":"http.log.access.log0","msg":"handled request",'
    b'"request":{"remote_ip":"127.0.0.1","remote_port":"53454","client_ip":"127.0.0.1","proto":"HTTP/1.1",'
    b'"method":"GET","host":"127.0.0.1:18999","uri":"/bkt/missing","headers":{"User-Agent":["curl/7.88.1"]}},'
    b'"bytes_read":0,"user_id":"","duration":0.000721289,"size":0,"status":502,"resp_headers":{"Server":["Caddy"]}}'
)
# How Caddy 2.11 (timberjack) names a rolled log: UTC time, the reason, then gzip by default.
ROLLED_PLAIN = "access-2026-11-24T15-53-19.265-size.log"
ROLLED_GZ = ROLLED_PLAIN + ".gz"


@pytest.fixture
def cache(tmp_path) -> Cache:
    c = Cache(tmp_path / "cache")
    for key in ("k1", "k2", "k3", "k4"):
        c.put(key, atime_ns=ns_ago(48))
    return c


def atime_of(cache: Cache, key: str) -> int:
    return os.stat(cache.layout.objects_dir / "bkt" / key).st_atime_ns


def refreshed(cache: Cache, *keys: str) -> bool:
    return all(atime_of(cache, k) > ns_ago(47) for k in keys)


def log_path(cache: Cache):
    return cache.layout.logs_dir / "access.log"


def roll(cache: Cache, gz: bool) -> None:
    """What Caddy does at roll_size: rename, start a new file, gzip the old one and delete it."""
    rolled = cache.layout.logs_dir / ROLLED_PLAIN
    os.rename(log_path(cache), rolled)
    log_path(cache).touch()
    if gz:
        n = len(list(cache.layout.logs_dir.glob("access-*.gz")))
        target = cache.layout.logs_dir / ROLLED_GZ.replace("19.265", f"19.{265 + n}")
        target.write_bytes(gzip.compress(rolled.read_bytes()))
        rolled.unlink()


# -- one line -------------------------------------------------------------------------------


def test_a_real_caddy_hit_line_gives_the_path_and_time():
    assert accesslog.parse_hit(CADDY_2_11_HIT_LINE) == (("127.0.0.1:18999", "/bkt/dir/a.txt"), 1795535564020305664)


def test_a_real_caddy_miss_line_is_no_hit():
    assert accesslog.parse_hit(CADDY_2_11_MISS_LINE) is None


def test_raw_utf8_and_percent_encoded_paths_reach_the_same_object(cache):
    cache.put("café.bin", atime_ns=ns_ago(48))
    raw_utf8 = accesslog.parse_hit(caddy_line("/bkt/café.bin", NOW).encode())[0]
    encoded = accesslog.parse_hit(caddy_line("/bkt/caf%C3%A9.bin", NOW).encode())[0]
    want = os.fsencode(str(cache.layout.objects_dir / "bkt" / "café.bin"))
    assert list(accesslog.resolve(cache.layout, {raw_utf8: 1})) == [want]
    assert list(accesslog.resolve(cache.layout, {encoded: 1})) == [want]


def test_a_virtual_hosted_hit_names_its_bucket_in_the_host(cache):
    from s3cache.addressing import Addressing
    cache.put("café.bin", atime_ns=ns_ago(48))
    line = caddy_line("/caf%C3%A9.bin", NOW).replace('"host":"127.0.0.1:8080"', '"host":"bkt.cache.example.com"')
    key = accesslog.parse_hit(line.encode())[0]
    want = os.fsencode(str(cache.layout.objects_dir / "bkt" / "café.bin"))
    vhosts = Addressing("https://s3.amazonaws.com", domain="cache.example.com")
    assert list(accesslog.resolve(cache.layout, {key: 1}, vhosts)) == [want]


def test_malformed_and_foreign_lines_are_skipped_and_the_good_ones_still_count(cache):
    good = caddy_line("/bkt/k1", NOW - 60)
    cache.log(
        'not json at all, but says "HIT"\n',
        '["HIT"]\n',                                               # JSON, not an object
        '{"ts": 1, "msg": "HIT"}\n',                               # no request
        caddy_line("/bkt/k2", NOW).replace('"ts":', '"ts":"x","was":'),  # ts not a number
        caddy_line("/bkt/HIT-in-the-path", NOW, x_cache="MISS"),   # "HIT" somewhere, not a hit
        caddy_line("/bkt/k3", NOW, method="POST"),                 # not a read
        caddy_line("/bkt/%zz-broken-escape", NOW),                  # parse_uri refuses it
        caddy_line("/bkt", NOW),                                   # bucket-level
        caddy_line("/bkt/..%2Fescape", NOW),                        # uncacheable key
        good,
    )
    with open(log_path(cache), "ab") as fh:
        fh.write(b'{"invalid utf-8 \xff":"HIT"}\n')
    read = accesslog.read_new(cache.layout, None, now=time.time())
    assert read.lines == 11 and read.malformed == 5
    s = cache.run()
    assert s.errors == 0 and s.log_hits == 1 and s.atimes_refreshed == 1
    assert atime_of(cache, "k1") == int((NOW - 60) * 1e9)
    assert not refreshed(cache, "k2") and not refreshed(cache, "k3")


def test_hits_only_move_atime_forward_never_into_the_future_and_keep_mtime(cache):
    path = cache.put("read-an-hour-ago", atime_ns=ns_ago(1), mtime_ns=ns_ago(1000))
    cache.log(caddy_line("/bkt/read-an-hour-ago", NOW - 7200))  # an older hit: no change
    assert cache.run().atimes_refreshed == 0
    assert path.stat().st_atime_ns == ns_ago(1)
    cache.log(caddy_line("/bkt/read-an-hour-ago", NOW + 86400))  # a clock a day ahead
    before = time.time_ns()
    assert cache.run().atimes_refreshed == 1
    st = path.stat()
    assert ns_ago(1) < st.st_atime_ns <= before + 10**9 and st.st_mtime_ns == ns_ago(1000)


def test_head_requests_are_reads_too(cache):
    cache.log(caddy_line("/bkt/k1", NOW, method="HEAD"))
    assert cache.run().atimes_refreshed == 1


# -- where we stopped ----------------------------------------------------------------------------


def test_each_line_is_read_once_across_passes(cache):
    cache.log(caddy_line("/bkt/k1", NOW))
    assert cache.run().log_lines == 1
    assert cache.run().log_lines == 0
    cache.log(caddy_line("/bkt/k2", NOW))
    s = cache.run()
    assert s.log_lines == 1 and refreshed(cache, "k1", "k2")


def test_a_half_written_last_line_waits_for_the_rest(cache):
    line = caddy_line("/bkt/k1", NOW)
    half = len(line) // 2
    cache.log(caddy_line("/bkt/k2", NOW), line[:half])
    s = cache.run()
    assert s.log_lines == 1 and refreshed(cache, "k2") and not refreshed(cache, "k1")
    assert accesslog.read_new(cache.layout, None, now=time.time()).malformed == 0  # not mis-parsed either
    cache.log(line[half:])
    s = cache.run()
    assert s.log_lines == 1 and refreshed(cache, "k1")


def test_the_rest_of_a_rolled_file_is_read_by_inode_when_kept_plain(cache):
    cache.log(caddy_line("/bkt/k1", NOW))
    cache.run()
    cache.log(caddy_line("/bkt/k2", NOW))  # written after our pass, before the roll
    roll(cache, gz=False)
    cache.log(caddy_line("/bkt/k3", NOW))
    s = cache.run()
    assert s.log_lines == 2 and refreshed(cache, "k2", "k3")


def test_the_rest_of_a_rolled_file_is_read_after_caddy_gzipped_it(cache):
    cache.log(caddy_line("/bkt/k1", NOW))
    cache.run()
    cache.log(caddy_line("/bkt/k2", NOW))
    roll(cache, gz=True)
    cache.log(caddy_line("/bkt/k3", NOW))
    s = cache.run()
    assert s.log_lines == 2 and refreshed(cache, "k2", "k3")
    assert cache.run().log_lines == 0  # and not again next time


def test_several_rolls_between_two_passes_lose_nothing(cache):
    cache.log(caddy_line("/bkt/k1", NOW))
    cache.run()
    cache.log(caddy_line("/bkt/k2", NOW))
    roll(cache, gz=True)
    cache.log(caddy_line("/bkt/k3", NOW))
    roll(cache, gz=True)
    cache.log(caddy_line("/bkt/k4", NOW))
    s = cache.run()
    assert s.log_lines == 3 and refreshed(cache, "k2", "k3", "k4")


def test_a_truncated_log_is_read_from_its_start(cache):
    cache.log(*(caddy_line(f"/bkt/k{i}", NOW - 3600) for i in (1, 2, 3)))
    cache.run()
    with open(log_path(cache), "w") as fh:  # shorter than where we stopped
        fh.write(caddy_line("/bkt/k4", NOW))
    s = cache.run()
    assert s.log_lines == 1 and refreshed(cache, "k4")


def test_a_copy_truncated_log_that_grew_past_our_offset_is_read_from_its_start(cache):
    cache.log(caddy_line("/bkt/k1", NOW - 3600))
    cache.run()
    with open(log_path(cache), "w") as fh:  # same inode, new content, longer than before
        fh.write(caddy_line("/bkt/k2-is-a-longer-name-than-before", NOW) + caddy_line("/bkt/k3", NOW))
    s = cache.run()
    assert s.log_lines == 2 and refreshed(cache, "k3")


def test_the_first_pass_reads_the_rolled_history_and_later_passes_do_not(cache):
    old = cache.layout.logs_dir / ROLLED_GZ
    old.write_bytes(gzip.compress(caddy_line("/bkt/k1", NOW - 7200).encode()))
    os.utime(old, (NOW - 7000, NOW - 7000))
    cache.log(caddy_line("/bkt/k2", NOW))
    s = cache.run()
    assert s.log_lines == 2 and refreshed(cache, "k1", "k2")
    assert cache.run().log_lines == 0


def test_no_log_yet_then_one_appears(cache):
    assert cache.run().log_lines == 0
    cache.log(caddy_line("/bkt/k1", NOW))
    assert cache.run().log_lines == 1 and refreshed(cache, "k1")


def test_a_gzip_still_being_written_is_skipped_without_stopping_the_pass(cache):
    cache.run()
    (cache.layout.logs_dir / ROLLED_GZ).write_bytes(gzip.compress(caddy_line("/bkt/k1", NOW).encode())[:20])
    cache.log(caddy_line("/bkt/k2", NOW))
    s = cache.run()
    assert refreshed(cache, "k2") and s.errors == 1
