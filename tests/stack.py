"""Run the real s3cache stack (`s3cache up`: Caddy + sidecar + evictor) on 127.0.0.1 for tests."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from s3cache.layout import Layout, ObjectRef

BIN = Path(sys.executable).parent

# A test stack's cache shares this machine's disk, and the evictor acts on the disk's used percent:
# with the default watermarks a 93%-full disk would evict the test's objects.  A HIGH of 100% is
# never exceeded by a disk, so these stacks evict only what a test asks for (its own watermarks,
# with S3CACHE_MAX_BYTES or a small filesystem of its own).
DETERMINISTIC_EVICTION = {"S3CACHE_EVICT_HIGH": "100", "S3CACHE_EVICT_LOW": "99"}


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 below the kernel's ephemeral range.

    Not port 0's pick: that comes from the ephemeral range, from which every outgoing connection also
    takes its local port, so one of the suite's thousands of client connections could hold it by the
    time the stack binds it ("already in use"). Below the range only listeners take ports.
    """
    low = 10000
    for _ in range(1000):
        port = random.randrange(low, max(low + 1, _EPHEMERAL_LOW))
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Stack:
    def __init__(self, workdir: Path, upstream: str, **env: str):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.sidecar_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sidecar_url = f"http://127.0.0.1:{self.sidecar_port}"
        self.cache_dir = Path(env.get("S3CACHE_DIR") or self.workdir / "cache")
        self.layout = Layout(self.cache_dir)
        self.upstream = upstream
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")},
            "S3CACHE_UPSTREAM": upstream,
            "S3CACHE_LISTEN": f"127.0.0.1:{self.port}",
            "S3CACHE_SIDECAR_LISTEN": f"127.0.0.1:{self.sidecar_port}",
            "S3CACHE_DIR": str(self.cache_dir),
            "HOME": str(self.workdir),
            **DETERMINISTIC_EVICTION,
            **env,
        }
        self.log_path = self.workdir / "stack.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Stack":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(BIN / "s3cache"), "up"], env=self.env, cwd=self.workdir, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"s3cache up exited ({self.proc.returncode}):\n{self.log_text()}")
            try:
                return requests.get(self.url + "/_s3cache/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False
        wait_until(healthy, timeout, what="the stack to become healthy")

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()
        return self.proc.returncode if self.proc else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def part_pid(self, name: str) -> int:
        parts = json.loads((self.layout.run_dir / "parts.json").read_text())["parts"]
        return parts[name]["pid"]

    # -- helpers for tests ----------------------------------------------------------

    def proxied(self, url: str) -> str:
        """The user's move: swap the S3 host for the proxy's."""
        assert url.startswith(self.upstream), url
        return self.url + url[len(self.upstream):]

    def object_file(self, bucket: str, key: str) -> Path:
        return self.layout.object_path(ObjectRef(bucket, key))

    def wait_cached(self, bucket: str, key: str, timeout: float = 10.0) -> Path:
        path = self.object_file(bucket, key)
        wait_until(path.is_file, timeout, what=f"{bucket}/{key} to be cached")
        return path

    def stats(self) -> dict:
        """The sidecar's snapshot (``/_s3cache/stats.json``); its fill counters are live."""
        resp = requests.get(self.url + "/_s3cache/stats.json", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def fills_finished(self) -> int:
        """Fills (background or streamed) that have ended, filled or failed: evidence that one is over."""
        fills = self.stats()["fills"]
        return fills["filled"] + fills["failed"]

    def wait_fills_settled(self, before: dict, timeout: float = 10.0) -> dict:
        """Wait until every fill the sidecar queued since ``before`` (an earlier ``stats()``) has ended.

        Positive evidence that nothing more will be written, where a test would otherwise sleep and
        then check that nothing happened.  Counts misses that queued a fill against fill outcomes
        (filled, failed, busy, cached, dropped), so it assumes no two misses of one object overlap.
        """
        def ended(snap: dict) -> int:
            fills = snap["fills"]
            return fills["filled"] + fills["failed"] + sum(fills["other_outcomes"].values())

        def settled():
            snap = self.stats()
            queued = snap["sidecar_misses"]["fill"] - before["sidecar_misses"]["fill"]
            return snap if ended(snap) - ended(before) >= queued and snap["fills"]["in_progress"] == 0 else None
        return wait_until(settled, timeout, what="the fills queued meanwhile to end")

    def get(self, url: str, **kw) -> requests.Response:
        """GET through the proxy without following redirects; the URL is sent exactly as given."""
        return raw_request("GET", url, **kw)


def raw_request(method: str, url: str, headers: dict | None = None, timeout: float = 10) -> requests.Response:
    """Send ``url`` byte for byte: requests would otherwise re-quote the path and query."""
    session = requests.Session()
    req = requests.Request(method, url, headers=headers or {}).prepare()
    req.url = url
    return session.send(req, allow_redirects=False, timeout=timeout)


class FrontStack(Stack):
    """The front tier (`s3cache up --front`: Caddy alone) on 127.0.0.1, sharding object paths across ``nodes``.

    Its S3CACHE_DIR holds only run/ (the supervisor's status and Caddy's private HOME).
    """

    def __init__(self, workdir: Path, upstream: str, nodes: list[Stack], **env: str):
        node_list = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
        super().__init__(workdir, upstream, **{"S3CACHE_NODES": node_list, **env})
        self.nodes = nodes

    def start(self, timeout: float = 60.0) -> "FrontStack":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(BIN / "s3cache"), "up", "--front"], env=self.env, cwd=self.workdir, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_healthy(timeout)
        return self
