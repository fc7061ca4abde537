"""Issue 15 item 2: the sidecar answers from S3CACHE_SIDECAR_WORKERS processes, fills in a process of its own.

Which worker answers a connection is the kernel's choice; the tests make it
certain by stopping (SIGSTOP) the other worker, which then cannot accept.
Requests that must land on a chosen worker go to the sidecar's port directly,
one connection each: Caddy's kept-alive connection to a stopped worker would
only hang.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.fill_outcomes import fill_outcomes
from tests.stack import wait_until

pytestmark = pytest.mark.integration

BUCKET = "public-workers"


@pytest.fixture(autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)
    yield
    origin.clear_faults()  # the origin is shared by the whole session


def processes(stack) -> dict:
    """run/sidecar.json once it names a fill process and two request workers."""
    def read():
        try:
            state = json.loads(stack.layout.sidecar_file.read_text())
        except (OSError, ValueError):
            return None
        return state if state.get("fill_pid") and len(state.get("worker_pids") or []) == 2 else None
    return wait_until(read, timeout=30, what="run/sidecar.json to name the sidecar's processes")


def direct(stack, path: str, **kw) -> requests.Response:
    """One request on its own connection to the sidecar (not through Caddy)."""
    return requests.get(stack.sidecar_url + path, headers={"Connection": "close"}, allow_redirects=False,
                        timeout=30, **kw)


class Stopped:
    """SIGSTOP a process for the block's duration: it accepts no connection meanwhile."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


def snapshot(stack) -> dict:
    return direct(stack, "/_s3cache/stats.json").json()


def metric(stack, name: str) -> float:
    for line in direct(stack, "/_s3cache/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def socket_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets ``pid`` holds (its fds' inodes looked up in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_each_request_worker_answers_from_the_one_sidecar_address(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_SIDECAR_WORKERS="2")
    procs = processes(stack)
    a, b = procs["worker_pids"]
    assert procs["fill_pid"] not in (a, b)
    answered = {}
    for running, stopped in ((a, b), (b, a)):
        with Stopped(stopped):
            r = direct(stack, "/_s3cache/health")
            assert r.status_code == 200
            answered[running] = r.json()["parts"]["sidecar"]["answered_by"]
    assert answered == {a: a, b: b}
    # Health speaks for the whole sidecar, whichever worker answers.
    sidecar = direct(stack, "/_s3cache/health").json()["parts"]["sidecar"]
    assert (sidecar["workers"], sorted(sidecar["worker_pids"]), sidecar["fill_pid"]) == \
        (2, sorted([a, b]), procs["fill_pid"])


def test_misses_answered_by_different_workers_are_all_counted(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_SIDECAR_WORKERS="2", S3CACHE_ADMIT="first")
    procs = processes(stack)
    a, b = procs["worker_pids"]
    before = snapshot(stack)["sidecar_misses"]["fill"]
    sent = Counter()
    for worker, other, n in ((a, b, 7), (b, a, 5)):
        with Stopped(other):
            for i in range(n):
                assert direct(stack, f"/{BUCKET}/counted/{worker}-{i}.txt").status_code == 307
                sent[worker] += 1
    snap = snapshot(stack)
    assert snap["sidecar_misses"]["fill"] - before == 12
    assert snap["sidecar_workers"]["misses_by_pid"] == {str(a): 7, str(b): 5}
    assert snap["admission"]["admitted"] == 12
    assert metric(stack, "s3cache_sidecar_misses_total") == 12
    # Each miss queued a fill in the one fill process: 12 objects that do not exist, 12 failures counted.
    wait_until(lambda: fill_outcomes(stack)[("failed", "status-404")] == 12, timeout=60,
               what="the 12 fills to be counted")


def test_256_concurrent_first_requests_over_two_workers_fetch_the_object_once(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_SIDECAR_WORKERS="2", S3CACHE_ADMIT="first")
    processes(stack)
    key = "stampede/workers.bin"
    body = os.urandom(2_000_000)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    origin.reset()
    origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=2_000_000)  # ~1 s fill: the stampede lands during it
    url = stack.proxied(origin.presign(BUCKET, key))
    barrier = threading.Barrier(256)
    results = []

    def client():
        barrier.wait()
        results.append(requests.get(url, allow_redirects=False, timeout=60).status_code)

    threads = [threading.Thread(target=client) for _ in range(256)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 256 and set(results) <= {200, 307}
    stack.wait_cached(BUCKET, key)
    origin.clear_faults()
    gets = [r for r in origin.stats()["requests"] if r["method"] == "GET" and r["key"] == f"/{BUCKET}/{key}"]
    assert len(gets) == 1
    assert stack.object_file(BUCKET, key).read_bytes() == body
    by_worker = snapshot(stack)["sidecar_workers"]["misses_by_pid"]
    assert sum(by_worker.values()) == results.count(307)
    assert len(by_worker) == 2, by_worker  # both processes took part in the stampede


def test_fills_run_in_the_fill_process_and_redirects_answer_while_fills_are_stuck(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_SIDECAR_WORKERS="2", S3CACHE_ADMIT="first",
                       S3CACHE_FILL_WORKERS="2", S3CACHE_FILL_TIMEOUT="300")
    procs = processes(stack)
    s3 = origin.s3()
    stuck = [f"stuck/{i}.bin" for i in range(6)]
    for key in stuck:
        s3.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(100_000))
        origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=10)  # hours: stuck for the test's life
    origin.reset()
    for key in stuck:
        assert stack.get(stack.proxied(origin.presign(BUCKET, key))).status_code == 307

    def stuck_gets():
        return [r for r in origin.stats()["requests"] if r["method"] == "GET" and r["key"].startswith(f"/{BUCKET}/stuck/")]
    wait_until(lambda: len(stuck_gets()) == 2 and metric(stack, "s3cache_fills_in_progress") == 2, timeout=30,
               what="both fill workers to be stuck on slow objects")
    # The stuck fetches are the fill process's connections, not a request worker's.
    fill_ports = socket_ports(procs["fill_pid"])
    worker_ports = set().union(*(socket_ports(pid) for pid in procs["worker_pids"]))
    for r in stuck_gets():
        assert int(r["peer_port"]) in fill_ports and int(r["peer_port"]) not in worker_ports
    # Meanwhile every miss is still redirected (its fill queued behind the stuck ones).
    for i in range(40):
        r = stack.get(stack.proxied(origin.presign(BUCKET, f"fresh/{i}.txt")), timeout=10)
        assert r.status_code == 307
    snap = snapshot(stack)
    assert snap["fills"]["in_progress"] == 2 and len(stuck_gets()) == 2  # still stuck throughout
    assert snap["sidecar_misses"]["fill"] == 46


def test_a_killed_fill_process_or_worker_is_forked_again_and_fills_go_on(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_SIDECAR_WORKERS="2", S3CACHE_ADMIT="first")
    procs = processes(stack)
    s3 = origin.s3()
    os.kill(procs["fill_pid"], signal.SIGKILL)
    again = wait_until(lambda: (p := processes(stack))["fill_pid"] != procs["fill_pid"] and p, timeout=30,
                       what="a new fill process")
    assert again["worker_pids"] == procs["worker_pids"]
    for i in range(4):  # through both workers' kept connections to the channel, now to the new fill process
        s3.put_object(Bucket=BUCKET, Key=f"after-fill-kill/{i}.txt", Body=b"filled %d" % i)
        assert stack.get(stack.proxied(origin.presign(BUCKET, f"after-fill-kill/{i}.txt"))).status_code == 307
        stack.wait_cached(BUCKET, f"after-fill-kill/{i}.txt")
    victim = again["worker_pids"][0]
    os.kill(victim, signal.SIGKILL)
    last = wait_until(lambda: victim not in (p := processes(stack))["worker_pids"] and p, timeout=30,
                      what="a new request worker")
    for pid in last["worker_pids"]:
        other = next(p for p in last["worker_pids"] if p != pid)
        with Stopped(other):
            assert direct(stack, "/_s3cache/health").json()["parts"]["sidecar"]["answered_by"] == pid


def test_one_worker_is_the_single_process_of_before(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_SIDECAR_WORKERS="1", S3CACHE_ADMIT="first")
    state = json.loads(stack.layout.sidecar_file.read_text())
    sidecar = stack.part_pid("sidecar")
    assert (state["workers"], state["worker_pids"], state["fill_pid"]) == (1, [sidecar], sidecar)
    origin.s3().put_object(Bucket=BUCKET, Key="single.txt", Body=b"one process")
    assert stack.get(stack.proxied(origin.presign(BUCKET, "single.txt"))).status_code == 307
    stack.wait_cached(BUCKET, "single.txt")
    snap = snapshot(stack)
    assert snap["sidecar_misses"]["fill"] == 1 and snap["sidecar_workers"]["misses_by_pid"] == {str(sidecar): 1}
    assert direct(stack, "/_s3cache/health").json()["parts"]["sidecar"]["answered_by"] == sidecar


def test_the_fill_queue_bound_is_the_whole_sidecars(origin, make_stack):
    """1024 fills wait at most, however many workers queue them: a bound per worker would drop none here."""
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_SIDECAR_WORKERS="2", S3CACHE_ADMIT="first",
                       S3CACHE_FILL_WORKERS="1", S3CACHE_FILL_TIMEOUT="300")
    a, b = processes(stack)["worker_pids"]
    origin.s3().put_object(Bucket=BUCKET, Key="queue/stuck.bin", Body=os.urandom(100_000))
    origin.fault(f"/{BUCKET}/queue/stuck.bin", "slow", bytes_per_sec=10)
    with Stopped(b):
        assert direct(stack, f"/{BUCKET}/queue/stuck.bin").status_code == 307
    wait_until(lambda: metric(stack, "s3cache_fills_in_progress") == 1, timeout=30, what="the one fill worker to be stuck")
    for worker, other, keys in ((a, b, range(0, 520)), (b, a, range(520, 1029))):
        with Stopped(other):
            for i in keys:
                assert direct(stack, f"/{BUCKET}/queue/{i}.bin").status_code == 307
    snap = snapshot(stack)
    assert snap["sidecar_workers"]["misses_by_pid"] == {str(a): 521, str(b): 509}
    # The stuck fill and 1023 queued behind it: 1024 in all; the other 6 misses were only redirected.
    assert snap["fills"]["other_outcomes"].get("dropped:queue-full") == 6
    assert snap["fills"]["in_progress"] == 1


def test_redirects_never_wait_for_the_fill_process_and_health_says_when_it_is_stuck(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_SIDECAR_WORKERS="2", S3CACHE_ADMIT="first")
    procs = processes(stack)
    with Stopped(procs["fill_pid"]):
        for i in range(30):
            assert direct(stack, f"/{BUCKET}/frozen/{i}.bin").status_code == 307
        r = direct(stack, "/_s3cache/health")
        assert r.status_code == 503
        assert any("fill process not answering" in reason for reason in r.json()["reasons"]), r.json()
    # Nothing was lost meanwhile: the fill process reads what the workers wrote while it was stopped.
    wait_until(lambda: direct(stack, "/_s3cache/health").status_code == 200, timeout=30, what="health to recover")
    assert snapshot(stack)["sidecar_misses"]["fill"] == 30
    wait_until(lambda: fill_outcomes(stack)[("failed", "status-404")] == 30, timeout=60, what="the 30 fills")
