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


def _real_row(trace: str, cap: float, policy: str, mode: str, bhr: float, opc: float) -> dict:
    return {"trace": trace, "capacity": cap, "policy": policy, "mode": mode, "byte_hit_ratio": bhr,
            "origin_per_client": opc, "capacity_bytes": 1000, "requests": 500}


def _issue16_verdicts(good: bool) -> tuple[list[dict], dict[str, str]]:
    from bench import policies
    d, lru = policies.DEFAULT, policies.BASELINE
    rows = [_real_row("zipf-0.9", 0.10, d, "redirect", 0.55 if good else 0.52, 0.52 if good else 1.02),
            _real_row("zipf-0.9", 0.10, d, "stream", 0.55 if good else 0.53, 0.45),
            _real_row("zipf-0.9", 0.10, lru, "redirect", 0.49, 1.01),
            _real_row("shifting", 0.30, d, "redirect", 0.81 if good else 0.79, 0.36),
            _real_row("shifting", 0.30, lru, "redirect", 0.81, 0.37)]
    asked = []

    def best(trace, capacity_bytes, executed):
        asked.append((trace, capacity_bytes, executed))
        return "libcachesim Sieve", 0.545
    checked = policies.real_targets(rows, best)
    assert asked == [("zipf-0.9", 1000, 500)]  # the stream row's capacity and the requests it got through
    return checked, _verdicts({"policies": {"real_targets": checked}})


def test_issue16_real_stack_targets_are_judged_both_ways():
    checked, verdicts = _issue16_verdicts(good=True)
    assert [t["met"] for t in checked] == [True, True, True, True], checked
    assert set(verdicts.values()) == {"**met**"}, verdicts
    checked, verdicts = _issue16_verdicts(good=False)
    assert [t["met"] for t in checked] == [False, False, False, False], checked
    assert set(verdicts.values()) == {"**not met**"}, verdicts
