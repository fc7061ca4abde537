"""`s3cache up` as an operator runs it for years: no orphans, one stack per cache, clear start-up failures,
a quiet start, `s3cache reload`, every subcommand reading `.env`, and a `make run` that installs only the runtime.

These start the real stack (`s3cache up`) with an upstream nothing listens on: no test here needs an object
from S3, only the parts' lifecycle.  Every process a test starts is stopped by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from s3cache.layout import Layout, ObjectRef
from commands.supervisor import Part, Supervisor
from tests.reload_clients import ReloadClients, assert_nothing_dropped
from tests.stack import BIN, Stack, free_port, raw_request, wait_until

ROOT = Path(__file__).resolve().parent.parent
NOWHERE = "http://127.0.0.1:9"


def alive(pid: int) -> bool:
    """True while any thread of ``pid`` runs (a zombie waiting for its reaper counts as gone).

    Every thread, not the leader's state alone: a SIGKILLed multi-threaded process (Caddy) shows its leader
    as a zombie while its other threads are still exiting, and its sockets close only when the last one has.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return False
    for tid in threads:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


def kill_leftovers(pids) -> None:
    for pid in pids:
        if pid and alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def part_pids(stack: Stack) -> dict[str, int]:
    parts = json.loads(stack.layout.parts_file.read_text())["parts"]
    return {name: info["pid"] for name, info in parts.items()}


def sidecar_children(stack: Stack) -> dict[str, int]:
    """The sidecar's request workers and fill process (run/sidecar.json), once all are named."""
    def read():
        try:
            state = json.loads(stack.layout.sidecar_file.read_text())
        except (OSError, ValueError):
            return None
        if not state.get("fill_pid") or len(state.get("worker_pids") or []) != state.get("workers"):
            return None
        return {"sidecar fill": state["fill_pid"],
                **{f"sidecar worker {i}": pid for i, pid in enumerate(state["worker_pids"])}}
    return wait_until(read, timeout=20, what="run/sidecar.json to name the sidecar's processes")


def caddy_lines_with(log: str, text: str) -> list[str]:
    """Caddy's own log lines containing ``text`` (a pid in the supervisor's lines may contain anything)."""
    return [line for line in log.splitlines() if line.startswith("caddy ") and text in line]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}
    env.update(extra)
    return env


@pytest.fixture
def stacks():
    started: list[Stack] = []
    yield started
    for s in started:
        pids = []
        if s.layout.parts_file.exists():
            pids = [p for p in part_pids(s).values() if p]
        try:
            pids += json.loads(s.layout.sidecar_file.read_text()).get("worker_pids") or []
        except (OSError, ValueError):
            pass
        s.stop()
        kill_leftovers(pids)


def start(stacks, tmp_path, name="stack", **env) -> Stack:
    s = Stack(tmp_path / name, NOWHERE, **env)
    stacks.append(s)
    s.start()
    return all_running(s)


def all_running(s: Stack) -> Stack:
    """Health answers once Caddy does; the evictor starts right after."""
    wait_until(lambda: "started evictor" in s.log_text(), timeout=20, what="every part to be running")
    return s


# -- 1. the parts never outlive the supervisor ---------------------------------------------------------------


def test_sigkill_of_the_supervisor_leaves_no_part_running(stacks, tmp_path):
    s = start(stacks, tmp_path, S3CACHE_SIDECAR_WORKERS="2")
    pids = part_pids(s)
    assert set(pids) == {"sidecar", "caddy", "evictor"} and all(pids.values())
    children = sidecar_children(s)  # the sidecar's own processes go too
    assert len(children) == 3 and all(alive(pid) for pid in children.values())
    pids.update(children)
    try:
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=10)
        for name, pid in pids.items():
            wait_until(lambda: not alive(pid), timeout=15, what=f"{name} (pid {pid}) to die with the supervisor")
        # And its ports are free again: a new stack can start right away.
        with socket.create_server(("127.0.0.1", s.port)):
            pass
    finally:
        kill_leftovers(pids.values())


def test_sighup_stops_every_part_cleanly(stacks, tmp_path):
    s = start(stacks, tmp_path, S3CACHE_SIDECAR_WORKERS="2")
    pids = {**part_pids(s), **sidecar_children(s)}
    s.proc.send_signal(signal.SIGHUP)
    assert s.proc.wait(timeout=30) == 0
    for name, pid in pids.items():
        wait_until(lambda: not alive(pid), timeout=15, what=f"{name} to stop")
    log = s.log_text()
    assert "received SIGHUP; stopping" in log
    assert "stopped caddy" in log and "stopped sidecar" in log and "stopped evictor" in log
    status = json.loads(s.layout.parts_file.read_text())
    assert {p["status"] for p in status["parts"].values()} == {"stopped"}


# -- 1. one stack per cache directory; a busy port is one line, not a restart loop -------------------------


def test_a_second_up_on_the_same_cache_names_the_owner_and_exits_1(stacks, tmp_path):
    first = start(stacks, tmp_path)
    env = dict(first.env, S3CACHE_LISTEN=f"127.0.0.1:{free_port()}", S3CACHE_SIDECAR_LISTEN=f"127.0.0.1:{free_port()}")
    r = subprocess.run([str(BIN / "s3cache"), "up"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.proc.pid}" in lines[0] and str(first.cache_dir) in lines[0], r.stderr
    assert r.stdout == ""  # nothing was started
    assert first.proc.poll() is None


@pytest.mark.parametrize("setting", ["S3CACHE_LISTEN", "S3CACHE_SIDECAR_LISTEN"])
def test_a_port_in_use_is_one_line_naming_the_setting_and_exit_1(tmp_path, setting):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = base_env(S3CACHE_DIR=str(tmp_path / "cache"), S3CACHE_UPSTREAM=NOWHERE, HOME=str(tmp_path),
                       S3CACHE_LISTEN=f"127.0.0.1:{free_port()}", S3CACHE_SIDECAR_LISTEN=f"127.0.0.1:{free_port()}")
        env[setting] = f"127.0.0.1:{port}"
        r = subprocess.run([str(BIN / "s3cache"), "up"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"s3cache: {setting}: 127.0.0.1:{port} is already in use by another program"], r.stderr
    assert "started" not in r.stdout


def test_a_second_up_on_the_same_ports_does_not_bind_beside_the_first(stacks, tmp_path):
    first = start(stacks, tmp_path)
    env = dict(first.env, S3CACHE_DIR=str(tmp_path / "other-cache"))
    r = subprocess.run([str(BIN / "s3cache"), "up"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "S3CACHE_LISTEN" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_part_that_cannot_bind_at_first_start_stops_the_stack_with_one_line(tmp_path):
    """The race the port check cannot close: a part that exits at once with a port error is not restarted."""
    starts = tmp_path / "starts"
    failing = Part("caddy", [sys.executable, "-c",
                             f"open({str(starts)!r}, 'a').write('x'); "
                             "print('Error: listen tcp 127.0.0.1:8080: bind: address already in use', flush=True); "
                             "raise SystemExit(1)"],
                   dict(os.environ), ready=lambda: False, port_setting="S3CACHE_LISTEN", address="127.0.0.1:8080")
    later = Part("evictor", [sys.executable, "-c", f"open({str(tmp_path / 'later')!r}, 'w')"], dict(os.environ))
    out = _Out()
    code = Supervisor([failing, later], out=out).run()
    assert code == 1
    assert "S3CACHE_LISTEN: 127.0.0.1:8080 is already in use by another program; stopping" in out.text
    assert starts.read_text() == "x"  # started once, never restarted
    assert not (tmp_path / "later").exists()  # the parts after it never started


class _Out:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


# -- 1./2. ordered, quiet start-up; the banner ----------------------------------------------------------------


def test_start_up_logs_no_warning_and_no_502_even_when_polled_from_the_first_moment(tmp_path):
    s = Stack(tmp_path / "stack", NOWHERE, S3CACHE_ACCESS="open", S3CACHE_MISS="stream")
    answers: list[int] = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            try:
                answers.append(requests.get(s.url + "/_s3cache/health", timeout=2).status_code)
            except requests.RequestException:
                pass  # not listening yet: fine, that is no 502

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    pids = {}
    try:
        all_running(s.start())
        pids = part_pids(s)
        wait_until(lambda: 200 in answers, timeout=10, what="a 200 through Caddy")
    finally:
        stop.set()
        poller.join(timeout=5)
        s.stop()
        kill_leftovers(pids.values())
    log = s.log_text()
    assert 502 not in answers and set(answers) == {200}, answers
    assert "WARN" not in log.split("received SIGTERM")[0], log
    assert "ERROR" not in log and not caddy_lines_with(log, "502"), log
    banner = log.splitlines()[:2]
    assert banner[0] == f"s3cache: http://127.0.0.1:{s.port} -> {NOWHERE} (access open, miss stream)", banner
    assert banner[1].startswith(f"s3cache: cache {s.cache_dir}; status page http://127.0.0.1:{s.port}/;"), banner
    assert log.index("started sidecar") < log.index("started caddy") < log.index("started evictor")


# -- 2. every subcommand reads .env the way `up` does ---------------------------------------------------------


def test_subcommands_read_dot_env_in_the_current_directory_and_env_file(stacks, tmp_path):
    s = start(stacks, tmp_path)
    workdir = tmp_path / "ops"
    workdir.mkdir()
    (workdir / ".env").write_text(f"S3CACHE_SIDECAR_LISTEN={s.env['S3CACHE_SIDECAR_LISTEN']}\n"
                                  f"S3CACHE_DIR={s.cache_dir}\nS3CACHE_UPSTREAM={NOWHERE}\nS3CACHE_MAX_BYTES=1\n")
    cached = s.layout.object_path(ObjectRef("bkt", "only-in-this-cache.bin"))
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"x" * 4096)
    env = base_env(HOME=str(tmp_path))
    r = subprocess.run([str(BIN / "s3cache"), "stats", "--json"], env=env, cwd=workdir, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), dict)
    r = subprocess.run([str(BIN / "s3cache"), "evict", "--once", "--dry-run"], env=env, cwd=workdir,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "only-in-this-cache.bin" in r.stdout, r.stdout + r.stderr
    # --env-file names another file; the environment still wins over it.
    other = tmp_path / "other.env"
    other.write_text(f"S3CACHE_SIDECAR_LISTEN={s.env['S3CACHE_SIDECAR_LISTEN']}\n")
    r = subprocess.run([str(BIN / "s3cache"), "stats", "--env-file", str(other)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(BIN / "s3cache"), "stats", "--env-file", str(other)], cwd=tmp_path,
                       env=dict(env, S3CACHE_SIDECAR_LISTEN=f"127.0.0.1:{free_port()}"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1


# -- 1. s3cache reload ------------------------------------------------------------------------------------


def test_reload_applies_a_changed_env_file_without_dropping_a_connection(stacks, tmp_path):
    env_file = tmp_path / "s3cache.env"
    s = Stack(tmp_path / "stack", NOWHERE)
    sidecar = s.env.pop("S3CACHE_SIDECAR_LISTEN")
    del s.env["S3CACHE_UPSTREAM"]  # from the file, so a reload can change them
    env_file.write_text(f"S3CACHE_UPSTREAM={NOWHERE}\nS3CACHE_ACCESS=open\nS3CACHE_SIDECAR_LISTEN={sidecar}\n")
    stacks.append(s)
    s._log = open(s.log_path, "ab")
    s.proc = subprocess.Popen([str(BIN / "s3cache"), "up", "--env-file", str(env_file)], env=s.env,
                              stdout=s._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    s.wait_healthy()
    all_running(s)
    before = part_pids(s)
    children_before = sidecar_children(s)
    assert raw_request("PUT", s.url + "/bkt/k").headers["Location"] == NOWHERE + "/bkt/k"

    # A large cached object, downloaded slowly across the reload.
    big = Layout(s.cache_dir).object_path(ObjectRef("bkt", "big.bin"))
    big.parent.mkdir(parents=True, exist_ok=True)
    size = 64 * 1024 * 1024
    with open(big, "wb") as fh:
        fh.truncate(size)
    download = requests.get(s.url + "/bkt/big.bin", stream=True, timeout=30)
    assert download.status_code == 200 and download.headers["X-Cache"] == "HIT"
    chunks = download.iter_content(1 << 20)
    got = len(next(chunks))

    # Requests that need the sidecar keep being answered while it restarts.
    with ReloadClients(s.port) as clients:
        wait_until(lambda: len(clients.results) > 3, what="the clients to start")
        for upstream in ("http://127.0.0.1:9", "http://127.0.0.1:10"):  # two reloads, each a configuration swap
            env_file.write_text(f"S3CACHE_UPSTREAM={upstream}\nS3CACHE_ACCESS=open\nS3CACHE_SIDECAR_LISTEN={sidecar}\n")
            r = subprocess.run([str(BIN / "s3cache"), "reload", "--env-file", str(env_file)], env=s.env,
                               capture_output=True, text=True, timeout=150)
            assert r.returncode == 0, r.stdout + r.stderr + s.log_text()
            assert r.stdout.startswith("s3cache: reloaded")
        done = len(clients.results)
        wait_until(lambda: len(clients.results) > done + 20, what="requests after the reloads")
    for chunk in chunks:
        got += len(chunk)
    assert got == size  # the download in flight during the reload completed
    assert_nothing_dropped(clients.results, reloads=2)

    after = part_pids(s)
    assert after["caddy"] == before["caddy"]  # reloaded in place, not restarted
    assert after["sidecar"] != before["sidecar"] and after["evictor"] != before["evictor"]
    # The sidecar's own processes were replaced with it.
    for name, pid in children_before.items():
        wait_until(lambda: not alive(pid), timeout=15, what=f"the old {name} to stop")
    assert set(sidecar_children(s).values()).isdisjoint(children_before.values())
    assert raw_request("PUT", s.url + "/bkt/k").headers["Location"] == "http://127.0.0.1:10/bkt/k"  # Caddy's
    assert raw_request("GET", s.url + "/bkt/missing").headers["Location"] == "http://127.0.0.1:10/bkt/missing"

    # A bad file is refused before anything is asked of the stack; one the stack cannot apply is refused by it.
    # Either way it keeps running what it had.
    env_file.write_text("S3CACHE_UPSTREAM=ftp://nope\n")
    r = subprocess.run([str(BIN / "s3cache"), "reload", "--env-file", str(env_file)], env=s.env,
                       capture_output=True, text=True, timeout=150)
    assert r.returncode == 2 and "S3CACHE_UPSTREAM" in r.stderr, r.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        env_file.write_text(f"S3CACHE_UPSTREAM=http://127.0.0.1:11\nS3CACHE_SIDECAR_LISTEN={busy}\n")
        r = subprocess.run([str(BIN / "s3cache"), "reload", "--env-file", str(env_file)], env=s.env,
                           capture_output=True, text=True, timeout=150)
    assert r.returncode == 1 and f"S3CACHE_SIDECAR_LISTEN: {busy} is already in use" in r.stderr, r.stderr
    assert raw_request("PUT", s.url + "/bkt/k").headers["Location"] == "http://127.0.0.1:10/bkt/k"
    assert part_pids(s) == after
    assert "ERROR" not in s.log_text() and not caddy_lines_with(s.log_text(), "502")


def test_reload_without_a_running_stack_says_so(tmp_path):
    env = base_env(S3CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path))
    r = subprocess.run([str(BIN / "s3cache"), "reload"], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "no s3cache up is running" in r.stderr, r.stderr


def test_the_ansible_role_reloads_caddy_through_its_admin_socket():
    unit = (ROOT / "ansible/roles/s3cache/templates/s3cache-caddy.service.j2").read_text()
    reload_line = next(line for line in unit.splitlines() if line.startswith("ExecReload="))
    assert " reload --config " in reload_line and "--address unix//run/s3cache-caddy/admin.sock" in reload_line
    assert "CADDY_ADMIN=unix//run/s3cache-caddy/admin.sock" in unit and "RuntimeDirectory=s3cache-caddy" in unit


# -- 3. make run installs only the runtime --------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_installs_the_runtime_only_and_make_test_adds_the_tools(tmp_path):
    for name in ("Makefile", "pyproject.toml", "requirements.txt", "requirements-dev.txt", "requirements-deploy.txt"):
        shutil.copy(ROOT / name, tmp_path / name)

    def recipe(target: str) -> str:
        r = subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    run = recipe("run")
    assert "-r requirements.txt" in run and "requirements-dev.txt" not in run and "requirements-deploy.txt" not in run
    assert "-e ." in run and ".venv/bin/s3cache up" in run
    test = recipe("test")
    assert "-r requirements.txt" in test  # a fresh machine: `make test` alone installs everything it needs
    assert "requirements-dev.txt" in test and "requirements-deploy.txt" in test and "pytest" in test
