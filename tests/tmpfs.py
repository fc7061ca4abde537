"""A small real filesystem for the full-disk and eviction tests: what a tiny disk really does (ENOSPC, atime)."""

from __future__ import annotations

import os
import subprocess

import pytest


def mount_tmpfs(tmp_path, options: str):
    """A small real filesystem (``mount -t tmpfs -o OPTIONS``) for full-disk and eviction tests; unmounted after.

    A generator for a fixture: request it before the stack that uses it, so it outlives that stack.
    """
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
