"""Status page, metrics and stats in pieces: the log follower, the counting, the allow-list, the text formats."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
from html import unescape

import pytest
from prometheus_client.parser import text_string_to_metric_families

from s3cache.accesslog import Follower
from s3cache.config import Config
from s3cache.layout import Layout, ObjectRef
from s3cache.ledger import CacheSize, Reading
from commands.stats import render as render_cli
from s3cache.stats_summary import fmt_bytes, fmt_dollars, headline_rows
from sidecar import admin, metrics, status_page
from sidecar.collector import Collector
from sidecar.traffic import Traffic, range_length


def line(uri: str, x_cache: str | None, *, method: str = "GET", status: int = 200, size: int = 0,
         ts: float | None = None, host: str = "proxy:8080", range_: str | None = None) -> bytes:
    headers = {"User-Agent": ["t"]}
    if range_:
        headers["Range"] = [range_]
    rec = {"level": "info", "ts": ts if ts is not None else time.time(), "logger": "http.log.access.log0",
           "msg": "handled request",
           "request": {"remote_ip": "127.0.0.1", "client_ip": "127.0.0.1", "proto": "HTTP/1.1", "method": method,
                       "host": host, "uri": uri, "headers": headers},
           "bytes_read": 0, "duration": 0.001, "size": size, "status": status,
           "resp_headers": {"X-Cache": [x_cache]} if x_cache else {"Server": ["Caddy"]}}
    return json.dumps(rec).encode() + b"\n"


# -- the log follower --------------------------------------------------------------------------


def collect(follower: Follower) -> list[bytes]:
    out: list[bytes] = []
    follower.read(out.append)
    return out


def test_follower_starts_at_the_end_and_hands_over_complete_lines_only(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(b"old 1\nold 2\npartial-at-start")
    f = Follower(log)
    with open(log, "ab") as fh:
        fh.write(b" still old\nnew 1\nnew 2 half")
    assert collect(f) == [b"new 1"]
    with open(log, "ab") as fh:
        fh.write(b" done\n")
    assert collect(f) == [b"new 2 half done"]
    assert collect(f) == []


def test_follower_reads_a_log_that_appears_later_from_its_start(tmp_path):
    log = tmp_path / "access.log"
    f = Follower(log)
    assert collect(f) == []
    log.write_bytes(b"a\nb\n")
    assert collect(f) == [b"a", b"b"]


def test_follower_finishes_a_rolled_file_then_reads_the_new_one(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    f = Follower(log)
    with open(log, "ab") as fh:
        fh.write(b"1\n2\n")
    assert collect(f) == [b"1", b"2"]
    with open(log, "ab") as fh:
        fh.write(b"3\nlast-without-newline")
    # Caddy rolls by renaming; the new file starts empty.
    os.rename(log, tmp_path / "access-2026-11-24T16-00-00.000.log")
    log.write_bytes(b"4\n")
    assert collect(f) == [b"3", b"last-without-newline", b"4"]
    assert f.rolls == 1


def test_follower_catches_up_on_files_rolled_between_two_reads(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    f = Follower(log)
    with open(log, "ab") as fh:
        fh.write(b"1\n")
    os.rename(log, tmp_path / "access-2026-11-24T16-00-00.000.log")
    time.sleep(0.01)
    log.write_bytes(b"2\n")
    os.rename(log, tmp_path / "access-2026-11-24T16-00-01.000.log")
    log.write_bytes(b"3\n")
    assert collect(f) == [b"1", b"2", b"3"]
    assert f.missed_files_read == 1
    assert collect(f) == []


def test_follower_rereads_a_truncated_file(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    f = Follower(log)
    log.write_bytes(b"one\ntwo\n")
    assert collect(f) == [b"one", b"two"]
    with open(log, "r+b") as fh:  # copy-truncate
        fh.truncate(0)
        fh.write(b"x\n")
    assert collect(f) == [b"x"]
    assert f.truncations == 1


def test_follower_skips_an_overlong_line(tmp_path, monkeypatch):
    monkeypatch.setattr("s3cache.accesslog.MAX_LINE", 10)
    monkeypatch.setattr("s3cache.accesslog.CHUNK", 8)
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    f = Follower(log)
    log.write_bytes(b"ok\n" + b"y" * 50 + b"\nfine\n")
    assert collect(f) == [b"ok", b"fine"]
    assert f.skipped_lines == 1


# -- counting lines ----------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path):
    lay = Layout(tmp_path / "cache")
    lay.ensure()
    return lay


def cache_object(layout: Layout, bucket: str, key: str, size: int) -> None:
    path = layout.object_path(ObjectRef(bucket, key))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_results_bytes_and_top_objects(layout):
    t = Traffic(layout)
    now = time.time()
    for raw in (
        line("/b-1/a?X-Amz-Signature=REDACTED", "HIT", size=100, ts=now),
        line("/b-1/a", "HIT", size=100, ts=now),
        line("/b-1/c", "HIT", method="HEAD", size=0, ts=now),
        line("/b-1/d", "DENIED", status=403, size=200, ts=now),
        line("/b-1/e", "ERROR", status=503, ts=now),
        line("/b-1/f", "MISS", method="PUT", status=307, ts=now),
        line("/b-1/%zz", None, status=400, ts=now),
        line("/_s3cache/metrics", None, ts=now),
        line("/", None, ts=now),
        b"not json",
        b'{"ts": 1}',
    ):
        t.feed(raw.rstrip(b"\n"))
    b = t.total
    assert b.reads("hit") == 3 and b.count("hit", "HEAD") == 1
    assert b.reads("denied") == 1 and b.reads("error") == 1 and b.count("other", "GET") == 1
    assert b.count("miss", "other") == 1 and b.reads("miss") == 0
    assert b.cache_bytes == 200
    assert t.internal_requests == 2 and t.malformed == 2 and t.lines == 11
    assert t.top_objects() == [{"object": "b-1/a", "bytes": 200, "hits": 2},
                               {"object": "b-1/c", "bytes": 0, "hits": 1}]


def test_redirect_bytes_are_sized_from_the_cache_once_the_object_lands(layout):
    t = Traffic(layout)
    now = time.time()
    cache_object(layout, "b-1", "cached", 1000)
    t.feed(line("/b-1/cached", "MISS", status=307, ts=now))                      # sized at once
    t.feed(line("/b-1/cached", "MISS", status=307, ts=now, range_="bytes=0-99"))  # 100 of it
    t.feed(line("/b-1/later", "MISS", status=307, ts=now))                       # not cached yet
    t.feed(line("/b-1/later?versionId=3", "MISS", status=307, ts=now))           # never the cached bytes
    t.feed(line("/b-1/later", "MISS", method="HEAD", status=307, ts=now))        # no body at all
    t.feed(line("/b-1/streamed", "MISS", status=200, size=777, ts=now))          # S3CACHE_MISS=stream
    assert (t.total.redirect_bytes, t.total.redirects_sized, t.pending_count) == (1100, 2, 1)
    assert t.total.redirects_unknown == 1 and t.total.streamed_bytes == 777
    cache_object(layout, "b-1", "later", 50)
    t.resolve(now=now + 1)
    assert (t.total.redirect_bytes, t.total.redirects_sized, t.pending_count) == (1150, 3, 0)
    assert t.last_hour(now).redirect_bytes == 1150


def test_a_redirect_whose_object_never_arrives_becomes_unknown(layout):
    t = Traffic(layout)
    t.feed(line("/b-1/never", "MISS", status=307, ts=1000.0))
    t.resolve(now=1000.0 + 10)
    assert t.pending_count == 1
    t.resolve(now=1000.0 + 3600)
    assert (t.pending_count, t.total.redirects_unknown, t.total.redirect_bytes) == (0, 1, 0)


def test_virtual_hosted_lines_name_the_bucket_from_the_host(layout):
    from s3cache.addressing import Addressing
    t = Traffic(layout, Addressing("https://s3.amazonaws.com", domain="cache.example"))
    t.feed(line("/key/one", "HIT", size=5, host="vh-bucket.cache.example"))
    t.feed(line("/", "MISS", status=307, host="vh-bucket.cache.example"))  # a listing, not our page
    assert t.top_objects()[0]["object"] == "vh-bucket/key/one"
    assert t.total.reads("miss") == 1 and t.internal_requests == 0


def test_minutes_outside_the_last_hour_are_dropped(layout):
    t = Traffic(layout)
    t.feed(line("/b-1/a", "HIT", size=1, ts=10_000.0))
    t.feed(line("/b-1/a", "HIT", size=2, ts=10_000.0 + 7200))
    assert t.last_hour(10_000.0 + 7200).cache_bytes == 2
    assert t.total.cache_bytes == 3
    series = t.series(10_000.0 + 7200)
    assert len(series) == 60 and series[-1][1].cache_bytes == 2


@pytest.mark.parametrize("spec, size, expected", [
    (None, 1000, 1000), ("bytes=0-99", 1000, 100), ("bytes=900-", 1000, 100), ("bytes=-10", 1000, 10),
    ("bytes=990-5000", 1000, 10), ("bytes=0-1,5-6", 1000, 1000), ("items=0-1", 1000, 1000), ("bytes=2000-", 1000, 0),
])
def test_range_length(spec, size, expected):
    assert range_length(spec, size) == expected


# -- who may look ------------------------------------------------------------------------------

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_client_ip_comes_from_caddy_only_over_loopback_or_a_private_network():
    via_caddy = {"X-S3cache-Uri": "/_s3cache/metrics", "X-S3cache-Client-Ip": "203.0.113.9"}
    assert str(admin.client_ip("127.0.0.1", via_caddy)) == "203.0.113.9"
    assert str(admin.client_ip("::1", via_caddy)) == "203.0.113.9"
    # docker compose: Caddy's container on the project network.
    assert str(admin.client_ip("172.18.0.4", via_caddy)) == "203.0.113.9"
    # A public peer's headers prove nothing.
    assert str(admin.client_ip("8.8.4.4", via_caddy)) == "8.8.4.4"
    # Through Caddy but without the client header: unknown, hence refused.
    assert admin.client_ip("127.0.0.1", {"X-S3cache-Uri": "/"}) is None
    # A direct local connection (s3cache stats) is the peer itself.
    assert str(admin.client_ip("127.0.0.1", {})) == "127.0.0.1"
    assert str(admin.client_ip("127.0.0.1", {"X-S3cache-Client-Ip": "::ffff:10.1.2.3"})) == "10.1.2.3"
    assert admin.client_ip("127.0.0.1", {"X-S3cache-Client-Ip": "garbage"}) is None


def test_allowed_by_cidr_and_loopback_for_health():
    nets = (ipaddress.ip_network("10.0.0.0/8"),)
    assert admin.allowed(ipaddress.ip_address("10.2.3.4"), nets)
    assert not admin.allowed(ipaddress.ip_address("127.0.0.1"), nets)
    assert admin.allowed(ipaddress.ip_address("127.0.0.1"), nets, loopback_too=True)
    assert not admin.allowed(None, LOOPBACK, loopback_too=True)
    assert not admin.allowed(ipaddress.ip_address("::1"), ())


def test_admin_allow_setting():
    assert Config.from_env({}).admin_allow == LOOPBACK
    assert Config.from_env({"S3CACHE_ADMIN_ALLOW": "10.0.0.1/8, 192.0.2.7"}).admin_allow == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"))
    assert Config.from_env({"S3CACHE_ADMIN_ALLOW": ""}).admin_allow == ()
    assert Config.from_env({"S3CACHE_EGRESS_PRICE_PER_GB": "0.05"}).egress_price_per_gb == 0.05


# -- one snapshot, three renderings ------------------------------------------------------------


class FakeFiller:
    def __init__(self):
        self.state = {"in_progress": 1, "outcomes": {"filled": 2, "failed:status-403": 1, "busy": 4},
                      "bytes_filled": 3000, "durations": [0.02, 3.0]}

    def stats(self):
        return json.loads(json.dumps(self.state))


@pytest.fixture
def snapshot(tmp_path, layout):
    config = Config.from_env({"S3CACHE_DIR": str(layout.root), "S3CACHE_MAX_BYTES": "1000000",
                              "S3CACHE_EVICT_HIGH": "90", "S3CACHE_EVICT_LOW": "80"})
    (layout.logs_dir / "access.log").write_bytes(b"")
    c = Collector(config, layout, FakeFiller())
    now = time.time()
    with open(layout.logs_dir / "access.log", "ab") as fh:
        fh.write(line("/b-1/a", "HIT", size=2048, ts=now) + line("/b-1/a", "HIT", size=2048, ts=now)
                 + line("/b-1/<odd>&\"name\"", "HIT", size=10, ts=now) + line("/b-1/m", "MISS", status=307, ts=now))
    cache_object(layout, "b-1", "m", 1500)
    passes = [{"started_at": now - 100, "finished_at": c.started_at - 50, "evicted_files": 9, "evicted_bytes": 9},
              {"started_at": now, "finished_at": now + 0.5, "duration_seconds": 0.5, "scanned_files": 5,
               "bytes_before": 6000, "bytes_after": 5000, "evicted_files": 1, "evicted_bytes": 1000,
               "fill_evicted_files": 2, "fill_evicted_bytes": 700, "usage_percent_before": 50.0, "usage_percent_after": 40.0, "errors": 0}]
    (layout.run_dir / "evictor-passes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passes))
    CacheSize(layout.cache_bytes_file).set_after_pass(6000, 5, 1000, 1, Reading())  # the last pass's word
    c.count_miss(True)
    c.count_miss(False)
    return c.snapshot()


def test_snapshot_gathers_every_source(snapshot):
    s = snapshot["since_start"]
    assert s["reads"]["hit"] == 3 and s["reads"]["miss"] == 1
    assert s["bytes"]["cache"] == 4106 and s["bytes"]["redirected_estimated"] == 1500
    assert s["hit_ratio_requests"] == 0.75
    assert s["hit_ratio_bytes"] == pytest.approx(4106 / 5606)
    assert s["fill_bytes_not_served"] == 3000
    assert s["egress_saved_net_dollars"] == pytest.approx((4106 - 3000) * 0.09 / 2**30)
    assert snapshot["fills"]["failed_by_reason"] == {"status-403": 1}
    assert snapshot["fills"]["duration_seconds"]["count"] == 2
    assert snapshot["sidecar_misses"] == {"fill": 1, "redirect": 1}
    # Only passes finished since the sidecar started count, with what fills removed from their lists;
    # the cache's size is the last pass's.
    assert snapshot["evictor"]["since_start"] == {"passes": 1, "evicted_files": 3, "evicted_bytes": 1700}
    assert snapshot["disk"]["cache_bytes"] == 5000 and snapshot["disk"]["cache_files"] == 4
    assert snapshot["disk"]["usage_percent"] >= 0.5
    json.dumps(snapshot)  # served as JSON as it is


def test_metrics_parse_with_the_reference_parser_and_match_the_snapshot(snapshot):
    text = metrics.render(snapshot)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("s3cache_requests_total", (("method", "GET"), ("result", "hit")))] == 3
    assert samples[("s3cache_bytes_total", (("source", "cache"),))] == 4106
    assert samples[("s3cache_bytes_total", (("source", "redirect"),))] == 1500
    assert samples[("s3cache_fills_total", (("outcome", "failed"), ("reason", "status-403")))] == 1
    assert samples[("s3cache_fills_total", (("outcome", "busy"), ("reason", "")))] == 4
    assert samples[("s3cache_fill_duration_seconds_bucket", (("le", "0.05"),))] == 1
    assert samples[("s3cache_fill_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    assert samples[("s3cache_fill_duration_seconds_count", ())] == 2
    assert samples[("s3cache_evicted_bytes_total", ())] == 1700  # the pass's and its list's (s3cache.victims)
    assert samples[("s3cache_cache_files", ())] == 4
    assert samples[("s3cache_max_bytes", ())] == 1_000_000
    assert samples[("s3cache_evict_watermark_percent", (("mark", "high"),))] == 90
    assert families["s3cache_fill_duration_seconds"].type == "histogram"


def test_page_and_command_show_the_same_text(snapshot):
    html = status_page.render(snapshot)
    cli = render_cli(snapshot)
    for key, label, hour, since in headline_rows(snapshot):
        assert f'data-key="{key}" data-period="since_start"' in html
        assert re.search(rf"{re.escape(label)}\s+{re.escape(hour)}\s+{re.escape(since)}", cli), label
    # Names are escaped (however the template engine spells its entities).
    assert '<odd>&"name"' not in html and '<odd>&"name"' in unescape(html)
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "b-1/a" in cli and fmt_bytes(4096) in cli


def test_empty_snapshot_renders(tmp_path, layout):
    config = Config.from_env({"S3CACHE_DIR": str(layout.root)})
    snap = Collector(config, layout, FakeFiller()).snapshot()
    assert "no hits yet" in status_page.render(snap)
    assert "(no hits yet)" in render_cli(snap)
    list(text_string_to_metric_families(metrics.render(snap)))


def test_formats():
    assert fmt_bytes(0) == "0 B" and fmt_bytes(1536) == "1.5 KiB" and fmt_bytes(None) == "–"
    assert fmt_dollars(1234.5) == "$1,234.50" and fmt_dollars(-2) == "-$2.00" and fmt_dollars(0) == "$0.00"
    assert fmt_dollars(0.0001) == "<$0.01" and fmt_dollars(0.006) == "$0.01"
