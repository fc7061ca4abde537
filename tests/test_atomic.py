"""Units of s3cache.atomic: a file is replaced whole or not at all, and a reader never sees half of it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from typing import Callable

import pytest

from s3cache import atomic

BIG = 1 << 20  # larger than any write buffer: the temp file really holds part of it when a write fails


def test_a_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    atomic.write(target, "old")
    atomic.write(target, "né\n")
    assert target.read_bytes() == "né\n".encode("utf-8")
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path):
    # A file-size limit makes the disk refuse the write after 64 KiB of a megabyte reached the temp file
    # (EFBIG, as ENOSPC would); in a child process, so the limit binds nothing else.
    target = tmp_path / "state.json"
    atomic.write(target, "old")
    child = textwrap.dedent(f"""
        import resource, signal, sys
        from s3cache import atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            atomic.write({str(target)!r}, "x" * {BIG})
        except OSError as exc:
            sys.exit(f"refused: {{exc.strerror}}")
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 1 and "refused: File too large" in done.stderr, done.stderr
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_refused_rename_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    atomic.write(target, "old")

    def enospc(_src, _dst):
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        atomic.write(target, "new", install=enospc)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_named_temp_file_is_used_and_gone_afterwards(tmp_path):
    (tmp_path / "tmp").mkdir()
    target, temp = tmp_path / "meta", tmp_path / "tmp" / "x.part"
    seen = []

    def install(src, dst):
        seen.append(src)
        os.replace(src, dst)
    atomic.write(target, "record", temp=temp, install=install)
    assert seen == [str(temp)] and target.read_text() == "record" and not temp.exists()


def read_while_writing(whole: Callable[[], bool], writers: list[Callable[[], None]]) -> tuple[int, int]:
    """Run each writer in a thread of its own, and ``whole`` (did a read find a whole file?) in a loop meanwhile.

    Returns (reads, reads that found less than a whole file); at least one read happens.
    """
    done = threading.Event()
    counts = [0, 0]

    def reader():
        while True:
            last = done.is_set()
            counts[0] += 1
            counts[1] += not whole()
            if last:
                return

    r = threading.Thread(target=reader)
    r.start()
    threads = [threading.Thread(target=w) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    r.join()
    return counts[0], counts[1]


def test_readers_see_the_old_file_or_the_new_never_half_even_with_writers_in_several_threads(tmp_path):
    target = tmp_path / "state"
    contents = ["a" * BIG, "b" * (BIG // 2)]
    atomic.write(target, contents[0])
    failures = []

    def writer(n):
        try:
            for i in range(40):
                atomic.write(target, contents[(i + n) % 2])
        except Exception as exc:  # a temp name shared between threads shows up here
            failures.append(exc)

    reads, half = read_while_writing(lambda: target.read_text() in contents,
                                     [lambda n=n: writer(n) for n in range(3)])
    assert not half and not failures, f"{half} of {reads} reads found half a file; {failures}"
    assert os.listdir(tmp_path) == ["state"]
