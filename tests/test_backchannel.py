"""Units of ``sidecar.backchannel``: the request workers' line protocol to the fill process."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from s3cache.layout import ObjectRef
from sidecar import backchannel
from sidecar.fill import DiskFailure, FillResult
from tests.stack import wait_until


class _Filler:
    def __init__(self):
        self.jobs, self.results, self.disk, self.in_progress = [], [], None, 0

    def submit(self, ref, url, sign=None):
        self.jobs.append((ref, url))

    def _record(self, result):
        self.results.append(result)

    def _disk_failed(self, disk):
        self.disk = disk

    def running(self, delta):
        self.in_progress += delta

    def state(self):
        return self.in_progress, self.disk


class _Collector:
    def __init__(self):
        self.misses = []

    def count_miss(self, fill_queued, pid=None):
        self.misses.append((fill_queued, pid))


class _Admission:
    def __init__(self):
        self.decisions = []

    def count(self, ok):
        self.decisions.append(ok)


@pytest.fixture
def server():
    name = backchannel.address()
    listener = backchannel.listen(name)
    filler, collector, admission = _Filler(), _Collector(), _Admission()
    status = SimpleNamespace(collector=collector, snapshot=lambda: {"misses": len(collector.misses)})
    fs = backchannel.FillServer(listener, filler, status, admission)
    threading.Thread(target=fs.run, daemon=True).start()
    yield SimpleNamespace(name=name, filler=filler, collector=collector, admission=admission)
    listener.close()


def test_events_reach_the_fill_process_and_a_question_counts_every_event_sent_before_it(server):
    link = backchannel.BackLink(server.name)
    with link.held():  # one miss: its decision, its count and its job in one write
        link.send({"t": "admit", "ok": True})
        link.send({"t": "miss", "fill": True})
        link.send({"t": "fill", "b": "bkt", "k": "k\udcff é", "u": "http://s3/bkt/k%FF%20%C3%A9?X=1"})
    for _ in range(200):
        link.send({"t": "miss", "fill": False})
    assert link.query("snapshot") == {"misses": 201}  # no waiting: every line sent before is read first
    assert server.filler.jobs == [(ObjectRef("bkt", "k\udcff é"), "http://s3/bkt/k%FF%20%C3%A9?X=1")]
    assert server.admission.decisions == [True]
    assert {pid for _, pid in server.collector.misses} == {__import__("os").getpid()}


def test_outcomes_disk_failures_and_running_refreshes_are_the_fill_processes(server):
    link = backchannel.BackLink(server.name)
    filler = backchannel.RemoteFiller.__new__(backchannel.RemoteFiller)
    filler.link = link
    filler._record(FillResult("failed", "status-404"))
    filler._disk_failed(DiskFailure("disk-full", "no space", 10, 1.0))
    link.send({"t": "running", "d": 1})
    assert filler.state() == (1, DiskFailure("disk-full", "no space", 10, 1.0))
    assert server.filler.results == [FillResult("failed", "status-404")]
    # A worker that goes away mid-refresh no longer counts as running.
    link._sock.close()
    link._sock = None
    wait_until(lambda: server.filler.in_progress == 0, what="the closed connection's refresh to be uncounted")


def test_a_bad_line_is_skipped_and_the_loop_goes_on(server):
    link = backchannel.BackLink(server.name)
    link._write(b"not json\n")
    link._write(b'{"t": "no such kind"}\n')
    link._write(b'{"t": "fill"}\n')
    link.send({"t": "miss", "fill": True})
    assert link.query("snapshot") == {"misses": 1}


def test_no_fill_process_is_an_oserror_for_questions_and_false_for_events():
    link = backchannel.BackLink(backchannel.address())  # nothing listens there
    assert link.send({"t": "miss", "fill": True}) is False
    with pytest.raises(OSError):
        link.query("fills")
