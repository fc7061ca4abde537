"""Test tools are installed by `make test`'s set-up (tests/host_tools.py), never inside a test; a test
whose tool is missing skips with the reason on a developer's machine and fails on CI."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests import host_tools

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _calls(name: str):
    """(file, literal string arguments) of every call to ``name`` in the tests tree."""
    for path in sorted(TESTS.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name:
                yield path, [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]


def test_every_package_a_test_requires_is_one_the_set_up_installs():
    asked = {pkg for _, args in _calls("require_debs") for pkg in args}
    assert asked, "no require_debs calls found: the scan is broken"
    assert asked <= set(host_tools.ALL_DEBS), asked - set(host_tools.ALL_DEBS)


def test_no_test_installs_anything():
    allowed = {TESTS / "host_tools.py"}
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path in allowed or path == Path(__file__).resolve():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("apt-get", "apt", "pip"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_the_make_test_target_runs_the_set_up_before_pytest_and_make_run_does_not():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")

    def recipe(target: str) -> list[str]:
        m = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
        assert m, target
        return [line.strip() for line in m.group(1).splitlines()]
    test = recipe("test")
    setup = next(i for i, line in enumerate(test) if "-m tests.host_tools" in line)
    pytest_at = next(i for i, line in enumerate(test) if "-m pytest" in line)
    assert setup < pytest_at
    assert not any("host_tools" in line for line in recipe("run"))


def test_a_missing_tool_skips_here_but_fails_on_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no such tool"):
        host_tools.unavailable("no such tool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no such tool"):
        host_tools.unavailable("no such tool")


def test_require_debs_names_what_is_missing(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(host_tools, "missing_debs", lambda pkgs: [p for p in pkgs if p == "chromium"])
    host_tools.require_debs("podman")  # present: carries on
    with pytest.raises(pytest.skip.Exception, match="not installed: chromium.*tests.host_tools"):
        host_tools.require_debs("chromium", "podman")
    with pytest.raises(AssertionError, match="add \\['not-a-listed-package'\\]"):
        host_tools.require_debs("not-a-listed-package")
