"""The evictor (issue 3): order, watermarks, safety, housekeeping, the report, the commands.

Unit tests on a temp cache built with ``Layout``; the filesystem's usage is
injected (``FakeDisk``) so a pass's decision does not depend on this
machine's disk.  The access-log mechanics are in test_evictor_accesslog.py;
the whole-stack test on a real small filesystem is the lead's.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from array import array
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evictor import report
from commands.evict import run_once
from evictor.policy import FsUsage, Need, bytes_to_free, select_victims
from evictor.remove import prune_dirs
from evictor.run import PassBusy, run_pass
from evictor.scan import FileTable
from s3cache.config import Config
from s3cache.layout import Layout, ObjectRef
from s3cache.ledger import CacheSize

PROJECT = Path(__file__).resolve().parent.parent
# The instant every pass in these tests runs at (``Cache.run`` injects it as the evictor's clock),
# and that every age below is measured back from: a fixed instant, not the time this module was
# imported, so no result depends on how long the suite had been running before a test.
NOW = 1_790_000_000.0


def ns_ago(hours: float) -> int:
    return int((NOW - hours * 3600) * 1e9)


# -- helpers ------------------------------------------------------------------------------


class Cache:
    """A cache directory laid out by ``Layout``, with objects whose atimes we choose."""

    def __init__(self, root: Path):
        self.layout = Layout(root)
        self.layout.ensure()
        self.root = root

    def put(self, key: str, size: int = 1000, *, atime_ns: int, bucket: str = "bkt",
            mtime_ns: int | None = None, meta: bool = True) -> Path:
        ref = ObjectRef(bucket, key)
        path = self.layout.object_path(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, ns=(atime_ns, mtime_ns if mtime_ns is not None else ns_ago(24 * 30)))
        if meta:
            m = self.layout.meta_path(ref)
            m.parent.mkdir(parents=True, exist_ok=True)
            m.write_text(json.dumps({"bucket": bucket, "key": key, "size": size}))
        return path

    def has(self, key: str, bucket: str = "bkt") -> bool:
        return self.layout.object_path(ObjectRef(bucket, key)).exists()

    def has_meta(self, key: str, bucket: str = "bkt") -> bool:
        return self.layout.meta_path(ObjectRef(bucket, key)).exists()

    def log(self, *lines: str) -> None:
        with open(self.layout.logs_dir / "access.log", "a", encoding="utf-8") as fh:
            fh.write("".join(lines))

    def config(self, **env: str) -> Config:
        return Config.from_env({"S3CACHE_DIR": str(self.root), "S3CACHE_EVICT_HIGH": "90",
                                "S3CACHE_EVICT_LOW": "80", **env})

    def run(self, usage=None, **kw):
        env = {k: v for k, v in kw.items() if k.startswith("S3CACHE_")}
        rest = {k: v for k, v in kw.items() if not k.startswith("S3CACHE_")}
        rest.setdefault("now", lambda: NOW)
        return run_pass(self.config(**env), usage=usage or EMPTY_DISK, **rest)


def EMPTY_DISK() -> FsUsage:
    """A huge, empty filesystem: only S3CACHE_MAX_BYTES can trigger eviction."""
    return FsUsage(used=0, avail=10**15)


class FakeDisk:
    """A filesystem of ``total`` bytes with ``other`` bytes of someone else's data plus the cache's objects.

    Counts allocated blocks of the object files live, as a real filesystem would.
    """

    def __init__(self, layout: Layout, total: int, other: int):
        self.layout, self.total, self.other = layout, total, other

    def __call__(self) -> FsUsage:
        used = self.other
        for dirpath, _dirs, files in os.walk(self.layout.objects_dir):
            for f in files:
                used += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
        return FsUsage(used=used, avail=self.total - used)


def caddy_line(uri: str, ts: float, *, method: str = "GET", status: int = 200, x_cache: str | None = "HIT") -> str:
    """One access-log line as Caddy 2.11 writes it (field order and all)."""
    rec = {"level": "info", "ts": ts, "logger": "http.log.access.log0", "msg": "handled request",
           "request": {"remote_ip": "127.0.0.1", "remote_port": "53436", "client_ip": "127.0.0.1",
                       "proto": "HTTP/1.1", "method": method, "host": "127.0.0.1:8080", "uri": uri,
                       "headers": {"User-Agent": ["test"]}},
           "bytes_read": 0, "user_id": "", "duration": 0.0002, "size": 6, "status": status,
           "resp_headers": {"Server": ["Caddy"], **({"X-Cache": [x_cache]} if x_cache else {})}}
    return json.dumps(rec, separators=(",", ":")) + "\n"


@pytest.fixture
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache")


# -- order ---------------------------------------------------------------------------------


def test_least_recently_accessed_go_first_whatever_their_names_or_mtimes(cache):
    # Names and mtimes in the opposite order to atimes: only atime may decide.
    hours_ago = {"a-read-an-hour-ago": 1, "b-read-five-hours-ago": 5, "c-read-two-hours-ago": 2,
                 "d-read-ten-hours-ago": 10, "e-read-just-now": 0}
    for n, (key, h) in enumerate(hours_ago.items()):
        cache.put(key, atime_ns=ns_ago(h), mtime_ns=ns_ago(100 - n))
    # 5000 bytes against a cap of 4999: over it -> must get below 80% (<= 3999): two files go.
    s = cache.run(S3CACHE_MAX_BYTES="4999")
    assert s.evicted_files == 2
    assert not cache.has("d-read-ten-hours-ago") and not cache.has("b-read-five-hours-ago")
    assert all(cache.has(k) for k in ("a-read-an-hour-ago", "c-read-two-hours-ago", "e-read-just-now"))


def early_fetched_hot_and_later_cold(cache: Cache) -> Path:
    """One object fetched 10 h ago and read ever since; five fetched later and never read again."""
    hot = cache.put("fetched-early-read-often.bin", atime_ns=ns_ago(10))
    for i in range(5):
        cache.put(f"fetched-later-never-read-{i}.bin", atime_ns=ns_ago(5 - i * 0.5))
    return hot


def test_object_read_often_but_fetched_early_survives_through_the_access_log(cache):
    hot = early_fetched_hot_and_later_cold(cache)
    mtime_before = hot.stat().st_mtime_ns
    # Its atime on disk stays 10 h old (relatime/noatime): only Caddy's log knows of the reads.
    reads = [NOW - 3600 * h for h in (9, 6, 3, 1, 0.1)]
    cache.log(*(caddy_line("/bkt/fetched-early-read-often.bin?X-Amz-Signature=REDACTED", t) for t in reads))
    # 6000 bytes, cap 5000: down to < 4000 bytes means three objects go.
    s = cache.run(S3CACHE_MAX_BYTES="5000")
    assert s.evicted_files == 3 and s.atimes_refreshed == 1
    assert cache.has("fetched-early-read-often.bin")
    assert [cache.has(f"fetched-later-never-read-{i}.bin") for i in range(5)] == [False] * 3 + [True] * 2
    st_hot = hot.stat()
    assert st_hot.st_atime_ns == int(reads[-1] * 1e9)  # the last read, from the log
    assert st_hot.st_mtime_ns == mtime_before          # S3's Last-Modified untouched


def test_without_the_access_log_the_early_fetched_object_would_have_been_evicted(cache):
    early_fetched_hot_and_later_cold(cache)
    cache.run(S3CACHE_MAX_BYTES="5000")
    assert not cache.has("fetched-early-read-often.bin")  # atime alone: FIFO by fetch time


# -- watermarks --------------------------------------------------------------------------


def test_usage_exactly_at_high_evicts_nothing(cache):
    for i in range(9):
        cache.put(f"k{i}", atime_ns=ns_ago(i))
    s = cache.run(S3CACHE_MAX_BYTES="10000")  # 9000 / 10000 = 90%: not above HIGH
    assert s.evicted_files == 0 and s.usage_percent_before == 90.0


def test_a_cache_below_its_cap_is_left_whole_however_near_but_lists_its_next_victims(cache):
    # The cap has no band below it: fills use all of it, making room from the listed victims.
    cache.put("oldest-999-bytes", size=999, atime_ns=ns_ago(100))
    for i in range(9):
        cache.put(f"k{i}", atime_ns=ns_ago(i))
    s = cache.run(S3CACHE_MAX_BYTES="10000")  # 9999 / 10000: above HIGH (90%), not above the cap
    assert s.evicted_files == 0 and s.usage_percent_before == pytest.approx(99.99)
    assert s.next_victims >= 1 and cache.has("oldest-999-bytes")


def test_above_the_cap_evicts_until_strictly_below_low(cache):
    cache.put("oldest-2001-bytes-leaves-exactly-low", size=2001, atime_ns=ns_ago(100))
    for i in range(8):
        cache.put(f"k{i}", atime_ns=ns_ago(i))
    # 10001 / 10000: over the cap.  Evicting the oldest leaves 8000 = 80.00%, which is not
    # *below* LOW, so one more goes.
    s = cache.run(S3CACHE_MAX_BYTES="10000")
    assert s.evicted_files == 2 and s.bytes_after == 7000
    assert s.usage_percent_before == pytest.approx(100.01) and s.usage_percent_after == 70.0
    assert not cache.has("oldest-2001-bytes-leaves-exactly-low") and not cache.has("k7")


def test_filesystem_usage_drives_eviction_counting_allocated_blocks(cache):
    block = os.statvfs(cache.root).f_bsize
    for i in range(12):
        cache.put(f"k{i:02d}", size=block, atime_ns=ns_ago(12 - i))  # k00 oldest
    disk = FakeDisk(cache.layout, total=40 * block, other=25 * block)  # 37 / 40 = 92.5%
    s = cache.run(usage=disk)
    # Below 80% of 40 blocks means at most 31 used: six of our blocks go.
    assert s.evicted_files == 6
    assert [cache.has(f"k{i:02d}") for i in range(12)] == [False] * 6 + [True] * 6
    assert s.usage_percent_before == 92.5 and s.usage_percent_after == pytest.approx(77.5)


def test_usage_is_the_larger_of_disk_and_cap(cache):
    for i in range(10):
        cache.put(f"k{i}", atime_ns=ns_ago(10 - i))
    nearly_full_disk = lambda: FsUsage(used=95 * 10**7, avail=5 * 10**7)  # 95%: other data, out of our reach
    s = cache.run(usage=nearly_full_disk, S3CACHE_MAX_BYTES="100000")  # cap: 10%
    assert s.usage_percent_before == 95.0
    # Even the whole cache cannot bring this disk below 80%: it yields everything, and says so.
    assert s.evicted_files == 10 and not s.target_reached
    assert "target=unreachable" in s.line()


def test_max_bytes_cap_on_an_empty_disk(cache):
    for i in range(20):
        cache.put(f"k{i:02d}", atime_ns=ns_ago(20 - i))
    s = cache.run(S3CACHE_MAX_BYTES="19000")  # 20000 / 19000 = 105%
    assert s.bytes_after < 0.8 * 19000 and s.bytes_after >= 0.8 * 19000 - 1000
    assert s.evicted_files == 5 and not cache.has("k04") and cache.has("k05")


def test_bytes_to_free_is_none_at_or_below_high():
    assert bytes_to_free(FsUsage(used=900, avail=100), 0, high=90, low=80, max_bytes=None) is None  # 90%
    # 901 of 1000: below 80% is at most 799 used.
    assert bytes_to_free(FsUsage(used=901, avail=99), 0, high=90, low=80, max_bytes=None) == Need(size=0, alloc=102)


def test_a_refused_fill_is_made_room_for_below_low_unless_even_an_empty_cache_could_not_take_it():
    disk = FsUsage(used=500, avail=500)  # 50%: nothing to do by itself
    assert bytes_to_free(disk, 500, high=90, low=80, max_bytes=None) is None
    # Room below LOW (at most 799 used) with a refused 400 in: 101 to free.
    assert bytes_to_free(disk, 500, high=90, low=80, max_bytes=None, refused=400) == Need(size=0, alloc=101)
    # The cap too: 500 of a 1000-byte cap; below 80% with 400 more is 101 to free on both measures.
    assert bytes_to_free(disk, 500, high=90, low=80, max_bytes=1000, refused=400) == Need(size=101, alloc=101)
    # 800 does not fit below 80% of the cap however empty the cache: nothing is evicted for it.
    assert bytes_to_free(disk, 500, high=90, low=80, max_bytes=1000, refused=800) is None
    # Nor of the disk, when other data holds 450 of it (the cache 50): 450 + 400 > 799.
    assert bytes_to_free(disk, 50, high=90, low=80, max_bytes=None, refused=400, cache_alloc=50) is None
    assert bytes_to_free(disk, 50, high=90, low=80, max_bytes=None, refused=300, cache_alloc=50) == \
        Need(size=0, alloc=1)


def _brute_force(atimes, sizes, allocs, need):
    order = sorted(range(len(atimes)), key=lambda i: (atimes[i], i))
    fs = fa = 0
    for taken, i in enumerate(order, 1):
        fs, fa = fs + sizes[i], fa + allocs[i]
        if need.met_by(fs, fa):
            return order[:taken]
    return order


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5000), st.integers(0, 3) .map(lambda b: b * 4096)),
                min_size=0, max_size=300),
       st.integers(0, 2_000_000), st.integers(0, 1_000_000))
def test_select_victims_is_the_shortest_lru_prefix_that_meets_the_need(rows, need_size, need_alloc):
    # Few distinct atimes (ties) and oldest-smallest skews exercise the guess-and-double path.
    table = FileTable(atime_ns=array("q", [r[0] for r in rows]), size=array("q", [r[1] for r in rows]),
                      alloc=array("q", [r[2] for r in rows]))
    need = Need(size=need_size, alloc=need_alloc)
    got = select_victims(table, need, sum(table.size), sum(table.alloc))
    if need.met_by(0, 0):
        assert got == []
    else:
        assert got == _brute_force(table.atime_ns, table.size, table.alloc, need)


def test_a_pass_with_nothing_to_evict_orders_nothing(cache, monkeypatch):
    for i in range(50):
        cache.put(f"k{i}", atime_ns=ns_ago(i))

    def no_sorting(*_a, **_k):
        raise AssertionError("LRU order asked for although usage is below HIGH")
    monkeypatch.setattr("evictor.run.lru_order", no_sorting)
    s = cache.run(S3CACHE_MAX_BYTES="1000000")
    assert s.scanned_files == 50 and s.bytes_before == 50000 and s.evicted_files == 0


# -- what goes with an object, and what stays ---------------------------------------------------


def test_metadata_goes_with_the_object_and_emptied_directories_with_them(cache):
    cache.put("deep/er/evicted.bin", atime_ns=ns_ago(10))
    cache.put("kept.bin", atime_ns=ns_ago(1))
    s = cache.run(S3CACHE_MAX_BYTES="1999")
    assert s.evicted_files == 1
    assert not cache.has("deep/er/evicted.bin") and not cache.has_meta("deep/er/evicted.bin")
    assert cache.has("kept.bin") and cache.has_meta("kept.bin")
    for tree in (cache.layout.objects_dir, cache.layout.meta_dir):
        assert not (tree / "bkt" / "deep").exists()  # emptied chain removed ...
        assert (tree / "bkt").is_dir()               # ... but never the bucket's directory


def test_prune_dirs_never_removes_a_directory_a_fill_just_put_something_in(cache):
    d = cache.layout.objects_dir / "bkt" / "fill-renamed-into-it"
    d.mkdir(parents=True)
    (d / "new-object").write_bytes(b"x")
    empty = cache.layout.objects_dir / "bkt" / "empty"
    empty.mkdir()
    assert prune_dirs(cache.layout, [os.fsencode(d), os.fsencode(empty)]) == 1
    assert (d / "new-object").exists() and not empty.exists()


def test_dry_run_removes_nothing_and_writes_nothing(cache, capsys):
    for i in range(10):
        cache.put(f"k{i}", atime_ns=ns_ago(10 - i))
    cache.log(caddy_line("/bkt/k0", NOW - 1))  # makes k0 the most recent, in the dry run's eyes too
    old_temp = cache.layout.tmp_dir / ("dead-fill" + ".part")
    old_temp.write_bytes(b"partial")
    os.utime(old_temp, (NOW - 3600, NOW - 3600))

    def snapshot():  # every file, with its times (the log's atime aside: reading it is not changing it)
        logs = cache.layout.logs_dir
        return sorted((str(p), p.stat().st_mtime_ns, None if p.parent == logs else p.stat().st_atime_ns)
                      for p in cache.root.rglob("*") if p.is_file())
    before = snapshot()
    assert run_once(cache.config(S3CACHE_MAX_BYTES="9999"), dry_run=True) == 0
    assert snapshot() == before  # no unlink, no utime, no cursor, no evictor.json
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["would remove object objects/bkt/k1 (1000 bytes)",
                       "would remove object objects/bkt/k2 (1000 bytes)",
                       "would remove object objects/bkt/k3 (1000 bytes)"]
    assert out[3] == "would remove temp tmp/dead-fill.part (7 bytes)"
    assert out[-1].startswith("dry-run pass: scanned=10 files") and "would_evict=3 files/3000 bytes" in out[-1]


def test_run_once_removes_and_prints_what_it_removed(cache, capsys):
    for i in range(5):
        cache.put(f"k{i}", atime_ns=ns_ago(5 - i))
    assert run_once(cache.config(S3CACHE_MAX_BYTES="4999"), dry_run=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["removed object objects/bkt/k0 (1000 bytes)", "removed object objects/bkt/k1 (1000 bytes)",
                   out[-1]]
    assert out[-1].startswith("pass: scanned=5 files bytes_before=5000 bytes_after=3000 evicted=2 files/2000 bytes")
    assert not cache.has("k0") and cache.has("k2")


def test_a_second_pass_at_once_is_refused_not_run_twice(cache, capsys):
    lock = os.open(cache.layout.run_dir / "evictor.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with pytest.raises(PassBusy):
            cache.run()
        assert run_once(cache.config(), dry_run=False) == 1
        assert "another eviction pass is running" in capsys.readouterr().err
        assert run_once(cache.config(), dry_run=True) == 0  # read-only: no lock needed
    finally:
        os.close(lock)


# -- nothing stops a pass ------------------------------------------------------------------------


class _Listing:
    """What ``os.scandir`` returns, with a hook run between listing and the caller's look at it."""

    def __init__(self, entries, after_listing):
        self.entries = entries
        after_listing()

    def __enter__(self):
        return iter(self.entries)

    def __exit__(self, *exc):
        return False


def test_files_and_directories_vanishing_mid_scan_do_not_stop_the_pass(cache, monkeypatch):
    cache.put("dir/vanishes-between-listing-and-stat", atime_ns=ns_ago(50))
    cache.put("subdir-vanishes-before-its-turn/x", atime_ns=ns_ago(50))
    cache.put("dir/vanishes-between-scan-and-eviction", atime_ns=ns_ago(40))
    for i in range(6):
        cache.put(f"dir/k{i}", atime_ns=ns_ago(10 - i))
    real = os.scandir
    bucket = os.fsencode(cache.layout.objects_dir / "bkt")

    def scandir(path):
        if path == bucket + b"/dir":
            with real(path) as it:
                return _Listing(list(it), lambda: os.unlink(path + b"/vanishes-between-listing-and-stat"))
        if path == bucket:
            with real(path) as it:
                gone = bucket + b"/subdir-vanishes-before-its-turn"
                return _Listing(list(it), lambda: (os.unlink(gone + b"/x"), os.rmdir(gone)))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)

    def usage_and_a_vanishing_victim():
        (cache.layout.objects_dir / "bkt/dir/vanishes-between-scan-and-eviction").unlink(missing_ok=True)
        return EMPTY_DISK()
    s = cache.run(usage=usage_and_a_vanishing_victim, S3CACHE_MAX_BYTES="6999")
    assert s.scanned_files == 7 and s.errors == 0
    # The vanished victim freed nothing of ours; the pass went on to the next ones.
    assert s.evicted_files == 2 and not cache.has("dir/k0") and not cache.has("dir/k1") and cache.has("dir/k2")


def test_undecodable_names_are_scanned_evicted_and_printed(cache, capsys):
    objects, meta = os.fsencode(cache.layout.objects_dir), os.fsencode(cache.layout.meta_dir)
    os.makedirs(objects + b"/bkt/latin1-\xe9-dir")
    os.makedirs(meta + b"/bkt/latin1-\xe9-dir")
    bad = objects + b"/bkt/latin1-\xe9-dir/not-utf8-\xff.bin"
    with open(bad, "wb") as fh:
        fh.write(b"x" * 1000)
    with open(meta + b"/bkt/latin1-\xe9-dir/not-utf8-\xff.bin", "wb") as fh:
        fh.write(b"{}")
    os.utime(bad, ns=(ns_ago(100), ns_ago(200)))
    cache.put("fine.bin", atime_ns=ns_ago(1))
    assert run_once(cache.config(S3CACHE_MAX_BYTES="1999"), dry_run=False) == 0
    out = capsys.readouterr().out
    assert "removed object objects/bkt/latin1-\\xe9-dir/not-utf8-\\xff.bin (1000 bytes)" in out
    assert not os.path.exists(bad) and not os.path.exists(meta + b"/bkt/latin1-\xe9-dir")
    assert cache.has("fine.bin")


def test_permission_errors_skip_one_file_or_directory_not_the_pass(cache, monkeypatch):
    # Root ignores file modes, so the refusals are injected.
    cache.put("unreadable-dir/hidden", atime_ns=ns_ago(100))
    cache.put("undeletable-oldest", atime_ns=ns_ago(50))
    for i in range(5):
        cache.put(f"k{i}", atime_ns=ns_ago(10 - i))
    real_scandir, real_unlink = os.scandir, os.unlink
    unreadable = os.fsencode(cache.layout.objects_dir / "bkt" / "unreadable-dir")
    undeletable = os.fsencode(cache.layout.objects_dir / "bkt" / "undeletable-oldest")

    def scandir(path):
        if path == unreadable:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    def unlink(path, *a, **k):
        if path == undeletable:
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, *a, **k)
    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "unlink", unlink)
    s = cache.run(S3CACHE_MAX_BYTES="5999")
    assert s.scanned_files == 6 and s.errors == 2
    assert cache.has("undeletable-oldest") and not cache.has("k0") and not cache.has("k1")
    assert "errors=2 (first: " in s.line() and "Permission denied" in s.line()


# -- housekeeping --------------------------------------------------------------------------------


def _temp(cache: Cache, name: str, age: float) -> Path:
    p = cache.layout.tmp_dir / name
    p.write_bytes(b"partial body")
    os.utime(p, (NOW - age, NOW - age))
    return p


def test_temp_files_of_dead_fills_go_but_not_running_or_young_ones(cache):
    dead = _temp(cache, "dead-fill.part", 3600)
    dead_meta = _temp(cache, "dead-fill.meta.part", 3600)
    running = _temp(cache, "running-fill.part", 3600)        # old, but a fill holds its lock
    running_meta = _temp(cache, "running-fill.meta.part", 3600)  # no lock of its own: its .part's counts
    young = _temp(cache, "young-unlocked.part", 10)          # a fill may have opened it, not locked it yet
    not_ours = _temp(cache, "not-a-part-file.txt", 3600)
    fd = os.open(running, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        s = cache.run()
    finally:
        os.close(fd)
    assert s.temp_removed == 2
    assert not dead.exists() and not dead_meta.exists()
    assert running.exists() and running_meta.exists() and young.exists() and not_ours.exists()
    s = cache.run()  # the lock is gone now: so is the dead fill
    assert s.temp_removed == 2 and not running.exists() and not running_meta.exists()


def test_orphaned_metadata_goes_after_the_grace_period_only(cache):
    meta = cache.layout.meta_dir / "bkt"

    def meta_only(name: str, age: float) -> Path:
        p = meta / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
        os.utime(p, (NOW - age, NOW - age))
        return p
    orphan = meta_only("gone/orphaned-long-ago", 3600)
    mid_fill = meta_only("fill-between-meta-and-rename", 5)  # the fill renames its object in any moment
    cache.put("with-object", atime_ns=ns_ago(1))
    os.utime(cache.layout.meta_path(ObjectRef("bkt", "with-object")), (NOW - 3600, NOW - 3600))
    s = cache.run()
    assert s.orphan_meta_removed == 1 and not orphan.exists() and not (meta / "gone").exists()
    assert mid_fill.exists() and cache.has_meta("with-object")


def test_old_empty_directories_left_behind_are_pruned(cache):
    leftover = cache.layout.objects_dir / "bkt" / "left" / "behind"
    leftover.mkdir(parents=True)
    fresh = cache.layout.objects_dir / "bkt" / "fill-just-made-it"
    fresh.mkdir()
    os.utime(leftover, (NOW - 3600, NOW - 3600))
    os.utime(leftover.parent, (NOW - 3600, NOW - 3600))
    cache.run()
    assert not (cache.layout.objects_dir / "bkt" / "left").exists()
    assert fresh.exists() and (cache.layout.objects_dir / "bkt").exists()


# -- the report --------------------------------------------------------------------------------


def test_the_pass_line_and_the_run_files(cache):
    for i in range(4):
        cache.put(f"k{i}", atime_ns=ns_ago(4 - i))
    s = cache.run(S3CACHE_MAX_BYTES="3999")
    line = s.line()
    assert "\n" not in line
    for part in ("pass: scanned=4 files", "bytes_before=4000", "bytes_after=3000", "evicted=1 files/1000 bytes",
                 "usage=100.03%->75.02%", "duration="):
        assert part in line
    status = json.loads((cache.layout.run_dir / "evictor.json").read_text())
    assert {"finished_at", "scanned_files", "bytes_before", "bytes_after", "evicted_files", "evicted_bytes",
            "duration_seconds", "usage_percent_before", "usage_percent_after"} <= status.keys()
    assert status["finished_at"] == NOW and status["evicted_bytes"] == 1000
    passes = (cache.layout.run_dir / "evictor-passes.jsonl").read_text().splitlines()
    assert len(passes) == 1 and json.loads(passes[0]) == status


def test_the_passes_file_keeps_only_the_last_hundred(cache):
    for n in range(report.KEEP_PASSES + 5):
        report.write_pass(cache.layout, report.PassSummary(scanned_files=n))
    lines = (cache.layout.run_dir / "evictor-passes.jsonl").read_text().splitlines()
    assert len(lines) == report.KEEP_PASSES
    assert json.loads(lines[0])["scanned_files"] == 5 and json.loads(lines[-1])["scanned_files"] == 104


# -- the process -------------------------------------------------------------------------------------


def _evictor_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}
    return {**base, "PYTHONPATH": str(PROJECT), "PYTHONUNBUFFERED": "1", **env}


def test_the_process_refuses_a_bad_setting_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "evictor"], env=_evictor_env(S3CACHE_EVICT_HIGH="150"),
                          capture_output=True, text=True, timeout=30, cwd=PROJECT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "S3CACHE_EVICT_HIGH" in proc.stderr


def test_the_process_passes_on_schedule_and_stops_cleanly_on_sigterm(tmp_path):
    cache = Cache(tmp_path / "cache")
    cache.put("k0", atime_ns=ns_ago(1))
    proc = subprocess.Popen([sys.executable, "-m", "evictor"], cwd=PROJECT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=_evictor_env(S3CACHE_DIR=str(cache.root), S3CACHE_EVICT_INTERVAL="0.2"))
    try:
        lines = []
        deadline = time.monotonic() + 20
        while sum(ln.startswith("pass:") for ln in lines) < 2 and time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
        assert sum(ln.startswith("pass: scanned=1 files") for ln in lines) >= 2, lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read().strip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads((cache.layout.run_dir / "evictor.json").read_text())["scanned_files"] == 1


class PassLines:
    """The evictor process's ``pass:`` lines as they come (a reader thread: ``select`` on a buffered pipe would
    miss a line already read into the buffer along with the one before it)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("pass:"):
                self.lines.put(line)
        self.lines.put(None)  # the process ended

    def next(self, within: float) -> str | None:
        """The next pass line within ``within`` seconds, or None."""
        try:
            line = self.lines.get(timeout=within)
        except queue.Empty:
            return None
        assert line is not None, "the evictor ended"
        return line


@contextmanager
def evictor_process(**env: str) -> Iterator[PassLines]:
    """``python -m evictor`` with ``env``: its pass lines; stopped (SIGTERM, else killed) whatever the test did."""
    proc = subprocess.Popen([sys.executable, "-m", "evictor"], cwd=PROJECT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_evictor_env(**env))
    try:
        yield PassLines(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_fill_the_cap_refused_brings_the_next_pass_forward(tmp_path):
    """A refused fill is an object not cached until room is made: the process makes it at once, not an hour later."""
    cache = Cache(tmp_path / "cache")
    for i in range(10):
        cache.put(f"k{i}", atime_ns=ns_ago(10 - i))  # 10,000 bytes: 80% of the cap
    with evictor_process(S3CACHE_DIR=str(cache.root), S3CACHE_EVICT_INTERVAL="3600", S3CACHE_MAX_BYTES="12500",
                         S3CACHE_EVICT_HIGH="90", S3CACHE_EVICT_LOW="80") as passes:
        first = passes.next(30)
        assert first is not None and "evicted=0 files" in first, first
        ledger = CacheSize(cache.layout.cache_bytes_file)
        assert ledger.try_add(1000, 12500)  # 11,000 <= 12,500: room, no refusal
        assert not ledger.try_add(2000, 12500)  # 13,000 > 12,500: refused
        # The schedule's own next pass is an hour away; a refusal should bring one within a few ticks.
        second = passes.next(30)
        assert second is not None, "no pass within 30 s of a refused fill"
        assert "evicted=0 files" not in second, second
        # Room below LOW (10,000) with the refused 2,000 in: the oldest objects went.
        assert not cache.has("k0") and cache.has("k9")
        assert ledger.read().refused == 0  # the refusal is answered


def test_refusals_no_pass_can_answer_wait_for_the_schedule(tmp_path):
    """A refused fill that could not fit below LOW in an emptied cache gets one pass, not one a second for ever."""
    cache = Cache(tmp_path / "cache")
    cache.put("k0", atime_ns=ns_ago(1))
    with evictor_process(S3CACHE_DIR=str(cache.root), S3CACHE_EVICT_INTERVAL="3600", S3CACHE_MAX_BYTES="12500",
                         S3CACHE_EVICT_HIGH="90", S3CACHE_EVICT_LOW="80") as passes:
        assert passes.next(30) is not None  # the pass at start
        ledger = CacheSize(cache.layout.cache_bytes_file)
        assert not ledger.try_add(12_000, 12500)  # over the cap, and more than LOW (10,000) of it
        answered = passes.next(30)
        assert answered is not None and "evicted=0 files" in answered, answered  # tried once, nothing to gain
        assert cache.has("k0")
        assert not ledger.try_add(12_000, 12500)  # asked again, refused again
        assert passes.next(5) is None  # several ticks and gaps: no pass walks the cache for it again


def test_a_full_disk_that_refuses_state_writes_still_gets_its_eviction(cache, monkeypatch):
    for i in range(5):
        cache.put(f"k{i}", atime_ns=ns_ago(5 - i))
    cache.log(caddy_line("/bkt/k0", NOW))

    def enospc(*_a, **_k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("s3cache.atomic.write", enospc)
    s = cache.run(S3CACHE_MAX_BYTES="4999")
    assert s.evicted_files == 2 and cache.has("k0") and not cache.has("k1")
    # The cursor, the pass's status, the adaptive policy's state (S3CACHE_EVICT_POLICY=adaptive) and the next victims.
    assert s.errors == 4 and "No space left on device" in s.line()
