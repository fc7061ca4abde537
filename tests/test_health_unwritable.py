"""README: /_s3cache/health answers 503 when the cache cannot fill (its directory not writable), and 200
again once it can; misses are still answered meanwhile."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration


@contextmanager
def read_only(directory: Path):
    """``directory`` not writable, even for root: a read-only bind mount over it (chmod when not root)."""
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(mode)
        return
    done = subprocess.run(["mount", "--bind", str(directory), str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def health(stack) -> requests.Response:
    return requests.get(stack.url + "/_s3cache/health", timeout=10)


def test_health_is_503_while_the_cache_cannot_be_written(origin, make_stack):
    origin.ensure_bucket("health-tests")
    stack = make_stack(S3CACHE_ACCESS="open")
    assert health(stack).status_code == 200
    with read_only(stack.layout.objects_dir):
        r = health(stack)
        assert r.status_code == 503, r.text
        assert r.json()["status"] != "ok"
        # A miss is still answered (redirected), never an error.
        miss = stack.get(stack.url + "/health-tests/any-key")
        assert (miss.status_code, miss.headers["X-Cache"]) == (307, "MISS")
    assert health(stack).status_code == 200
