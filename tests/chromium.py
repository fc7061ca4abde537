"""Headless Chromium for page tests: Debian's ``chromium``, installed by the test run itself when absent.

``chromium_or_skip_reason()`` returns ``(path, "")`` or ``(None, why)``.  When the
browser is missing and we are root with apt-get (CI, a fresh machine), the
package is installed here; otherwise (or if that fails) the caller skips with
the reason.  ``dump_dom`` and ``screenshot`` run it with flags that keep it
off the network and away from any profile but a fresh one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "chromium"
INSTALL_TIMEOUT = 900
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")

_found: tuple[str | None, str] | None = None


def _which() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _install() -> str:
    """Install Debian's chromium; returns '' or why it could not be."""
    if os.geteuid() != 0:
        return "chromium is not installed and this user cannot install it (not root)"
    if not shutil.which("apt-get"):
        return "chromium is not installed and there is no apt-get to install it with"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE, "fonts-dejavu-core"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"installing chromium timed out ({' '.join(cmd)})"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"could not install chromium ({' '.join(cmd)}): {' | '.join(tail)}"
    return ""


def chromium_or_skip_reason() -> tuple[str | None, str]:
    global _found
    if _found is None:
        path = _which()
        if path is None:
            why = _install()
            path = _which()
            if path is None:
                _found = (None, why or "chromium was installed but is not on PATH")
                return _found
        _found = (path, "")
    return _found


def _run(binary: str, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def dump_dom(binary: str, url: str) -> str:
    """The DOM after the page loaded, serialised: what a person's browser would show."""
    done = _run(binary, ["--dump-dom", url])
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode("utf-8")


def screenshot(binary: str, url: str, path: Path, size: str = "1280,1700") -> Path:
    done = _run(binary, [f"--screenshot={path}", f"--window-size={size}", url])
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"chromium --screenshot failed ({done.returncode}): "
                           f"{done.stderr.decode(errors='replace')[-2000:]}")
    return path
