"""What the deployment tests need from the machine: root, Debian packages, a cached Debian root filesystem.

Nothing is installed by the tests: the packages (``tests.host_tools.DEPLOY_DEBS``) and the Debian root
are provided by the test set-up (``python -m tests.host_tools``, run by ``make test`` before pytest).
A test whose tool is missing is skipped with the reason (failed on CI); one that needs root or
namespaces this machine does not allow is skipped.

The debootstrapped bookworm root is built once and kept as a tarball under ``CACHE_DIR``, outside the
repository: it is both the base image of the compose test and the disposable "VM" of the Ansible test.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.host_tools import SETUP_COMMAND, require_debs, unavailable

CACHE_DIR = Path(os.environ.get("S3CACHE_TEST_CACHE", "/var/cache/s3cache-test"))
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# systemd..openssh-server make it a bootable, reachable "VM"; python3-venv a base for the sidecar and
# evictor images; wget the Caddy image's health check (the official Caddy image has busybox wget).
ROOTFS_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "python3-apt",
                   "openssh-server", "ca-certificates", "wget", "sudo")
# The host's trust store, so pip inside the root trusts what pip on this machine trusts.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("deployment tests need root (namespaces, podman, systemd-nspawn)")


def require_namespaces() -> None:
    """Network namespaces (and so podman's and nspawn's isolation) must be allowed here."""
    require_debs("iproute2")
    probe = f"s3c-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)


@contextmanager
def cache_lock(name: str):
    """Serialise builds of one cached artefact between concurrent test runs on this machine."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def rootfs_path() -> Path:
    """Where the tarball for the current recipe (suite, mirror, packages, host CA bundle) lives."""
    recipe = " ".join((SUITE, MIRROR, *ROOTFS_PACKAGES)).encode() + HOST_CA_BUNDLE.read_bytes()
    return CACHE_DIR / f"{SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}.tar"


def build_rootfs() -> Path:
    """Build the tarball unless it exists (~1 min); for the test set-up. RuntimeError says why it could not."""
    tarball = rootfs_path()
    with cache_lock("rootfs"):
        if tarball.exists():
            return tarball
        with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="debootstrap-") as tmp:
            root = Path(tmp) / "root"
            run = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}", SUITE, str(root), MIRROR],
                capture_output=True, text=True, timeout=1800)
            if run.returncode != 0:
                raise RuntimeError(f"debootstrap {SUITE} failed (mirror unreachable?): {run.stdout.strip()[-400:]}")
            shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True)
            partial.rename(tarball)
    return tarball


def rootfs_tarball() -> Path:
    """In a test: the Debian root the set-up built; skipped (failed on CI) when it is not there."""
    tarball = rootfs_path()
    if not tarball.exists():
        unavailable(f"no Debian root filesystem at {tarball}; the test set-up builds it: {SETUP_COMMAND}")
    return tarball


def extract_rootfs(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-C", str(dest), "-xf", str(tarball)], check=True)
    return dest
