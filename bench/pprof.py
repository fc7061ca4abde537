"""Read a Go pprof CPU profile (gzipped profile.proto) without Go, and sort its samples into buckets.

Only what attribution needs is decoded: samples (location ids, values), locations (their function ids,
inlined frames included), functions (names) and the string table.  A sample is charged to the bucket of
the named frame nearest its leaf (``attribute``).
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one message: ints for varints, bytes for length-delimited."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            ln, i = _varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wt == 1:
            v, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wt == 5:
            v, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, v


def _ints(wt: int, v) -> list[int]:
    """A repeated integer field, packed (bytes) or not (one int)."""
    if wt == 0:
        return [v]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(x)
    return out


@dataclass
class Profile:
    sample_types: list[str]
    samples: list[tuple[list[int], list[int]]]  # (location ids, leaf first; values)
    locations: dict[int, list[str]]             # id -> function names, innermost (inlined) first

    def stacks(self, value_index: int = -1):
        """(function names leaf first, value) per sample."""
        for locs, values in self.samples:
            names: list[str] = []
            for loc in locs:
                names.extend(self.locations.get(loc, ()))
            yield names, values[value_index]


def parse(data: bytes) -> Profile:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    strings: list[str] = []
    raw_types, raw_samples, raw_locs, funcs = [], [], [], {}
    for num, wt, v in _fields(data):
        if num == 1:
            raw_types.append(v)
        elif num == 2:
            raw_samples.append(v)
        elif num == 4:
            raw_locs.append(v)
        elif num == 5:
            fid = name = 0
            for fn, _, fv in _fields(v):
                if fn == 1:
                    fid = fv
                elif fn == 2:
                    name = fv
            funcs[fid] = name
        elif num == 6:
            strings.append(v.decode("utf-8", "replace"))
    types = []
    for t in raw_types:
        d = {fn: fv for fn, _, fv in _fields(t)}
        types.append(f"{strings[d.get(1, 0)]}/{strings[d.get(2, 0)]}")
    locations: dict[int, list[str]] = {}
    for loc in raw_locs:
        lid, lines = 0, []
        for fn, _, fv in _fields(loc):
            if fn == 1:
                lid = fv
            elif fn == 4:
                for ln, _, lv in _fields(fv):
                    if ln == 1:
                        lines.append(strings[funcs.get(lv, 0)])
        # profile.proto lists a location's lines with the innermost (inlined) function first
        locations[lid] = lines
    samples = []
    for s in raw_samples:
        locs, values = [], []
        for fn, wt, fv in _fields(s):
            if fn == 1:
                locs.extend(_ints(wt, fv))
            elif fn == 2:
                values.extend(_ints(wt, fv))
        samples.append((locs, values))
    return Profile(types, samples, locations)


def attribute(profile: Profile, buckets: list[tuple[str, str]], value_index: int = -1) -> dict[str, int]:
    """Total value per bucket name; ``buckets`` is [(name, regexp over a function name)].

    A sample goes to the bucket of the frame nearest its leaf that any pattern matches (patterns tried
    in list order on that frame); frames no pattern names (runtime helpers, syscalls, regexp's engine)
    are charged to the caller that is named.  So a regexp run by a ``map`` is the map's, and a write
    made by the log is the log's, while anything else under net/http's connection loop is HTTP's.
    """
    compiled = [(name, re.compile(pattern)) for name, pattern in buckets]
    totals = {name: 0 for name, _ in buckets}
    totals["other"] = 0
    for names, value in profile.stacks(value_index):
        totals[_bucket(names, compiled)] += value
    return totals


def _bucket(names: list[str], compiled) -> str:
    for fn in names:
        for name, rx in compiled:
            if rx.search(fn):
                return name
    return "other"


def top_functions(profile: Profile, n: int = 25, value_index: int = -1) -> list[tuple[str, int, int]]:
    """(function, flat, cumulative) for the n functions with the most cumulative value."""
    flat: dict[str, int] = {}
    cum: dict[str, int] = {}
    for names, value in profile.stacks(value_index):
        if names:
            flat[names[0]] = flat.get(names[0], 0) + value
        for name in set(names):
            cum[name] = cum.get(name, 0) + value
    return sorted(((f, flat.get(f, 0), c) for f, c in cum.items()), key=lambda t: -t[2])[:n]
