"""Run the project's Ansible (ansible/, with its ansible.cfg and .ansible-lint) from the test venv."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
BIN = Path(sys.executable).parent


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed: pip install -r requirements-deploy.txt")
    return path


def run(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PATH=f"{BIN}:{os.environ.get('PATH', '')}", PY_COLORS="0")
    return subprocess.run([str(tool(name)), *args], cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True,
                          timeout=timeout)


def recap(output: str, host: str | None = None) -> dict[str, int]:
    """One host's counters from PLAY RECAP (ok, changed, failed, ...): ``host``'s, else the first listed."""
    lines = [line for line in output[output.rindex("PLAY RECAP"):].splitlines()[1:] if ":" in line]
    if host is not None:
        lines = [line for line in lines if line.split()[0] == host] or [f"{host} : never ran"]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", lines[0])}
