"""Issue 16, the cap at fill time: a fill over the limit removes the evictor's next victims first (``s3cache.victims``).

Hand-made caches (the evictor's ``Cache`` helper), real passes with an
injected disk, and real fills (``sidecar.fill.Filler``) against a stub S3.
Sizes are chosen so a pass lists exactly the objects named in each test:
a pass lists ``victims.SHARE`` of the cache's bytes, whole objects, at least one.
"""

from __future__ import annotations

import os
import struct

from hypothesis import given, settings, strategies as st

from s3cache import objectlock, victims
from s3cache.layout import ObjectRef
from s3cache.ledger import CacheSize
from s3cache.usage import FsUsage
from s3cache.victims import Victim, Victims
from sidecar.fill import Filler
from tests.test_admission_eviction import _CountingUpstream
from tests.test_evictor import Cache, ns_ago

CAP = 4700  # LOW 80%: 3760 bytes


def four_objects(tmp_path) -> Cache:
    """a, b, c, d (1000 bytes each, a the least recently used): 85% of CAP, above LOW."""
    cache = Cache(tmp_path / "cache")
    for i, k in enumerate("abcd"):
        cache.put(k, atime_ns=ns_ago(5 - i))
    return cache


def filler(cache: Cache, body: bytes = b"n" * 1000, **kw) -> tuple[Filler, _CountingUpstream]:
    upstream = _CountingUpstream(body)
    return Filler(cache.layout, workers=1, timeout=10, max_object_bytes=None, upstream=upstream,
                  cap=kw.pop("cap", CAP), **kw), upstream


def fill(f: Filler, key: str):
    return f.fill(ObjectRef("bkt", key), f"http://upstream.invalid/bkt/{key}")


def listed(cache: Cache) -> list[bytes]:
    with open(cache.layout.victims_file, "rb") as fh:
        data = fh.read()
    out, pos = [], victims._HEADER.size
    while pos < len(data):
        *_, n = victims._RECORD.unpack_from(data, pos)
        pos += victims._RECORD.size
        out.append(data[pos:pos + n])
        pos += n
    return out


def true_size(cache: Cache) -> tuple[int, int]:
    sizes = [os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(cache.layout.objects_dir) for f in fs]
    return sum(sizes), len(sizes)


def test_a_pass_between_low_and_high_lists_the_next_victims_in_lru_order(tmp_path):
    cache = four_objects(tmp_path)
    s = cache.run(S3CACHE_MAX_BYTES=str(CAP))
    assert s.evicted_files == 0 and s.next_victims == 1 and "next_victims=1 files" in s.line()
    assert listed(cache) == [b"bkt/a"]  # the least recently used; a tenth of 4000 bytes is one object


def test_a_fill_over_the_cap_removes_the_next_victim_instead_of_being_refused(tmp_path):
    cache = four_objects(tmp_path)
    cache.run(S3CACHE_MAX_BYTES=str(CAP))
    f, _ = filler(cache)
    result = fill(f, "new")                   # 4000 + 1000 > 4230: "a" makes room
    assert result.outcome == "filled", result
    assert [cache.has(k) for k in ("a", "b", "c", "d", "new")] == [False, True, True, True, True]
    reading = CacheSize(cache.layout.cache_bytes_file).read()
    assert (reading.bytes, reading.files) == true_size(cache) == (4000, 4)
    assert reading.refused == 0
    # The list is spent: the next fill over the cap is refused, and recorded for the next pass.
    result = fill(f, "newer")
    assert (result.outcome, result.reason) == ("failed", "over-cap")
    assert not cache.has("newer") and all(cache.has(k) for k in "bcd")
    assert CacheSize(cache.layout.cache_bytes_file).read().refused == 1000
    s = cache.run(S3CACHE_MAX_BYTES=str(CAP))  # the next pass says what fills removed
    assert (s.fill_evicted_files, s.fill_evicted_bytes) == (1, 1000) and "fill_evicted=1 files/1000 bytes" in s.line()


def test_without_a_list_a_fill_over_the_cap_is_refused_and_removes_nothing(tmp_path):
    cache = four_objects(tmp_path)
    cache.run(S3CACHE_MAX_BYTES=str(CAP))
    Victims(cache.layout).clear()
    f, upstream = filler(cache)
    result = fill(f, "new")
    assert (result.outcome, result.reason) == ("failed", "over-cap")
    assert all(cache.has(k) for k in "abcd") and upstream.asked == 1


def test_a_victim_read_since_the_pass_stays_and_the_fill_is_refused(tmp_path):
    cache = four_objects(tmp_path)
    cache.run(S3CACHE_MAX_BYTES=str(CAP))
    path = cache.layout.object_path(ObjectRef("bkt", "a"))
    os.utime(path, ns=(ns_ago(0), path.stat().st_mtime_ns))  # a hit the pass did not see
    result = fill(filler(cache)[0], "new")
    assert (result.outcome, result.reason) == ("failed", "over-cap")
    assert cache.has("a") and not cache.has("new")


def test_a_victim_replaced_since_the_pass_stays(tmp_path):
    cache = four_objects(tmp_path)
    cache.run(S3CACHE_MAX_BYTES=str(CAP))
    path = cache.layout.object_path(ObjectRef("bkt", "a"))
    st = path.stat()
    path.write_bytes(b"r" * 999)  # a refresh with a new body (same atime, as a copy with -p would leave it)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert Victims(cache.layout).take(1000, 0) == victims.Freed()
    assert path.read_bytes() == b"r" * 999


def test_a_victim_whose_fill_holds_its_lock_stays(tmp_path):
    cache = four_objects(tmp_path)
    cache.run(S3CACHE_MAX_BYTES=str(CAP))
    tmp = str(cache.layout.temp_path(ObjectRef("bkt", "a")))
    fd = objectlock.try_lock(tmp)
    try:
        assert Victims(cache.layout).take(1000, 0) == victims.Freed()
    finally:
        objectlock.release(fd, tmp)
    assert cache.has("a")


def test_a_fill_over_the_disks_high_watermark_removes_victims_by_their_blocks(tmp_path):
    # No cap: the disk alone decides.  A disk of 5 blocks holding 4 one-block objects (80%, LOW):
    # one more block would take it to 100%, above HIGH (90%).
    cache = Cache(tmp_path / "cache")
    for i, k in enumerate("abcd"):
        cache.put(k, size=4096, atime_ns=ns_ago(5 - i))

    def disk() -> FsUsage:  # every block of the cache directory (a fill's temp file too) on a 5-block disk
        used = sum(os.lstat(os.path.join(d, f)).st_blocks * 512
                   for d, _, fs in os.walk(cache.layout.objects_dir) for f in fs)
        used += sum(os.lstat(os.path.join(cache.layout.tmp_dir, f)).st_blocks * 512
                    for f in os.listdir(cache.layout.tmp_dir))
        return FsUsage(used=used, avail=5 * 4096 - used)

    s = cache.run(usage=disk)
    assert s.evicted_files == 0 and listed(cache) == [b"bkt/a"]
    f, _ = filler(cache, body=b"n" * 4096, cap=None, disk_high=90, disk_usage=disk)
    result = fill(f, "new")
    assert result.outcome == "filled", result
    assert [cache.has(k) for k in ("a", "b", "c", "d", "new")] == [False, True, True, True, True]
    assert disk().percent <= 90


def test_a_pass_far_below_low_lists_nothing(tmp_path):
    cache = four_objects(tmp_path)
    cache.run(S3CACHE_MAX_BYTES=str(CAP))
    assert cache.layout.victims_file.exists()
    s = cache.run(S3CACHE_MAX_BYTES=str(10 * CAP))  # 4000 of 47000: nowhere near the band
    assert s.next_victims == 0 and not cache.layout.victims_file.exists()


def test_an_evicting_pass_lists_what_comes_after_its_removals(tmp_path):
    cache = Cache(tmp_path / "cache")
    for i, k in enumerate("abcdef"):
        cache.put(k, atime_ns=ns_ago(10 - i))
    s = cache.run(S3CACHE_MAX_BYTES="5000")  # 6000 > 4500: down below 4000, three go
    assert s.evicted_files == 3 and [cache.has(k) for k in "abc"] == [False] * 3
    assert listed(cache) == [b"bkt/d"]  # the next in line, not one already removed


def test_the_lfu_order_lists_the_least_asked_for_first(tmp_path):
    from tests.test_admission_eviction import ask
    cache = four_objects(tmp_path)
    ask(cache, "a", 5)                       # the least recently used, but asked for five times
    cache.run(S3CACHE_MAX_BYTES=str(CAP), S3CACHE_EVICT_POLICY="lfu")
    assert listed(cache) == [b"bkt/b"]


def test_what_fills_removed_sets_the_admission_boundary_at_the_next_pass(tmp_path):
    # TinyLFU admits a newcomer asked for more often than what eviction removed lately.  When fills make
    # the room, passes seldom remove anything: the victims' own estimates must set the boundary.
    from tests.test_admission_eviction import ask, sketch_of
    cache = four_objects(tmp_path)
    ask(cache, "a", 3)                       # the head of the list, asked for three times
    cache.run(S3CACHE_MAX_BYTES=str(CAP), S3CACHE_EVICT_POLICY="lru")  # recency lists "a" first all the same
    assert listed(cache) == [b"bkt/a"]
    s = sketch_of(cache)
    s.boundary = 0
    s.close()
    assert fill(filler(cache)[0], "new").outcome == "filled" and not cache.has("a")
    summary = cache.run(S3CACHE_MAX_BYTES=str(CAP), S3CACHE_EVICT_POLICY="lru")
    assert summary.evicted_files == 0 and summary.fill_evicted_files == 1
    assert sketch_of(cache).boundary == 3


def test_a_dry_run_lists_nothing(tmp_path):
    cache = four_objects(tmp_path)
    cache.run(S3CACHE_MAX_BYTES=str(CAP), dry_run=True)
    assert not cache.layout.victims_file.exists()


def test_a_torn_list_frees_what_its_whole_records_name(tmp_path):
    cache = four_objects(tmp_path)
    Victims(cache.layout).publish([Victim(b"bkt/" + k.encode(), 1000, 4096, os.lstat(
        cache.layout.object_path(ObjectRef("bkt", k))).st_atime_ns) for k in "ab"])
    data = cache.layout.victims_file.read_bytes()
    cache.layout.victims_file.write_bytes(data[:-2])  # "b"'s record cut short
    assert Victims(cache.layout).take(5000, 0).files == 1
    assert not cache.has("a") and cache.has("b")


def _raw_list(records: list[tuple[bytes, int]]) -> bytes:
    # Packed here by hand (struct formats spelled out), so a list is what the format says, not what publish writes.
    body = b"".join(struct.pack("<qqqqH", size, 0, atime, 0, len(rel)) + rel for rel, size, atime in records)
    total = sum(r[1] for r in records)
    return struct.pack("<8sQqqqqqqqq", b"s3cvict1", 80, total, 0, 0, 0, 0, 0, 0, 0) + body


@settings(max_examples=60, deadline=None)
@given(rels=st.lists(st.one_of(
    st.sampled_from([b"../outside", b"../../outside", b"bkt/../../outside", b"bkt/../../run/outside", b"/outside", b"bkt/./a", b"bkt//a", b"bkt/a\0x",
                     b"..", b"bkt/..", b"outside", b"../cache/run/cache-bytes"]),
    st.binary(min_size=1, max_size=40)), min_size=1, max_size=8))
def test_no_list_however_made_removes_anything_outside_objects(tmp_path_factory, rels):
    root = tmp_path_factory.mktemp("v")
    cache = Cache(root / "cache")
    # Files a path that climbs out of objects/ could name, all with the size and atime the records give.
    keep = [root / "outside", root / "cache" / "outside", cache.layout.run_dir / "outside"]
    for p in keep:
        p.write_bytes(b"x" * 1000)
        os.utime(p, ns=(ns_ago(1), ns_ago(2)))
    records = [(rel, 1000, ns_ago(1)) for rel in rels]
    # Written raw, past publish's own check: take must hold the line by itself.
    cache.layout.victims_file.write_bytes(_raw_list(records))
    Victims(cache.layout).take(10**9, 0)
    assert all(p.exists() for p in keep)
    assert Victims(cache.layout).publish(Victim(rel, 1000, 0, 0) for rel in rels) == \
        sum(1 for rel in rels if victims._safe_rel(rel))
