"""Status page, metrics and ``s3cache stats`` on the real stack: after a known sequence of requests,
all three agree with each other and with the truth (what we sent, and what the origin sent us).

The page is checked in a real headless Chromium (Debian's package, installed by the test set-up,
``python -m tests.host_tools``; skipped with the reason where it is missing, failed on CI), and a
screenshot is saved.
"""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from s3cache.stats_summary import details, headline_rows
from tests import chromium
from tests.host_tools import unavailable
from tests.stack import BIN, Stack, raw_request, wait_until

pytestmark = pytest.mark.integration

BUCKET = "status-tests"
A, B, E = b"a" * 300_000, b"b" * 50_000, b"e" * 5_000
GIB = 2**30


@pytest.fixture(scope="module")
def known(origin, tmp_path_factory):
    """One stack, one known sequence of requests; yields (stack, snapshot after it settled)."""
    origin.ensure_bucket(BUCKET)
    s3 = origin.s3()
    for key, body in (("a.bin", A), ("b.bin", B), ("e.bin", E), ("c.txt", b"c")):
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    # Only the startup pass; the test runs its own, so "since start" passes are known.
    stack = Stack(tmp_path_factory.mktemp("status-stack"), origin.url, S3CACHE_ACCESS="open",
                  S3CACHE_EVICT_INTERVAL="3600").start()
    try:
        origin.reset()
        url = {k: origin.presign(BUCKET, k) for k in ("a.bin", "b.bin", "e.bin")}

        def proxied(key: str) -> str:
            return stack.proxied(url[key])

        def expect(resp, status, x_cache):
            assert (resp.status_code, resp.headers.get("X-Cache")) == (status, x_cache), resp.text[:300]

        expect(stack.get(proxied("a.bin")), 307, "MISS")
        stack.wait_cached(BUCKET, "a.bin")
        for _ in range(3):
            expect(stack.get(proxied("a.bin")), 200, "HIT")                            # 3 x 300,000 bytes
        expect(stack.get(proxied("b.bin")), 307, "MISS")
        stack.wait_cached(BUCKET, "b.bin")
        expect(stack.get(proxied("b.bin"), headers={"Range": "bytes=0-9999"}), 206, "HIT")  # 10,000 bytes
        expect(raw_request("HEAD", proxied("b.bin")), 200, "HIT")                      # no body
        expect(stack.get(f"{stack.url}/{BUCKET}/c.txt?versionId=v1"), 307, "MISS")    # sub-resource: size unknown
        expect(raw_request("HEAD", f"{stack.url}/{BUCKET}/d.txt"), 307, "MISS")        # HEAD: no body, no fill
        expect(raw_request("PUT", f"{stack.url}/{BUCKET}/new.txt"), 307, "MISS")       # a write, by Caddy
        expect(stack.get(f"{stack.url}/{BUCKET}/a.bin?AWSAccessKeyId=AKIAX&Expires=1000&Signature=x"),
               403, "DENIED")                                                           # expired, by Caddy
        expect(stack.get(proxied("e.bin"), headers={"Range": "bytes=0-99"}), 307, "MISS")  # fills all of e.bin
        stack.wait_cached(BUCKET, "e.bin")
        evict = subprocess.run([str(BIN / "s3cache"), "evict", "--once"], env=stack.env, capture_output=True,
                               text=True, timeout=60)
        assert evict.returncode == 0, evict.stderr

        def settled():
            snap = requests.get(stack.url + "/_s3cache/stats.json", timeout=5).json()
            s = snap["since_start"]
            done = (s["reads"]["hit"] == 5 and s["reads"]["denied"] == 1 and s["bytes"]["redirects_pending"] == 0
                    and snap["fills"]["filled"] == 3 and snap["disk"]["cache_files"] == 3)
            return snap if done else None
        snap = wait_until(settled, 15, 0.2, what="the access log, fills and the eviction pass to be counted")
        yield stack, snap
    finally:
        stack.stop()


def metric_samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def stats_command(stack: Stack, *args: str) -> str:
    done = subprocess.run([str(BIN / "s3cache"), "stats", *args], env=stack.env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_snapshot_matches_the_truth(known, origin):
    stack, snap = known
    s = snap["since_start"]
    assert s["reads"] == {"hit": 5, "miss": 5, "denied": 1, "error": 0, "other": 0}
    assert s["requests"]["miss"]["other"] == 1  # the PUT
    assert s["requests"]["hit"]["HEAD"] == 1 and s["requests"]["miss"]["HEAD"] == 1
    assert s["bytes"]["cache"] == 3 * len(A) + 10_000
    # Redirected GETs sized from the cache: all of a.bin and b.bin, 100 bytes of e.bin; c.txt?versionId unknown.
    assert s["bytes"]["redirected_estimated"] == len(A) + len(B) + 100
    assert (s["bytes"]["redirects_sized"], s["bytes"]["redirects_unknown"]) == (3, 1)
    assert s["hit_ratio_requests"] == 0.5
    assert s["hit_ratio_bytes"] == pytest.approx(910_000 / (910_000 + 350_100))
    # The origin's own count of what it sent is the fills' bytes.
    sent = origin.stats()["body_bytes"]
    assert snap["fills"]["bytes"] == sent == len(A) + len(B) + len(E)
    assert snap["fills"]["failed"] == 0
    assert snap["sidecar_misses"] == {"fill": 3, "redirect": 2}
    assert s["egress_saved_dollars"] == pytest.approx(910_000 * 0.09 / GIB)
    assert s["egress_saved_net_dollars"] == pytest.approx((910_000 - sent) * 0.09 / GIB)
    assert snap["top_objects"] == [{"object": f"{BUCKET}/a.bin", "bytes": 900_000, "hits": 3},
                                   {"object": f"{BUCKET}/b.bin", "bytes": 10_000, "hits": 2}]
    assert snap["disk"]["cache_bytes"] == sent and snap["disk"]["cache_files"] == 3
    assert snap["evictor"]["since_start"]["passes"] >= 1
    assert snap["last_hour"]["reads"] == s["reads"] and sum(snap["series"]["hit"]) == 5


def test_metrics_agree_with_the_truth(known):
    stack, snap = known
    resp = requests.get(stack.url + "/_s3cache/metrics", timeout=5)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    m = metric_samples(resp.text)

    def requests_total(result, method):
        return m[("s3cache_requests_total", (("method", method), ("result", result)))]
    assert requests_total("hit", "GET") + requests_total("hit", "HEAD") == 5
    assert requests_total("miss", "GET") + requests_total("miss", "HEAD") == 5
    assert requests_total("miss", "other") == 1
    assert requests_total("denied", "GET") == 1 and requests_total("error", "GET") == 0
    assert m[("s3cache_bytes_total", (("source", "cache"),))] == 910_000
    assert m[("s3cache_bytes_total", (("source", "redirect"),))] == 350_100
    assert m[("s3cache_bytes_total", (("source", "stream"),))] == 0
    assert m[("s3cache_fills_total", (("outcome", "filled"), ("reason", "")))] == 3
    assert m[("s3cache_fill_bytes_total", ())] == 355_000
    assert m[("s3cache_fill_duration_seconds_count", ())] == 3
    assert m[("s3cache_fill_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert m[("s3cache_sidecar_misses_total", (("action", "fill"),))] == 3
    assert m[("s3cache_sidecar_misses_total", (("action", "redirect"),))] == 2
    assert m[("s3cache_cache_files", ())] == 3 and m[("s3cache_cache_bytes", ())] == 355_000
    assert m[("s3cache_evict_watermark_percent", (("mark", "high"),))] == float(stack.env["S3CACHE_EVICT_HIGH"])
    assert m[("s3cache_eviction_passes_total", ())] == snap["evictor"]["since_start"]["passes"]
    assert m[("s3cache_egress_saved_dollars", (("basis", "gross"),))] == pytest.approx(910_000 * 0.09 / GIB)


def test_stats_command_shows_what_the_snapshot_says(known):
    stack, snap = known
    out = stats_command(stack)
    for _key, label, hour, since in headline_rows(snap):
        assert re.search(rf"^{re.escape(label)}\s+{re.escape(hour)}\s+{re.escape(since)}$", out, re.M), (label, out)
    d = details(snap)
    for key in ("fills_filled", "fill_bytes", "misses_fill", "misses_redirect", "cache_size", "redirects_unknown"):
        assert d[key] in out, key
    assert f"{BUCKET}/a.bin" in out
    raw = json.loads(stats_command(stack, "--json"))
    assert raw["since_start"]["reads"] == snap["since_start"]["reads"]


def test_stats_command_says_when_the_sidecar_is_not_there(tmp_path):
    env = {"S3CACHE_SIDECAR_LISTEN": "127.0.0.1:9", "PATH": "/usr/bin:/bin", "S3CACHE_DIR": str(tmp_path)}
    done = subprocess.run([str(BIN / "s3cache"), "stats"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "not answering" in done.stderr and "Traceback" not in done.stderr


class _Figures(HTMLParser):
    """Every element with data-key: (key, data-period) -> (shown text, data-value)."""

    def __init__(self):
        super().__init__()
        self.figures: dict[tuple[str, str | None], tuple[str, str | None]] = {}
        self.sources: list[str] = []
        self._open: list = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for attr in ("src", "href"):
            if a.get(attr):
                self.sources.append(a[attr])
        if "data-key" in a:
            self._open.append([(a["data-key"], a.get("data-period")), a.get("data-value"), ""])
        elif self._open:
            self._open.append(None)

    def handle_endtag(self, tag):
        if self._open:
            item = self._open.pop()
            if item is not None:
                key, value, text = item
                self.figures.setdefault(key, (text.strip(), value))

    def handle_data(self, data):
        for item in self._open:
            if item is not None:
                item[2] += data


def test_page_in_a_real_browser_shows_the_same_figures(known, tmp_path):
    stack, snap = known
    binary, why = chromium.chromium_or_skip_reason()
    if binary is None:
        unavailable(why)
    page_url = stack.url + "/_s3cache/"
    dom = chromium.dump_dom(binary, page_url)
    parser = _Figures()
    parser.feed(dom)
    figures = parser.figures
    # Nothing from anywhere else: the page must work offline.
    assert all(src.startswith("/") for src in parser.sources), parser.sources

    # The text a person reads is the text `s3cache stats` prints.
    out = stats_command(stack)
    for key, label, hour, since in headline_rows(snap):
        shown_hour = figures[(key, "last_hour")][0]
        shown_since = figures[(key, "since_start")][0]
        assert (shown_hour, shown_since) == (hour, since), key
        assert re.search(rf"^{re.escape(label)}\s+{re.escape(shown_hour)}\s+{re.escape(shown_since)}$", out, re.M)

    # The numbers behind the text are the metrics'.
    m = metric_samples(requests.get(stack.url + "/_s3cache/metrics", timeout=5).text)
    hits = sum(v for (name, labels), v in m.items() if name == "s3cache_requests_total"
               and dict(labels)["result"] == "hit" and dict(labels)["method"] in ("GET", "HEAD"))
    misses = sum(v for (name, labels), v in m.items() if name == "s3cache_requests_total"
                 and dict(labels)["result"] == "miss" and dict(labels)["method"] in ("GET", "HEAD"))
    assert float(figures[("hits", "since_start")][1]) == hits == 5
    assert float(figures[("misses", "since_start")][1]) == misses == 5
    assert float(figures[("denied", "since_start")][1]) == m[("s3cache_requests_total", (("method", "GET"),
                                                                                          ("result", "denied")))] == 1
    assert float(figures[("cache_bytes", "since_start")][1]) == m[("s3cache_bytes_total", (("source", "cache"),))]
    assert float(figures[("origin_bytes", "since_start")][1]) == (
        m[("s3cache_bytes_total", (("source", "redirect"),))] + m[("s3cache_bytes_total", (("source", "stream"),))])
    assert float(figures[("hit_ratio_requests", "since_start")][1]) == hits / (hits + misses)
    assert float(figures[("egress_saved", "since_start")][1]) == pytest.approx(
        m[("s3cache_egress_saved_dollars", (("basis", "gross"),))])
    assert float(figures[("fills_filled", None)][1]) == m[("s3cache_fills_total", (("outcome", "filled"),
                                                                                    ("reason", "")))] == 3
    assert float(figures[("cache_size", None)][1]) == m[("s3cache_cache_bytes", ())] == 355_000
    assert float(figures[("usage", "card")][1]) == pytest.approx(m[("s3cache_usage_percent", ())], abs=0.5)
    assert figures[("top_object", None)][0] == f"{BUCKET}/a.bin"
    assert figures[("egress_saved_net", None)][0] == details(snap)["egress_saved_net"]

    shot = chromium.screenshot(binary, page_url, tmp_path / "status-page.png")
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def snapshot_of(stack: Stack) -> dict:
    return requests.get(stack.url + "/_s3cache/stats.json", timeout=5).json()


def test_streamed_misses_are_counted_exactly_and_cost_no_extra_egress(origin, make_stack):
    origin.s3().put_object(Bucket=BUCKET, Key="streamed.bin", Body=b"s" * 70_000)
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_MISS="stream")
    url = stack.proxied(origin.presign(BUCKET, "streamed.bin"))
    miss = stack.get(url)
    assert (miss.status_code, miss.headers["X-Cache"], len(miss.content)) == (200, "MISS", 70_000)
    stack.wait_cached(BUCKET, "streamed.bin")
    assert stack.get(url).headers["X-Cache"] == "HIT"
    snap = wait_until(lambda: (s := snapshot_of(stack))["since_start"]["reads"]["hit"] == 1
                      and s["fills"]["filled"] == 1 and s, 10, what="the streamed miss and the hit")
    b = snap["since_start"]["bytes"]
    assert (b["streamed"], b["redirected_estimated"], b["cache"]) == (70_000, 0, 70_000)
    # The client was sent the fill's bytes: none of them was extra egress.
    assert snap["since_start"]["fill_bytes_not_served"] == 0
    assert snap["since_start"]["hit_ratio_bytes"] == 0.5


def test_hits_through_the_access_check_and_refusals_are_counted(origin, make_stack):
    origin.s3().put_object(Bucket=BUCKET, Key="checked.bin", Body=b"r" * 20_000)
    stack = make_stack(S3CACHE_ACCESS="revalidate")
    good = origin.presign(BUCKET, "checked.bin")
    assert stack.get(stack.proxied(good)).status_code == 307
    stack.wait_cached(BUCKET, "checked.bin")
    hit = stack.get(stack.proxied(good))
    assert (hit.status_code, hit.headers["X-Cache"]) == (200, "HIT")
    forged = re.sub(r"X-Amz-Signature=[0-9a-f]+", "X-Amz-Signature=" + "0" * 64, good)
    refused = stack.get(stack.proxied(forged))
    assert (refused.status_code, refused.headers["X-Cache"]) == (403, "DENIED")
    snap = wait_until(lambda: (s := snapshot_of(stack))["since_start"]["reads"]["denied"] == 1 and s, 10,
                      what="the refused hit")
    s = snap["since_start"]
    assert (s["reads"]["hit"], s["reads"]["miss"], s["bytes"]["cache"]) == (1, 1, 20_000)
    # Only the three client requests: forward_auth's own calls to the sidecar are not logged as traffic.
    assert sum(s["reads"].values()) == 3
