"""`s3cache up`'s supervisor: prefixed logs, restart with backoff, clean stop; config errors in one line."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading

from commands import supervisor as sup
from commands.supervisor import Part, Supervisor
from tests.stack import BIN, wait_until


def _part(name, code):
    return Part(name, [sys.executable, "-c", code], dict(os.environ))


def test_logs_are_prefixed_and_a_dying_part_is_restarted_with_backoff(monkeypatch, tmp_path):
    monkeypatch.setattr(sup, "BACKOFF_FIRST", 0.1)
    out = io.StringIO()
    marker = tmp_path / "starts"
    crashy = _part("crashy", f"open({str(marker)!r}, 'a').write('x'); print('hello from crashy', flush=True); raise SystemExit(3)")
    steady = _part("steady", "import time; print('steady up', flush=True); time.sleep(60)")
    s = Supervisor([crashy, steady], status_file=str(tmp_path / "parts.json"), out=out)
    t = threading.Thread(target=s.run)
    t.start()
    try:
        wait_until(lambda: len(marker.read_text()) >= 3 if marker.exists() else False, timeout=15, what="3 starts")
    finally:
        s.request_stop()
        t.join(timeout=20)
    text = out.getvalue()
    assert "crashy  | hello from crashy" in text
    assert "steady  | steady up" in text
    assert "crashy exited unexpectedly with code 3; restarting in 0.1s" in text
    assert "restarting in 0.2s" in text  # the backoff doubles
    assert "stopped steady" in text
    assert steady.proc is None and not t.is_alive()


def test_sigterm_stops_every_part_cleanly(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(f"import os, time\nopen({str(tmp_path / 'pids')!r}, 'a').write(f'{{os.getpid()}}\\n')\ntime.sleep(60)\n")
    pidfile = tmp_path / "pids"
    script = tmp_path / "run.py"
    script.write_text(
        "import os, sys\n"
        "from commands.supervisor import Part, Supervisor\n"
        f"parts = [Part(n, [sys.executable, {str(child)!r}], dict(os.environ)) for n in ('one', 'two')]\n"
        "sys.exit(Supervisor(parts).run())\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wait_until(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2, what="two parts")
    pids = [int(p) for p in pidfile.read_text().split()]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert b"received SIGTERM; stopping" in out
    for pid in pids:
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), what=f"pid {pid} to exit")


def test_bad_configuration_stops_up_with_one_line_naming_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}
    env.update(S3CACHE_LISTEN="not-an-address", S3CACHE_DIR=str(tmp_path / "c"))
    r = subprocess.run([str(BIN / "s3cache"), "up"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "S3CACHE_LISTEN" in lines[0], r.stderr
    assert not (tmp_path / "c").exists()


def test_env_file_fills_in_and_the_environment_wins(tmp_path):
    f = tmp_path / "bad.env"
    f.write_text("S3CACHE_UPSTREAM=ftp://nope\nS3CACHE_LISTEN=127.0.0.1:1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}
    r = subprocess.run([str(BIN / "s3cache"), "up", "--env-file", str(f)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "S3CACHE_UPSTREAM" in r.stderr
    env["S3CACHE_UPSTREAM"] = "http://127.0.0.1:9"
    env["S3CACHE_EVICT_LOW"] = "95"
    r = subprocess.run([str(BIN / "s3cache"), "up", "--env-file", str(f)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "S3CACHE_EVICT_LOW" in r.stderr
