"""The cache's live size (status page, metrics, stats.json): the last eviction pass's measure plus every
fill and removal since (s3cache/sizelog.py), whichever process made them, and never a walk of the cache
per page view.  Real fills (sidecar/fill.py with an upstream stub), real purges (s3cache/entries.py),
the real collector."""

from __future__ import annotations

import json
import os
import random

import pytest
from hypothesis import given, strategies as st

from s3cache import entries, sizelog
from s3cache.config import Config
from s3cache.layout import Layout, ObjectRef
from sidecar import metrics
from sidecar.collector import Collector
from sidecar.fill import Filler
from sidecar.status_page import render
from tests.test_purge_race import _Response, _Upstream


class IdleFiller:
    def stats(self):
        return {"in_progress": 0, "outcomes": {}, "bytes_filled": 0, "durations": []}


def write_passes(layout: Layout, *passes: dict) -> None:
    with open(layout.evictor_passes_file, "a", encoding="utf-8") as fh:
        for p in passes:
            fh.write(json.dumps({"dry_run": False, "evicted_files": 0, "evicted_bytes": 0, **p}) + "\n")


def fill(layout: Layout, key: str, body: bytes) -> None:
    filler = Filler(layout, workers=1, timeout=10, max_object_bytes=None, upstream=_Upstream(body, random.Random(1)))
    assert filler.fill(ObjectRef("live-bkt", key), f"http://upstream.invalid/live-bkt/{key}").outcome == "filled"


def true_size(layout: Layout) -> tuple[int, int]:
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(layout.objects_dir) for f in fs]
    return sum(sizes), len(sizes)


@pytest.fixture
def layout(tmp_path):
    lay = Layout(tmp_path / "cache")
    lay.ensure()
    return lay


def collector(layout: Layout) -> Collector:
    return Collector(Config.from_env({"S3CACHE_DIR": str(layout.root)}), layout, IdleFiller())


def live(c: Collector) -> tuple[int, int]:
    disk = c.snapshot()["disk"]
    return disk["cache_bytes"], disk["cache_files"]


def test_fills_purges_and_passes_add_up_without_a_walk(layout, monkeypatch):
    c = collector(layout)
    assert live(c) == (None, None)  # no pass yet: unknown, not zero
    write_passes(layout, {"started_at": 100.0, "finished_at": 101.0, "scanned_files": 0, "bytes_after": 0})
    assert live(c) == (0, 0)

    # Any listing of the cache's trees during a page view fails the test (logs/ may be listed: rolled logs).
    walking = {"scandir": os.scandir, "listdir": os.listdir, "walk": os.walk}
    trees = tuple(os.fsencode(d) for d in (layout.objects_dir, layout.meta_dir, layout.marks_dir))

    def guarded(name):
        def listing(path=".", *a, **kw):
            if os.fsencode(os.path.abspath(path)).startswith(trees):
                raise AssertionError(f"the status snapshot walked the cache ({name} {path!r})")
            return walking[name](path, *a, **kw)
        return listing
    for name in walking:
        monkeypatch.setattr(os, name, guarded(name))

    def settle(*steps):
        monkeypatch.undo()  # fills and purges may list directories; only the snapshot may not
        for step in steps:
            step()
        for name in walking:
            monkeypatch.setattr(os, name, guarded(name))

    with pytest.raises(AssertionError, match="walked the cache"):  # the guard itself works
        os.scandir(layout.objects_dir)
    settle(lambda: fill(layout, "a", b"a" * 1000), lambda: fill(layout, "d/b", b"b" * 300))
    assert live(c) == (1300, 2)
    settle(lambda: entries.remove(layout, ObjectRef("live-bkt", "a")))
    assert live(c) == (300, 1)
    # A refresh replaces in place: the difference only.
    filler = Filler(layout, workers=1, timeout=10, max_object_bytes=None,
                    upstream=_Upstream(b"B" * 700, random.Random(2)))
    settle(lambda: filler.fill(ObjectRef("live-bkt", "d/b"), "http://upstream.invalid/live-bkt/d/b",
                               response=_Response(b"B" * 700, random.Random(3))))
    assert live(c) == (700, 1)
    monkeypatch.undo()
    assert true_size(layout) == (700, 1)
    page = render(c.snapshot())
    assert 'data-key="cache_size" data-value="700"' in page
    text = metrics.render(c.snapshot())
    assert "s3cache_cache_bytes 700" in text and "s3cache_cache_files 1" in text


def test_a_new_pass_is_the_new_base_and_the_figure_survives_a_restart(layout):
    write_passes(layout, {"started_at": 100.0, "finished_at": 101.0, "scanned_files": 0, "bytes_after": 0})
    fill(layout, "a", b"a" * 1000)
    fill(layout, "b", b"b" * 10)
    c = collector(layout)
    assert live(c) == (1010, 2)
    # The evictor measured 1010 bytes (a pass that started after those fills) and evicted "a".
    entries.remove_files(layout.object_path(ObjectRef("live-bkt", "a")), layout.meta_path(ObjectRef("live-bkt", "a")))
    import time
    now = time.time()
    write_passes(layout, {"started_at": now, "finished_at": now + 0.1, "scanned_files": 2, "evicted_files": 1,
                          "evicted_bytes": 1000, "bytes_after": 10})
    assert sizelog.rotate(layout, max_bytes=0)  # as the evictor does after a pass: changes since go to a new file
    assert live(c) == (10, 1) == true_size(layout)
    fill(layout, "c", b"c" * 5)
    assert sizelog.rotate(layout, max_bytes=0, min_seconds=0)  # one between two reads loses and repeats nothing
    fill(layout, "d", b"d" * 7)
    assert live(c) == (22, 3) == true_size(layout)
    # A sidecar started now (a restart) reads the same from run/.
    assert live(collector(layout)) == (22, 3)


def test_a_change_journaled_by_another_process_counts(layout, tmp_path):
    """``s3cache purge`` with the sidecar running, or ``s3cache warm``: only the journal tells the sidecar."""
    import subprocess
    import sys
    write_passes(layout, {"started_at": 100.0, "finished_at": 101.0, "scanned_files": 0, "bytes_after": 0})
    fill(layout, "x", b"x" * 64)
    c = collector(layout)
    assert live(c) == (64, 1)
    env = {**os.environ, "S3CACHE_DIR": str(layout.root), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "commands.main", "purge", "live-bkt/x"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "removed live-bkt/x (64 bytes)" in done.stdout
    assert live(c) == (0, 0)


@given(st.lists(st.sampled_from(["record", "rotate", "read"]), max_size=40))
def test_the_tally_counts_every_change_once_across_rotations(tmp_path_factory, ops):
    layout = Layout(tmp_path_factory.mktemp("tally") / "cache")
    layout.ensure()
    tally = sizelog.Tally(layout)
    expected = n = rotations = 0
    for op in ops:
        if op == "record":
            n += 1
            sizelog.record(layout, n, 1, "fill")
            expected += n
        elif op == "rotate":
            rotations += sizelog.rotate(layout, max_bytes=0)
        else:
            tally.read()
    tally.read()
    assert rotations <= 1  # at most one a minute: nothing a reader knew is gone before it reads again
    assert (tally.bytes, tally.files) == (expected, n)
    reread = sizelog.Tally(layout)  # a restart reads the same
    reread.read()
    assert (reread.bytes, reread.files) == (expected, n)
