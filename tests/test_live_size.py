"""The cache's live size (status page, metrics, stats.json): one record, ``run/cache-bytes``
(s3cache/ledger.py), which each eviction pass sets from its measure and every fill and removal since
changes, whichever process made them; never a walk of the cache per page view.  Real fills
(sidecar/fill.py with an upstream stub), real purges (s3cache/entries.py), real passes (evictor/run.py),
the real collector."""

from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from evictor.run import run_pass
from s3cache import entries
from s3cache.config import Config
from s3cache.layout import Layout, ObjectRef
from s3cache.usage import FsUsage
from sidecar import metrics
from sidecar.collector import Collector
from sidecar.fill import Filler
from sidecar.status_page import render
from tests.test_purge_race import _Response, _Upstream

BUCKET = "live-bkt"


class IdleFiller:
    def stats(self):
        return {"in_progress": 0, "outcomes": {}, "bytes_filled": 0, "durations": []}


def fill(layout: Layout, key: str, body: bytes) -> None:
    """A miss's fill, or a refresh (the new body replaces the old in place) when ``key`` is cached."""
    filler = Filler(layout, workers=1, timeout=10, max_object_bytes=None, upstream=_Upstream(body, random.Random(1)))
    ref = ObjectRef(BUCKET, key)
    refresh = _Response(body, random.Random(2)) if layout.object_path(ref).exists() else None
    assert filler.fill(ref, f"http://upstream.invalid/{BUCKET}/{key}", response=refresh).outcome == "filled"


def purge(layout: Layout, key: str) -> None:
    assert entries.remove(layout, ObjectRef(BUCKET, key)).outcome in ("removed", "absent")


def measure(layout: Layout, max_bytes: int | None = None) -> None:
    """One real eviction pass (on an empty disk: only S3CACHE_MAX_BYTES, if any, makes it evict)."""
    env = {"S3CACHE_DIR": str(layout.root), **({"S3CACHE_MAX_BYTES": str(max_bytes)} if max_bytes else {})}
    run_pass(Config.from_env(env), usage=lambda: FsUsage(used=0, avail=1 << 40))


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
    fill(layout, "early", b"e" * 50)
    assert live(c) == (None, None)  # a fill before the first pass does not make a figure ...
    measure(layout)
    assert live(c) == (50, 1)       # ... the pass does
    purge(layout, "early")
    assert live(c) == (0, 0)
    assert c.snapshot()["disk"]["changes_since_pass"] == 1

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
    settle(lambda: purge(layout, "a"))
    assert live(c) == (300, 1)
    settle(lambda: fill(layout, "d/b", b"B" * 700))  # a refresh replaces in place: the difference only
    assert live(c) == (700, 1)
    assert c.snapshot()["disk"]["changes_since_pass"] == 5
    monkeypatch.undo()
    assert true_size(layout) == (700, 1)
    page = render(c.snapshot())
    assert 'data-key="cache_size" data-value="700"' in page
    text = metrics.render(c.snapshot())
    assert "s3cache_cache_bytes 700" in text and "s3cache_cache_files 1" in text


def test_a_new_pass_is_the_new_base_and_the_figure_survives_a_restart(layout):
    measure(layout)
    fill(layout, "a", b"a" * 1000)
    fill(layout, "b", b"b" * 10)
    c = collector(layout)
    assert live(c) == (1010, 2)
    # Removed behind the ledger's back (as a crash between unlink and count would): the next pass measures.
    entries.remove_files(layout.object_path(ObjectRef(BUCKET, "a")), layout.meta_path(ObjectRef(BUCKET, "a")))
    assert live(c) == (1010, 2)
    measure(layout)
    assert live(c) == (10, 1) == true_size(layout)
    assert c.snapshot()["disk"]["changes_since_pass"] == 0
    fill(layout, "c", b"c" * 5)
    fill(layout, "d", b"d" * 7)
    assert live(c) == (22, 3) == true_size(layout)
    # A sidecar started now (a restart) reads the same from run/.
    assert live(collector(layout)) == (22, 3)


def test_a_change_another_process_made_counts(layout, tmp_path):
    """``s3cache purge`` with the sidecar running, or ``s3cache warm``: the ledger tells the sidecar."""
    measure(layout)
    fill(layout, "x", b"x" * 64)
    c = collector(layout)
    assert live(c) == (64, 1)
    env = {**os.environ, "S3CACHE_DIR": str(layout.root), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "commands.main", "purge", f"{BUCKET}/x"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "removed live-bkt/x (64 bytes)" in done.stdout
    assert live(c) == (0, 0)


KEYS = ("k0", "k1", "d/k2", "d/e/k3")
_FORK = multiprocessing.get_context("fork")


def _elsewhere(step, *args) -> None:
    """Run ``step`` in another process, as ``s3cache warm``, ``s3cache purge`` or the evictor would."""
    child = _FORK.Process(target=step, args=args)
    child.start()
    child.join(60)
    assert child.exitcode == 0


steps = st.one_of(
    st.tuples(st.just("fill"), st.sampled_from(KEYS), st.integers(1, 3000), st.booleans()),
    st.tuples(st.just("purge"), st.sampled_from(KEYS), st.none(), st.booleans()),
    st.tuples(st.just("pass"), st.none(), st.sampled_from([None, 1500, 4000]), st.booleans()),  # cap, if any
)


@settings(max_examples=60, deadline=None)
@given(st.lists(steps, max_size=12))
def test_once_a_pass_has_measured_the_live_size_is_the_size_on_disk(tmp_path_factory, ops):
    layout = Layout(tmp_path_factory.mktemp("live") / "cache")
    layout.ensure()
    c = collector(layout)
    measured = False
    for kind, key, arg, in_another_process in ops:
        step, args = {"fill": (fill, (layout, key, b"x" * (arg or 1))), "purge": (purge, (layout, key)),
                      "pass": (measure, (layout, arg))}[kind]
        if in_another_process:
            _elsewhere(step, *args)
        else:
            step(*args)
        measured = measured or kind == "pass"
        assert live(c) == (true_size(layout) if measured else (None, None)), (kind, key, arg)
    assert live(collector(layout)) == live(c)  # a restart reads the same
