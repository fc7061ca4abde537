"""Headless Chromium for page tests: Debian's ``chromium``, installed by the test set-up, never by a test.

``chromium_or_skip_reason()`` returns ``(path, "")`` or ``(None, why)``; the caller passes ``why`` to
``tests.host_tools.unavailable`` (a skip, or a failure on CI).  ``dump_dom`` and ``screenshot`` run
it with flags that keep it off the network and away from any profile but a fresh one.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.host_tools import CHROMIUM_DEBS, SETUP_COMMAND

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def chromium_or_skip_reason() -> tuple[str | None, str]:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        return None, f"chromium is not installed ({' '.join(CHROMIUM_DEBS)}); the test set-up installs it: {SETUP_COMMAND}"
    return path, ""


def _run(binary: str, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def dump_dom(binary: str, url: str, extra: list[str] | tuple[str, ...] = ()) -> str:
    """The DOM after the page loaded, serialised: what a person's browser would show."""
    done = _run(binary, [*extra, "--dump-dom", url])
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode("utf-8")


def screenshot(binary: str, url: str, path: Path, size: str = "1280,1700") -> Path:
    done = _run(binary, [f"--screenshot={path}", f"--window-size={size}", url])
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"chromium --screenshot failed ({done.returncode}): "
                           f"{done.stderr.decode(errors='replace')[-2000:]}")
    return path
