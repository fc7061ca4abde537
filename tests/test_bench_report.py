"""The bench report's verdicts (bench/report.py): each issue-15 row is judged against its target, both ways."""

from __future__ import annotations

import os

from bench import cpu, report
from bench.access_modes import _windows_spanned


def _access(max_per_window: float, checked_ratio: float) -> dict:
    row = {"mode": "verify-checked", "size": "4 KiB", "vs_open": checked_ratio, "req_per_s": 1.0, "p99_ms": 1.0}
    return {"table": [row], "targets": [{"mode": "verify-checked", "size": "4 KiB", "target": 0.4}],
            "target_verify_1mib": 0.5, "grant_ttl": 10, "max_origin_per_window": 1,
            "revalidate_origin_per_window": [{"size": "4 KiB", "max": max_per_window, "runs": [max_per_window]}]}


def _redirects(p99: float, rps_vs_caddy: float, vs_no_fill: float) -> dict:
    side = {"kind": "sidecar (GET miss)", "p50_ms": 1.0, "p99_ms": p99, "req_per_s": 100.0}
    return {"redirects": {"connections": 64, "table": [side], "p50_vs_caddy": 1.0, "p99_vs_caddy": 1.0,
                          "rps_vs_caddy": rps_vs_caddy, "rps_vs_no_fill": vs_no_fill,
                          "targets": {"p99_ms": 50, "before_req_per_s": 586, "rps_vs_caddy": 0.171,
                                      "vs_no_fill": 0.5}}}


def _verdicts(results: dict) -> dict[str, str]:
    return {measure: status for measure, _, _, status in report.summary_rows(results)}


def test_rows_meet_their_targets_when_the_figures_do():
    got = _verdicts({"access": _access(1.0, 0.45), "miss": _redirects(40.0, 0.2, 0.9)})
    assert set(got.values()) == {"**met**"}, got


def test_rows_miss_their_targets_when_the_figures_do():
    got = _verdicts({"access": _access(2.0, 0.2), "miss": _redirects(300.0, 0.1, 0.3)})
    assert set(got.values()) == {"**not met**"}, got
    assert len(got) == 5


def test_grant_windows_spanned_by_a_run():
    assert _windows_spanned(100.0, 108.0, 10) == 1
    assert _windows_spanned(105.0, 113.0, 10) == 2
    assert _windows_spanned(99.9, 120.1, 10) == 4


def test_cpu_of_this_process_grows_with_work():
    before = cpu.process_cpu(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert cpu.process_cpu(os.getpid()) > before
    assert cpu.process_cpu(2 ** 22 + 12345) == 0.0  # no such process
    assert cpu.ms_per_request({"a": 1.0}, {"a": 1.5}, 250) == {"a": 2.0}
