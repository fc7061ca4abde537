"""A Caddyfile `map` block run in Python, for property tests that compare Caddy's reading of a Host with s3cache's."""

from __future__ import annotations

import re

Entries = tuple[tuple[re.Pattern, str], ...]


def map_entries(text: str, source: str, dest: str, env: dict[str, str]) -> Entries:
    """The entries of ``map {source} {dest}`` in ``text``, each ``{$VAR:default}`` / ``{$VAR}`` filled from ``env``."""
    block = re.search(rf"map {re.escape(source)} {re.escape(dest)} \{{\n(.*?)\n\t\}}", text, re.S)
    assert block, f"the map of {source} changed shape"
    entries = []
    for line in block.group(1).splitlines():
        line = line.strip()
        for placeholder, value in env.items():
            line = line.replace(placeholder, value)
        if line.startswith("default "):
            entries.append((re.compile(""), line.split(" ", 1)[1].strip('"')))
            continue
        match = re.fullmatch(r'~(\S+) "([^"]*)"', line)
        assert match, f"unexpected map line: {line}"
        entries.append((re.compile(match.group(1)), match.group(2)))
    assert entries[-1][0].pattern == "", "the map has no default"
    return tuple(entries)


def map_value(entries: Entries, value: str) -> str:
    """Caddy's map: the first matching entry, each ${N} replaced by group N (empty when unset or absent)."""
    for pattern, result in entries:
        m = pattern.search(value)
        if m:
            return re.sub(r"\$\{(\d+)\}",
                          lambda g: (m.group(int(g.group(1))) or "") if int(g.group(1)) <= m.re.groups else "", result)
    raise AssertionError("unreachable: the default matches")
