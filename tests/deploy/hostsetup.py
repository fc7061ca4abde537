"""What the deployment tests need from the machine: root, Debian packages, a cached Debian root filesystem.

Everything is installed by the tests themselves (``apt-get``, ``debootstrap``); when that is impossible
here (not root, no apt, mirror unreachable) the test is skipped with the reason, never failed.

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

CACHE_DIR = Path(os.environ.get("S3CACHE_TEST_CACHE", "/var/cache/s3cache-test"))
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# systemd..openssh-server make it a bootable, reachable "VM"; python3-venv a base for the sidecar and
# evictor images; wget the Caddy image's health check (the official Caddy image has busybox wget).
ROOTFS_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "python3-apt",
                   "openssh-server", "ca-certificates", "wget", "sudo")
# The host's trust store, so pip inside the root trusts what pip on this machine trusts.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

_apt_updated = False


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("deployment tests need root (namespaces, apt-get, podman, systemd-nspawn)")
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        pytest.skip("deployment tests need a Debian-like host (apt-get)")


def require_namespaces() -> None:
    """Network namespaces (and so podman's and nspawn's isolation) must be allowed here."""
    ensure_debs("iproute2")
    probe = f"s3c-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)


def missing_debs(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for pkg in packages:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if out.returncode != 0 or "install ok installed" not in out.stdout:
            missing.append(pkg)
    return missing


def ensure_debs(*packages: str) -> None:
    """Install what is missing with apt-get (one `apt-get update` per session); skip if apt cannot."""
    global _apt_updated
    if shutil.which("dpkg-query") is None:
        pytest.skip("deployment tests need a Debian-like host (apt-get, dpkg)")
    missing = missing_debs(packages)
    if not missing:
        return
    require_root()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        run = subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            pytest.skip(f"apt-get update failed (no package mirror?): {run.stderr.strip()[-300:]}")
        _apt_updated = True
    run = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, capture_output=True,
                         text=True, timeout=600)
    if run.returncode != 0:
        pytest.skip(f"apt-get install {' '.join(missing)} failed: {run.stderr.strip()[-300:]}")


@contextmanager
def cache_lock(name: str):
    """Serialise builds of one cached artefact between concurrent test runs on this machine."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def rootfs_tarball() -> Path:
    """A debootstrapped Debian bookworm root as a tarball, built once (~1 min) and reused."""
    ensure_debs("debootstrap")
    recipe = " ".join((SUITE, MIRROR, *ROOTFS_PACKAGES)).encode() + HOST_CA_BUNDLE.read_bytes()
    tarball = CACHE_DIR / f"{SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}.tar"
    with cache_lock("rootfs"):
        if tarball.exists():
            return tarball
        with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="debootstrap-") as tmp:
            root = Path(tmp) / "root"
            run = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}", SUITE, str(root), MIRROR],
                capture_output=True, text=True, timeout=900)
            if run.returncode != 0:
                pytest.skip(f"debootstrap {SUITE} failed (mirror unreachable?): {run.stdout.strip()[-400:]}")
            shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True)
            partial.rename(tarball)
    return tarball


def extract_rootfs(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-C", str(dest), "-xf", str(tarball)], check=True)
    return dest
