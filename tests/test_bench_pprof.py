"""bench/pprof.py reads a gzipped profile.proto and charges samples as bench/hit_profile.py says (no Go needed)."""

from __future__ import annotations

import gzip

from bench.hit_profile import BUCKETS
from bench.pprof import attribute, parse, top_functions


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _packed(values: list[int]) -> bytes:
    return b"".join(_varint(v) for v in values)


def _profile(stacks: list[tuple[list[list[str]], int]]) -> bytes:
    """A CPU profile: each stack is locations (leaf first), each a list of function names (inlined first)."""
    strings = ["", "samples", "count", "cpu", "nanoseconds"]
    funcs: dict[str, int] = {}
    msg = _field(1, _field(1, 1) + _field(2, 2)) + _field(1, _field(1, 3) + _field(2, 4))
    locations = []
    for locs, value in stacks:
        ids = []
        for names in locs:
            lines = b""
            for name in names:
                if name not in funcs:
                    strings.append(name)
                    funcs[name] = len(funcs) + 1
                lines += _field(4, _field(1, funcs[name]))
            locations.append(_field(1, len(locations) + 1) + lines)
            ids.append(len(locations))
        # location ids packed, values unpacked: the reader takes both forms
        msg += _field(2, _field(1, _packed(ids)) + _field(2, 1) + _field(2, value))
    msg += b"".join(_field(4, loc) for loc in locations)
    msg += b"".join(_field(5, _field(1, fid) + _field(2, strings.index(name))) for name, fid in funcs.items())
    msg += b"".join(_field(6, s.encode()) for s in strings)
    return gzip.compress(msg)


CADDY = "github.com/caddyserver/caddy/v2/modules/caddyhttp"
SERVE = ["net/http.(*conn).serve"]


def test_samples_go_to_the_named_frame_nearest_their_leaf():
    data = _profile([
        # a regexp run by the map is the map's
        ([["regexp.(*Regexp).doExecute"], [f"{CADDY}/map.Handler.ServeHTTP.func1"], [f"{CADDY}.MatchVarsRE.MatchWithError"],
          SERVE], 30),
        # a write made by the log is the log's, though the syscall and net/http are on the stack too
        ([["syscall.write", "internal/poll.(*FD).Write"], ["github.com/DeRuina/timberjack.(*Logger).Write"],
          [f"{CADDY}.(*Server).logRequest"], SERVE], 10),
        # a placeholder lookup is the matcher's that asked
        ([["github.com/caddyserver/caddy/v2.(*Replacer).Get"], [f"{CADDY}.MatchVarsRE.MatchWithError"], SERVE], 5),
        ([["net.(*netFD).Write"], SERVE], 7),
        ([["runtime.memmove"]], 1),
    ])
    prof = parse(data)
    assert prof.sample_types == ["samples/count", "cpu/nanoseconds"]
    totals = attribute(prof, BUCKETS)
    assert totals["map (its regexps included)"] == 30
    assert totals["access log: encode + write"] == 10
    assert totals["regexp matchers (vars_regexp ...)"] == 5
    assert totals["HTTP/1 + net (read, parse, write)"] == 7
    assert totals["other"] == 1
    assert sum(totals.values()) == 53
    top = {name: (flat, cum) for name, flat, cum in top_functions(prof)}
    assert top[SERVE[0]] == (0, 52) and top["syscall.write"] == (10, 10)
