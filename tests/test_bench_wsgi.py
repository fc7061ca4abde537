"""The WSGI-server benchmark's pure parts (bench/wsgi_servers.py, bench/wsgi_app.py): no servers, no timing."""

from __future__ import annotations

import os

from bench import report, wsgi_servers


def test_descendants_include_the_root_and_its_children():
    assert os.getpid() in wsgi_servers.descendants([os.getpid()])
    assert wsgi_servers.descendants([os.getppid()])[0] == os.getppid()
    assert os.getpid() in wsgi_servers.descendants([os.getppid()])


def _row(kind, server, rps, cpu):
    return {"kind": kind, "server": server, "req_per_s": 1000 * rps, "p50_ms": 1.0, "p99_ms": 2.0, "cpu_ms": cpu,
            "errors": 0, "requests": 10, "processes": 4, "rps_vs_waitress": rps, "p50_vs_waitress": 1.0,
            "p99_vs_waitress": 1.0, "cpu_vs_waitress": cpu, "runs": [1000.0 * rps]}


def test_report_says_keep_unless_every_kind_gains_enough():
    res = {"connections": 64, "duration": 8, "rounds": 5, "servers": ["waitress", "granian"], "missing": [],
           "versions": {"waitress": "3", "granian": "2"}, "worth_switching": 1.5,
           "kinds": {"miss": {"workers": 2, "threads": 16,
                              "table": [_row("miss", "waitress", 1.0, 1.0), _row("miss", "granian", 1.4, 0.7)]},
                     "check": {"workers": 2, "threads": 24,
                               "table": [_row("check", "waitress", 1.0, 1.0), _row("check", "granian", 1.9, 0.8)]}},
           "least_gain": {"granian": 1.4}}
    rows = wsgi_servers.summary_rows(res)
    assert rows[0][0].startswith("WSGI server: granian") and rows[0][3] == "keep waitress"
    res["least_gain"]["granian"] = 1.6
    assert wsgi_servers.summary_rows(res)[0][3] == "worth it"
    text = report.full_markdown({"meta": {"date": "d", "nproc": 2, "cpu": "c", "memory_gib": 1, "kernel": "k",
                                          "python": "3", "caddy": "?", "nginx": "?", "wrk": "?", "load_before": 0.0,
                                          "quick": False}, "wsgi": res}, [])
    assert "## WSGI server for the sidecar" in text and "| check | granian |" in text
