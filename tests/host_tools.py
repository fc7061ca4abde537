"""The machine's tools the test suite needs (Debian packages, a Debian root filesystem), installed
*before* pytest runs: ``make test`` runs ``python -m tests.host_tools`` first.

Tests never install anything themselves: an ``apt-get`` inside a test races its 300 s timeout on a
cold machine.  A test whose tool is missing calls ``unavailable(why)``: it is skipped with the reason
on a developer's machine (not root, no apt), but fails on CI (``CI=true``), where a skipped test
would hide that the set-up is broken.

Run as a program it is idempotent and quick once everything is there (one ``dpkg-query``, one
``stat``).  Without root or apt it only says what is missing (exit 0: the tests that need it skip),
except on CI, where anything it cannot provide is an error (exit 1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# What each group of tests needs; test files ask for these through require_debs().
CHROMIUM_DEBS = ("chromium", "fonts-dejavu-core")  # tests/test_status.py (the page), tests/test_cors_browser.py (fetch())
DEPLOY_DEBS = ("iproute2", "iptables", "openssh-client", "systemd-container", "podman", "runc", "netavark",
               "aardvark-dns", "docker-compose", "debootstrap")  # tests/deploy (runc, netavark: tests/deploy/podman.py)
ALL_DEBS = CHROMIUM_DEBS + DEPLOY_DEBS
SETUP_COMMAND = "python -m tests.host_tools (`make test` runs it)"


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(why: str) -> None:
    """Skip the calling test with ``why``; on CI, fail it: there the set-up must have provided the tool."""
    import pytest

    if on_ci():
        pytest.fail(f"{why} (CI=true: a missing test tool is a failure, not a skip)", pytrace=False)
    pytest.skip(why)


def missing_debs(packages: tuple[str, ...] | list[str]) -> list[str]:
    """The packages of ``packages`` not installed; all of them when this is not a dpkg system."""
    if not packages:
        return []
    if shutil.which("dpkg-query") is None:
        return list(packages)
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n", *packages],
                         capture_output=True, text=True)
    installed = {line.split(" ", 1)[0] for line in out.stdout.splitlines() if line.endswith(" install ok installed")}
    return [p for p in packages if p not in installed]


def require_debs(*packages: str) -> None:
    """In a test: carry on if ``packages`` are installed, else skip (fail on CI) saying what is missing."""
    unknown = [p for p in packages if p not in ALL_DEBS]
    assert not unknown, f"add {unknown} to tests/host_tools.py so that the set-up installs them"
    missing = missing_debs(packages)
    if missing:
        unavailable(f"not installed: {' '.join(missing)}; the test set-up installs them: {SETUP_COMMAND}")


# -- the set-up program -------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"host_tools: {message}", flush=True)


def _install_debs(missing: list[str]) -> str:
    """'' when installed, else why not."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        return "not a Debian-like host (no apt-get/dpkg-query)"
    if os.geteuid() != 0:
        return "not root, cannot apt-get install"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        _say(" ".join(cmd))
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"timed out: {' '.join(cmd)}"
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            return f"failed: {' '.join(cmd)}: {tail}"
    return ""


def main() -> int:
    problems: list[str] = []
    missing = missing_debs(ALL_DEBS)
    if missing:
        _say(f"installing {' '.join(missing)}")
        why = _install_debs(missing)
        if why:
            problems.append(f"{' '.join(missing)}: {why}")
        elif missing_debs(missing):
            problems.append(f"still not installed after apt-get: {' '.join(missing_debs(missing))}")

    # The deployment tests' Debian root (built with debootstrap, ~1 min, cached outside the repository).
    from tests.deploy import hostsetup
    tarball = hostsetup.rootfs_path()
    if not tarball.exists():
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            problems.append(f"{tarball}: needs root and debootstrap to build")
        else:
            _say(f"building {tarball} with debootstrap (once)")
            try:
                hostsetup.build_rootfs()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                problems.append(f"{tarball}: {exc}")

    if not problems:
        _say("test tools present")
        return 0
    for problem in problems:
        _say(f"missing: {problem}")
    if on_ci():
        _say("CI=true: the tests that need these would fail; stopping here")
        return 1
    _say("the tests that need these will be skipped, with the reason")
    return 0


if __name__ == "__main__":
    sys.exit(main())
