"""Issue 16: the frequency sketch, admission (S3CACHE_ADMIT), the lfu eviction order and the fill-time cap.

Unit tests on hand-made traces: a temp cache built with ``Layout`` (the
evictor's ``Cache`` helper), the sketch file in its run/, passes run with an
injected empty disk so only S3CACHE_MAX_BYTES decides.  The cap under a
burst of real fills is tested with the whole stack at the end.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import struct
import threading

import pytest

from s3cache.config import Config
from s3cache.ledger import CacheSize, Reading
from s3cache.layout import Layout, ObjectRef
from s3cache.sketch import MAX_COUNT, FrequencySketch, file_key
from s3cache.usage import FsUsage
from sidecar.admission import Admission
from sidecar.fill import Filler
from tests.stack import wait_until
from tests.test_evictor import NOW, Cache, FakeDisk, caddy_line, ns_ago


@pytest.fixture
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache")


def sketch_of(cache: Cache) -> FrequencySketch:
    return FrequencySketch.open(cache.layout.sketch_file)


def key_of(cache: Cache, key: str) -> bytes:
    return file_key(os.fsencode(cache.layout.objects_dir),
                    os.fsencode(str(cache.layout.object_path(ObjectRef("bkt", key)))))


def ask(cache: Cache, key: str, times: int = 1) -> None:
    """``times`` misses for bkt/key, counted as the sidecar counts them."""
    adm = Admission("first", cache.layout)
    for _ in range(times):
        adm.admit(ObjectRef("bkt", key))
    adm.sketch.close()


# -- the sketch -----------------------------------------------------------------------------------


def test_the_sketch_counts_saturates_and_is_shared_through_its_file(cache):
    a, b = sketch_of(cache), sketch_of(cache)
    assert [a.add(b"x") for _ in range(3)] == [1, 2, 3]
    assert b.estimate(b"x") == 3 and b.estimate(b"y") == 0  # another mapping of the file sees the counts
    for _ in range(40):
        b.add(b"x")
    assert a.estimate(b"x") == MAX_COUNT
    a.close(), b.close()
    assert sketch_of(cache).estimate(b"x") == MAX_COUNT  # and they survive a restart


def test_aging_halves_every_count_and_the_boundary_after_a_window():
    clock = iter(range(100, 10**6)).__next__
    s = FrequencySketch.in_memory(window=20, clock=clock)
    for _ in range(8):
        s.add(b"hot")
    s.boundary = 6
    for i in range(11):
        s.add(b"c%d" % i)
    assert s.additions == 19 and s.estimate(b"hot") == 8
    s.add(b"last")  # the 20th addition
    assert s.additions == 0
    assert s.estimate(b"hot") == 4 and s.boundary == 3
    assert s.aged_at[0] > 0 and s.aged_at[1] == 0


# -- admission -------------------------------------------------------------------------------------


def test_tinylfu_admits_what_is_asked_for_more_often_than_the_last_victims(cache):
    adm = Admission("tinylfu", cache.layout)
    ref = ObjectRef("bkt", "new")
    assert adm.admit(ObjectRef("bkt", "early"))  # no eviction yet: boundary 0, every miss fills
    adm.sketch.boundary = 2  # the last pass removed objects asked for twice
    assert [adm.admit(ref) for _ in range(4)] == [False, False, True, True]
    assert (adm.admitted, adm.declined) == (3, 2)


def test_count_admits_on_the_nth_request_and_first_on_every_one(cache):
    count = Admission("count:3", cache.layout)
    assert [count.admit(ObjectRef("bkt", "a")) for _ in range(4)] == [False, False, True, True]
    first = Admission("first", cache.layout)
    assert first.admit(ObjectRef("bkt", "b"))


# -- the lfu order on hand-made traces --------------------------------------------------------------


def test_lfu_evicts_the_rarely_asked_for_first_where_lru_would_evict_the_popular(cache):
    # "hot" is the least recently used file, but was asked for five times; the rest once.
    cache.put("hot", atime_ns=ns_ago(5))
    for i, k in enumerate(("c1", "c2", "c3")):
        cache.put(k, atime_ns=ns_ago(4 - i))
    ask(cache, "hot", 5)
    for k in ("c1", "c2", "c3"):
        ask(cache, k)
    # 4000 bytes against a cap of 3500: down to below 80% = 2800 bytes, i.e. two files go.
    cache.run(S3CACHE_MAX_BYTES="3500", S3CACHE_EVICT_POLICY="lfu")
    assert [cache.has(k) for k in ("hot", "c1", "c2", "c3")] == [True, False, False, True]


def test_lru_policy_still_evicts_by_recency_alone(cache):
    cache.put("hot", atime_ns=ns_ago(5))
    for i, k in enumerate(("c1", "c2", "c3")):
        cache.put(k, atime_ns=ns_ago(4 - i))
    ask(cache, "hot", 5)
    cache.run(S3CACHE_MAX_BYTES="3500", S3CACHE_EVICT_POLICY="lru")
    assert [cache.has(k) for k in ("hot", "c1", "c2", "c3")] == [False, False, True, True]


def test_hits_replayed_from_the_access_log_count_as_frequency(cache):
    cache.put("a", atime_ns=ns_ago(5))
    cache.put("b", atime_ns=ns_ago(4))
    cache.put("c", atime_ns=ns_ago(3))
    # "a" is read three times, then "b" and "c" once each, all an hour ago: LRU would now take "a".
    cache.log(*(caddy_line("/bkt/a", NOW - 3600 - 10 + i) for i in range(3)),
              caddy_line("/bkt/b", NOW - 3600 - 5), caddy_line("/bkt/c", NOW - 3600 - 4))
    cache.run(S3CACHE_MAX_BYTES="2999", S3CACHE_EVICT_POLICY="lfu")  # over the cap: below 80% (2399) is one to go
    assert [cache.has(k) for k in "abc"] == [True, False, True]
    s = sketch_of(cache)
    assert s.estimate(key_of(cache, "a")) == 3
    assert s.boundary == 1  # what the pass removed was asked for once: newcomers must beat that


def test_a_popular_object_left_behind_by_a_shifted_working_set_goes_first(cache):
    # "old" was very popular, but has not been asked for since before the last two halvings.
    cache.put("old", atime_ns=ns_ago(10))
    cache.put("new1", atime_ns=ns_ago(1))
    cache.put("new2", atime_ns=ns_ago(0.5))
    cache.put("new3", atime_ns=ns_ago(0.2))
    ask(cache, "old", 15)
    s = sketch_of(cache)
    clock = iter([NOW - 8 * 3600, NOW - 2 * 3600])
    s.clock = lambda: next(clock)
    s.age(), s.age()  # both halvings after "old"'s last access; it still estimates 3
    assert s.estimate(key_of(cache, "old")) == 3
    s.close()
    ask(cache, "new1", 2), ask(cache, "new2", 2)
    cache.run(S3CACHE_MAX_BYTES="3500", S3CACHE_EVICT_POLICY="lfu")
    # "new3" (asked once, recent) and "old" (stale) go; the twice-asked recent ones stay.
    assert [cache.has(k) for k in ("old", "new1", "new2", "new3")] == [False, True, True, False]


def test_a_dry_run_writes_no_sketch(cache):
    cache.put("a", atime_ns=ns_ago(5))
    cache.run(S3CACHE_MAX_BYTES="500", dry_run=True)
    assert not cache.layout.sketch_file.exists()
    assert not cache.layout.cache_bytes_file.exists()


# -- the cap at fill time ---------------------------------------------------------------------------


def test_a_pass_sets_the_ledger_from_its_scan(cache):
    for k in "abcd":
        cache.put(k, atime_ns=ns_ago(5))
    cache.run(S3CACHE_MAX_BYTES="3500")
    assert CacheSize(cache.layout.cache_bytes_file).read()[:2] == (2000, 2)  # 4000 bytes in 4 files scanned, 2 evicted


def test_a_refused_fill_makes_the_next_pass_free_room_below_high(cache):
    # Fills stop at HIGH, so usage never crosses it: the refusal itself must trigger the pass.
    for i, k in enumerate("abc"):
        cache.put(k, atime_ns=ns_ago(5 - i))
    cache.run(S3CACHE_MAX_BYTES="3500")  # 3000 of 3500: below the cap, nothing goes
    assert all(cache.has(k) for k in "abc")
    ledger = CacheSize(cache.layout.cache_bytes_file)
    assert not ledger.try_add(1000, 3500)  # a 1000-byte fill is refused
    cache.run(S3CACHE_MAX_BYTES="3500")  # room for it below LOW (80% = 2800): two files go
    assert [cache.has(k) for k in "abc"] == [False, False, True]
    assert ledger.read().bytes == 1000 and ledger.read().refused == 0
    assert ledger.try_add(1000, 3500)


class _CountingUpstream:
    """A stub S3 that counts the fills that asked it for a body."""

    def __init__(self, body: bytes):
        from tests.test_purge_race import _Upstream
        self.inner, self.asked = _Upstream(body, random.Random(7)), 0

    def request(self, method, url, **kw):
        self.asked += 1
        return self.inner.request(method, url, **kw)


@pytest.mark.parametrize("used_percent, cached", [(93.0, True), (94.99, False), (99.0, False)],
                         ids=["fills-the-disk-to-exactly-high", "below-high-but-the-fill-crosses-it", "already-above-high"])
def test_a_fill_that_would_take_the_disk_above_high_is_refused_and_recorded(cache, used_percent, cached):
    # No S3CACHE_MAX_BYTES: the disk's own percent is the only measure, held at fill time as the cap is.
    capacity = 10**9
    body = b"b" * (capacity // 50)  # 2% of the disk
    disk = FsUsage(used=int(capacity * used_percent / 100), avail=capacity - int(capacity * used_percent / 100))
    upstream = _CountingUpstream(body)
    filler = Filler(cache.layout, workers=1, timeout=10, max_object_bytes=None, upstream=upstream,
                    disk_high=95, disk_usage=lambda: disk)
    ref = ObjectRef("bkt", "disk-bound")
    result = filler.fill(ref, "http://upstream.invalid/bkt/disk-bound")
    refused = CacheSize(cache.layout.cache_bytes_file).read().refused
    if cached:
        assert result.outcome == "filled" and cache.layout.object_path(ref).read_bytes() == body
        assert refused == 0
    else:
        assert (result.outcome, result.reason) == ("failed", "over-disk")
        assert not cache.layout.object_path(ref).exists() and not list(cache.layout.tmp_dir.iterdir())
        assert refused == len(body)  # the evictor's next pass makes room for it below LOW
    assert upstream.asked == 1  # one request; a refused fill reads no body past the response's head


def test_a_fill_the_disk_refused_makes_the_next_pass_free_room_below_low(cache):
    for i, k in enumerate("abcd"):
        cache.put(k, size=4096, atime_ns=ns_ago(5 - i))  # one block each: 16 KiB of a 20 KiB disk, 80% < HIGH
    disk = FakeDisk(cache.layout, total=5 * 4096, other=0)
    cache.run(usage=disk)
    assert all(cache.has(k) for k in "abcd")
    CacheSize(cache.layout.cache_bytes_file).refuse(4096)  # what the sidecar records (above)
    cache.run(usage=disk)  # room below LOW (80%: 16 KiB) with the refused block in: two files go
    assert [cache.has(k) for k in "abcd"] == [False, False, True, True]
    assert CacheSize(cache.layout.cache_bytes_file).read().refused == 0


class _IdleFiller:
    def state(self):
        return 0, None


def test_a_disk_other_data_keeps_above_low_makes_health_degraded(cache):
    # Fills are refused (over-disk), not failed, on such a disk: health must say so all the same.
    from s3cache.config import Config
    from sidecar.health import health_report
    for i, k in enumerate("ab"):
        cache.put(k, size=4096, atime_ns=ns_ago(5 - i))
    config = cache.config()
    cache.run(usage=FakeDisk(cache.layout, total=100 * 4096, other=10 * 4096))
    assert health_report(config, cache.layout, _IdleFiller())[0]
    summary = cache.run(usage=FakeDisk(cache.layout, total=100 * 4096, other=95 * 4096))
    assert not summary.target_reached and not cache.has("a") and not cache.has("b")  # the cache yielded it all
    ok, report = health_report(config, cache.layout, _IdleFiller())
    assert not ok and any("other data fills it" in r for r in report["reasons"]), report
    cache.run(usage=FakeDisk(cache.layout, total=100 * 4096, other=10 * 4096))  # the other data went
    assert health_report(config, cache.layout, _IdleFiller())[0]


def _burst_worker(path: str, n: int, out) -> None:
    ledger = CacheSize(path)
    out.put(sum(ledger.try_add(100, 1000) for _ in range(n)))


def test_the_ledger_never_lets_a_burst_of_fills_cross_the_limit(tmp_path):
    ledger = CacheSize(tmp_path / "cache-bytes")
    assert ledger.try_add(10**9, 1000)  # before the first pass: no figure, no refusal
    ledger.set_after_pass(300, 3, 0, 0, before=ledger.read())
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_burst_worker, args=(str(ledger.path), 20, out)) for _ in range(4)]
    for p in procs:
        p.start()
    admitted = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(60)
    assert admitted == 7  # (1000 - 300) / 100: exactly what fits, whoever asked
    assert ledger.read()[:2] == (1000, 10)


def test_fills_before_and_during_the_first_pass_are_never_lost(tmp_path):
    ledger = CacheSize(tmp_path / "cache-bytes")
    ledger.try_add(500, 1000)                  # before any pass: not held back, still counted
    before = ledger.read()                     # the pass starts (and its walk sees that fill) ...
    ledger.try_add(200, 1000)                  # ... a fill lands after the walk passed its directory
    assert ledger.set_after_pass(500, 1, 0, 0, before)[:2] == (700, 2)
    assert not ledger.try_add(400, 1000)       # 700 + 400 > 1000


def test_fills_while_a_pass_walks_are_added_to_its_measure_and_removals_wait_for_the_next(tmp_path):
    ledger = CacheSize(tmp_path / "cache-bytes")
    ledger.set_after_pass(1000, 4, 0, 0, Reading())
    ledger.try_add(50, None)
    before = ledger.read()                     # the pass starts; its walk will find 1050 bytes in 5 files ...
    assert ledger.removing(300, lambda: True)  # ... a purge of a file the walk already counted
    ledger.try_add(20, None, files=0)          # ... a refresh: 20 bytes more, no new file
    assert not ledger.removing(99, lambda: False)  # ... a purge that found nothing: nothing changes
    assert ledger.read()[:2] == (1050 - 300 + 20, 5 - 1)  # live: every change counted at once
    after = ledger.set_after_pass(1050, 5, 100, 1, before)  # the pass evicted one file of 100 bytes
    # The purge is not subtracted from the pass's word (the walk may not have seen the file): counted
    # as still there until the next pass measures, it holds fills back, never lets them through.
    assert after[:2] == (1050 - 100 + 20, 5 - 1)
    assert after.changes_since_pass == 2       # the purge and the refresh: since the pass started
    ledger.try_add(7, None)
    assert ledger.read().changes_since_pass == 3 and ledger.read()[:2] == (977, 5)


def test_a_removal_the_walk_never_saw_is_not_subtracted_twice(tmp_path):
    # 1000 bytes in 4 objects; a fill makes room by removing a 300-byte victim before the walk reaches
    # it: the walk finds 700 bytes.  Subtracting the removal again would say 400 and let 600 bytes of
    # fills past a 1000-byte limit.
    ledger = CacheSize(tmp_path / "cache-bytes")
    ledger.set_after_pass(1000, 4, 0, 0, Reading())
    before = ledger.read()
    assert ledger.removing(300, lambda: True)
    after = ledger.set_after_pass(700, 3, 0, 0, before)
    assert after[:2] == (700, 3)               # the true size
    assert not ledger.try_add(301, 1000)


def test_an_older_shorter_record_reads_as_no_figure_yet(tmp_path):
    path = tmp_path / "cache-bytes"
    path.write_bytes(struct.pack("<qqq", 4000, 9000, 123))  # the record before it counted files: 24 bytes
    ledger = CacheSize(path)
    assert ledger.read() == Reading()
    assert ledger.try_add(10**9, 1000)         # no figure: nothing held back, as before any pass
    before = ledger.read()
    assert before.bytes is None and before.changed_bytes == 10**9
    ledger.try_add(10, None)
    assert ledger.set_after_pass(500, 2, 0, 0, before)[:2] == (510, 3)  # the next pass sets it whole
    assert path.stat().st_size > 24


def test_a_missing_or_unreadable_record_reads_as_no_figure(tmp_path):
    assert CacheSize(tmp_path / "absent").read() == Reading()
    assert not (tmp_path / "absent").exists()  # a read creates nothing
    (tmp_path / "a-dir").mkdir()
    assert CacheSize(tmp_path / "a-dir").read() == Reading()
    assert Reading().changes_since_pass is None


def test_fills_may_take_the_cache_up_to_the_cap_itself(tmp_path):
    """S3CACHE_MAX_BYTES is what the cache may hold: fills use all of it (no band below it left empty)."""
    config = Config.from_env({"S3CACHE_DIR": str(tmp_path), "S3CACHE_MAX_BYTES": "1000", "S3CACHE_EVICT_HIGH": "90",
                              "S3CACHE_EVICT_LOW": "80"})
    assert Filler.from_config(config, Layout(config.dir)).cap == 1000
    assert Filler.from_config(Config.from_env({"S3CACHE_DIR": str(tmp_path)}), Layout(config.dir)).cap is None


# -- the whole stack: a burst of fills against the cap ----------------------------------------------

BUCKET = "cap-tests"
OBJECT_BYTES = 64 * 1024


@pytest.mark.integration
def test_the_cap_holds_under_a_burst_of_fills(origin, make_stack):
    origin.ensure_bucket(BUCKET)
    s3 = origin.s3()
    cap = 10 * OBJECT_BYTES  # at most 10 objects after any fill (HIGH 90% is the disk's, not the cap's)
    # A long evict interval: only the first pass (at start, empty cache) runs during the burst.
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_MAX_BYTES=str(cap), S3CACHE_EVICT_INTERVAL="3600",
                       S3CACHE_EVICT_HIGH="90", S3CACHE_EVICT_LOW="50", S3CACHE_FILL_WORKERS="8",
                       S3CACHE_ADMIT="first")
    wait_until(lambda: stack.layout.cache_bytes_file.exists() and CacheSize(stack.layout.cache_bytes_file).read().bytes == 0,
               timeout=30, what="the evictor's first pass")
    keys = [f"obj-{i:02d}" for i in range(30)]
    for k in keys:
        s3.put_object(Bucket=BUCKET, Key=k, Body=os.urandom(OBJECT_BYTES))
    urls = [stack.proxied(origin.presign(BUCKET, k)) for k in keys]
    threads = [threading.Thread(target=stack.get, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait_until(lambda: stack.fills_finished() >= len(keys), timeout=60, what="every fill to end")
    cached = [k for k in keys if stack.object_file(BUCKET, k).exists()]
    on_disk = sum(stack.object_file(BUCKET, k).stat().st_size for k in cached)
    assert on_disk <= cap, (len(cached), on_disk)
    assert len(cached) == 10  # the whole cap is used, not just respected
    assert CacheSize(stack.layout.cache_bytes_file).read()[:2] == (on_disk, len(cached))


def _bucket_bytes(stack) -> int:
    total = 0
    for d, _, files in os.walk(stack.object_file(BUCKET, "x").parent):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except FileNotFoundError:  # removed while we walked
                pass
    return total


@pytest.mark.integration
def test_the_cap_holds_while_fills_make_room_from_the_next_victims(origin, make_stack):
    # Between LOW and HIGH a pass lists its next victims; a burst of new fills then removes them to
    # make room while refusals bring passes forward.  However those interleave, the cache on disk
    # must stay within the cap and the ledger must never say less.
    origin.ensure_bucket(BUCKET)
    s3 = origin.s3()
    cap = 10 * OBJECT_BYTES  # 10 objects; LOW 50%
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_MAX_BYTES=str(cap), S3CACHE_EVICT_INTERVAL="1",
                       S3CACHE_EVICT_HIGH="90", S3CACHE_EVICT_LOW="50", S3CACHE_FILL_WORKERS="8",
                       S3CACHE_ADMIT="first", S3CACHE_EVICT_POLICY="lru")
    old, new = [f"old-{i}" for i in range(7)], [f"new-{i:02d}" for i in range(30)]
    for k in old + new:
        s3.put_object(Bucket=BUCKET, Key=k, Body=os.urandom(OBJECT_BYTES))
    for k in old:  # 70% of the cap: at or above LOW, so every pass lists victims
        stack.get(stack.proxied(origin.presign(BUCKET, k)))
        stack.wait_cached(BUCKET, k)
    wait_until(lambda: stack.layout.victims_file.exists(), timeout=30, what="a pass to list the next victims")
    seen, done = [], threading.Event()

    def sample():
        while not done.is_set():
            seen.append(_bucket_bytes(stack))

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=stack.get, args=(stack.proxied(origin.presign(BUCKET, k)),)) for k in new]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait_until(lambda: stack.fills_finished() >= len(old) + len(new), timeout=60, what="every fill to end")
    done.set()
    sampler.join(10)
    assert seen and max(seen) <= cap, max(seen)
    on_disk = _bucket_bytes(stack)
    assert on_disk <= cap
    assert CacheSize(stack.layout.cache_bytes_file).read().bytes >= on_disk


# -- what admission saved, on the status page and in the metrics -----------------------------------


def test_the_status_snapshot_page_and_metrics_show_admission(cache):
    from prometheus_client.parser import text_string_to_metric_families

    from s3cache.config import Config
    from sidecar import metrics, status_page
    from sidecar.collector import Collector
    from tests.test_status_units import FakeFiller

    (cache.layout.logs_dir / "access.log").write_bytes(b"")
    adm = Admission("count:2", cache.layout)
    for _ in range(2):
        adm.admit(ObjectRef("bkt", "twice"))  # declined, then admitted
    adm.admit(ObjectRef("bkt", "once"))       # declined
    config = Config.from_env({"S3CACHE_DIR": str(cache.root), "S3CACHE_ADMIT": "count:2"})
    snap = Collector(config, cache.layout, FakeFiller(), admission=adm).snapshot()
    a = snap["admission"]
    assert (a["admitted"], a["declined"]) == (1, 2)
    assert a["admit_rate"] == pytest.approx(1 / 3)
    assert a["saved_bytes_estimated"] == 2 * 1500  # FakeFiller: 3000 bytes in 2 fills
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for fam in text_string_to_metric_families(metrics.render(snap)) for s in fam.samples}
    assert values[("s3cache_admission_decisions_total", (("decision", "declined"),))] == 2
    assert values[("s3cache_admission_saved_bytes", ())] == 3000
    page = status_page.render(snap)
    assert 'data-key="admission"' in page and "S3CACHE_ADMIT=count:2" in page
    assert 'data-key="admission_declined">2<' in page
