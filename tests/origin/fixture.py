"""Start and drive the test origin from pytest.

``start_origin(tmp_path)`` runs ``python -m tests.origin`` as a subprocess
(same interpreter, cwd = repo root, 127.0.0.1 only) and returns an
``Origin`` handle: boto3 client for setup, presigning, stats, faults, stop.
State is moto's in-memory backend inside that one process, so a fresh origin
is a fresh S3. The caller owns stopping it, e.g.::

    @pytest.fixture
    def origin(tmp_path):
        o = start_origin(tmp_path)
        yield o
        o.stop()
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

from .credentials import ACCESS_KEY_1, ADMIN_ACCESS_KEY, ADMIN_SECRET_KEY, CREDENTIALS, REGION

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "s3cache test origin listening on "
_SIGNATURE_VERSIONS = {"v2": "s3", "v4": "s3v4"}


class Origin:
    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path
        self._http = requests.Session()
        self._clients: dict[tuple[str, str, str], Any] = {}
        # A test that forgets stop() must not leave a server behind.
        atexit.register(self.stop)

    def s3(self, access_key: str = ADMIN_ACCESS_KEY, secret: str = ADMIN_SECRET_KEY,
           version: str = "v4") -> Any:
        """A boto3 S3 client for setup (its Authorization header bypasses the checks).

        Clients are cached per (access_key, secret, version): making one costs
        tens of milliseconds.
        """
        cache_key = (access_key, secret, version)
        if cache_key not in self._clients:
            self._clients[cache_key] = boto3.client(
                "s3", endpoint_url=self.url, region_name=REGION,
                aws_access_key_id=access_key, aws_secret_access_key=secret,
                config=Config(signature_version=_SIGNATURE_VERSIONS[version],
                              s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
            )
            # waitress never answers "Expect: 100-continue" on a zero-length body
            # (boto3 sends it for every PutObject), so an empty object could not be put.
            self._clients[cache_key].meta.events.register("before-send.s3", _drop_expect_continue)
        return self._clients[cache_key]

    def presign(self, bucket: str, key: str, version: str = "v4", expires: int = 3600,
                access_key: str = ACCESS_KEY_1, secret: str | None = None,
                params: dict[str, Any] | None = None, method: str = "get_object") -> str:
        """A URL presigned by botocore ("v2" = signature_version "s3", "v4" = "s3v4").

        secret defaults to access_key's secret in the origin's table; params
        are extra operation parameters, e.g. {"ResponseContentType": "text/plain"}.
        """
        if secret is None:
            secret = CREDENTIALS[access_key]
        client = self.s3(access_key, secret, version)
        return client.generate_presigned_url(
            method, Params={"Bucket": bucket, "Key": key, **(params or {})}, ExpiresIn=expires)

    def ensure_bucket(self, name: str) -> str:
        """Create ``name`` unless a test module earlier in the session did; returns it."""
        s3 = self.s3()
        try:
            s3.create_bucket(Bucket=name)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def stats(self) -> dict[str, Any]:
        return self._control("GET", "stats")

    def reset(self) -> None:
        self._control("POST", "reset")

    def fault(self, path: str, kind: str, once: bool = False, **options: Any) -> dict[str, Any]:
        """Arm a fault for GETs of the decoded "/bucket/key" path.

        kind: "slow" (bytes_per_sec=N), "truncate", "bad_etag", "status" (status=N).
        """
        return self._control("POST", "fault", json={"path": path, "kind": kind, "once": once, **options})

    def clear_faults(self) -> None:
        self._control("DELETE", "fault")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def _control(self, method: str, name: str, **kwargs: Any) -> dict[str, Any]:
        resp = self._http.request(method, f"{self.url}/_origin/{name}", timeout=10, **kwargs)
        resp.raise_for_status()
        return resp.json()


def start_origin(tmp_path: Path, timeout: float = 30.0) -> Origin:
    """Start an origin on a free 127.0.0.1 port and wait until it answers."""
    log_path = Path(tmp_path) / "origin.log"
    out_path = Path(tmp_path) / "origin.out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out_path, "wb") as out, open(log_path, "wb") as log:
        # --port 0: the server binds first and then reports its port, so no
        # other process can grab a port between choosing and binding it.
        proc = subprocess.Popen([sys.executable, "-m", "tests.origin", "--port", "0"],
                                cwd=REPO_ROOT, stdout=out, stderr=log, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"test origin exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        ready = [ln for ln in out_path.read_text(errors="replace").splitlines() if ln.startswith(READY_PREFIX)]
        if ready:
            url = ready[0][len(READY_PREFIX):].strip()
            origin = Origin(proc, url, log_path)
            try:
                origin._control("GET", "ping")
                return origin
            except requests.RequestException:
                pass
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=5)
    raise RuntimeError(f"test origin not ready after {timeout}s (url={url}):\n{log_path.read_text(errors='replace')}")


def _drop_expect_continue(request: Any, **_: Any) -> None:
    if request.headers.get("Content-Length") == "0":
        request.headers.pop("Expect", None)
