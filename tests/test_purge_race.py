"""A purge racing a fill of the same object leaves either nothing or the new complete object with its
metadata: never half an object, never an object without its metadata, never metadata or a mark without
its object (s3cache/entries.py's lock, held by the fill until its metadata and marks are in place).

Real fills (sidecar/fill.py) and real purges, in threads of one process (each takes the lock through
its own open file, as separate processes do), against an upstream stub that answers at once but drips
the body; the fill's last steps are slowed at random to widen the windows a purge could slip into.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time

import pytest

from s3cache import entries, objectlock
from s3cache.layout import MARK_KINDS, Layout, ObjectRef
from sidecar.fill import Filler

ROUNDS = 150


class _Response:
    def __init__(self, body: bytes, rng: random.Random):
        self.status = 200
        self.headers = {"Content-Length": str(len(body)), "ETag": f'"{hashlib.md5(body).hexdigest()}"',
                        "Content-Type": "application/x-test", "Content-Disposition": "attachment",
                        "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"}
        self._body = io.BytesIO(body)
        self._rng = rng

    def read1(self, n: int, decode_content: bool = False) -> bytes:
        time.sleep(self._rng.uniform(0, 0.001))
        return self._body.read(min(n, 8192))

    def read(self, n: int = -1, decode_content: bool = False) -> bytes:
        return self._body.read(n)

    def close(self) -> None:
        pass


class _Upstream:
    def __init__(self, body: bytes, rng: random.Random):
        self.body, self.rng = body, rng

    def request(self, method, url, **kw):
        return _Response(self.body, self.rng)


def _state(layout: Layout, ref: ObjectRef) -> tuple:
    obj, meta = layout.object_path(ref), layout.meta_path(ref)
    marks = [layout.mark_path(ref, k).exists() for k in MARK_KINDS]
    return (obj.read_bytes() if obj.exists() else None, meta.read_text() if meta.exists() else None, marks)


def _check(layout: Layout, ref: ObjectRef, body: bytes, round_no: int) -> str:
    data, meta, marks = _state(layout, ref)
    if data is None:
        assert meta is None and not any(marks), f"round {round_no}: metadata or a mark without its object"
        return "nothing"
    assert data == body, f"round {round_no}: a partial or old object"
    assert meta is not None and f'"size": {len(body)}' in meta, f"round {round_no}: an object without its metadata"
    assert marks == [k == "headers" for k in MARK_KINDS], f"round {round_no}: the object's mark is missing"
    return "object"


@pytest.mark.parametrize("replace", [False, True], ids=["fill", "refresh"])
def test_a_purge_racing_a_fill_leaves_nothing_or_the_complete_object(tmp_path, monkeypatch, replace):
    rng = random.Random(1234 + replace)
    layout = Layout(tmp_path / "cache")
    layout.ensure()
    ref = ObjectRef("race-bucket", "dir/object.bin")
    old, body = b"old" * 1000, bytes(rng.getrandbits(8) for _ in range(40_000))
    filler = Filler(layout, workers=1, timeout=10, max_object_bytes=None, upstream=_Upstream(body, rng))

    # Slow the fill's last steps at random: the windows between its object's rename and its metadata.
    for name in ("_write_meta", "_unmark"):
        original = getattr(Filler, name)

        def slowed(self, *a, _original=original, **kw):
            time.sleep(rng.uniform(0, 0.003))
            return _original(self, *a, **kw)
        monkeypatch.setattr(Filler, name, slowed)

    seen = {"nothing": 0, "object": 0}
    for round_no in range(ROUNDS):
        if replace:  # an older copy is cached: the fill refreshes it from an open response
            obj = layout.object_path(ref)
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(old)
        results = {}

        def fill():
            time.sleep(rng.uniform(0, 0.008))
            response = _Response(body, rng) if replace else None
            results["fill"] = filler.fill(ref, "http://upstream.invalid/race-bucket/dir/object.bin",
                                          response=response).outcome

        def purge():
            time.sleep(rng.uniform(0, 0.012))
            results["purge"] = entries.remove(layout, ref, wait=10).outcome

        threads = [threading.Thread(target=fill), threading.Thread(target=purge)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        # A fill that meets the purge holding the lock leaves the object to a later miss ("busy").
        assert results["fill"] in ("filled", "busy"), results
        assert results["purge"] in ("removed", "absent"), results
        outcome = _check(layout, ref, body, round_no)
        assert outcome == "nothing" or results["fill"] == "filled", results
        seen[outcome] += 1
        assert not list(layout.tmp_dir.iterdir()), f"round {round_no}: temp files left behind"
        entries.remove(layout, ref)  # start the next round from nothing
    # Both orders happened (a purge before the fill's end, and one after it): the race was run.
    assert seen["nothing"] > 0 and seen["object"] > 0, seen


def test_a_purge_waits_for_a_running_fill_and_removes_what_it_stored(tmp_path):
    layout = Layout(tmp_path / "cache")
    layout.ensure()
    ref = ObjectRef("race-bucket", "held.bin")
    tmp = str(layout.temp_path(ref))
    fd = objectlock.try_lock(tmp)  # as a fill holds it
    assert fd is not None
    assert entries.remove(layout, ref, wait=0.2).outcome == "busy"
    obj = layout.object_path(ref)
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"stored by the fill")
    threading.Timer(0.3, objectlock.release, (fd, tmp)).start()
    removal = entries.remove(layout, ref, wait=10)
    assert (removal.outcome, removal.bytes) == ("removed", len(b"stored by the fill"))
    assert not obj.exists() and not list(layout.tmp_dir.iterdir())
