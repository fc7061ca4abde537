"""Units of s3cache.metadata: the record's bytes stay what existing caches hold, and a reader never sees half."""

from __future__ import annotations

import json
import os

import pytest

from s3cache import metadata
from s3cache.layout import Layout, ObjectRef
from tests.test_atomic import read_while_writing

REF = ObjectRef("bkt", "dir/é.txt")
# A record exactly as fills have written it since the format began: existing caches hold these bytes.
RECORD = ('{"bucket": "bkt", "key": "dir/é.txt", "size": 3, "fetched_at": 1764633600.5, '
          '"headers": {"content-type": "text/plain", "etag": "\\"0123\\"", "x-amz-meta-owner": "ålice"}}')


@pytest.fixture
def layout(tmp_path):
    layout = Layout(tmp_path / "cache")
    layout.ensure()
    return layout


def _install_with_parents(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src, dst)


def test_a_fill_writes_the_record_byte_for_byte_as_before(layout, monkeypatch):
    monkeypatch.setattr(metadata.time, "time", lambda: 1764633600.5)
    told = {"content-type": "text/plain", "etag": '"0123"', "x-amz-meta-owner": "ålice",
            "content-length": "3", "x-amz-request-id": "R", "date": "today"}  # the last three are not kept
    metadata.write_fill(layout, REF, told, 3, install=_install_with_parents)
    assert layout.meta_path(REF).read_bytes() == RECORD.encode("utf-8")
    assert not os.listdir(layout.tmp_dir)


def test_a_record_written_before_reads_as_it_always_did(layout):
    path = layout.meta_path(REF)
    path.parent.mkdir(parents=True)
    path.write_bytes(RECORD.encode("utf-8"))
    assert metadata.load_headers(layout, REF) == {"content-type": "text/plain", "etag": '"0123"',
                                                  "x-amz-meta-owner": "ålice"}
    assert metadata.confirmed_at(layout, REF) == 1764633600.5
    metadata.mark_validated(layout, REF, now=1764637200.25)
    assert path.read_bytes() == (RECORD[:-1] + ', "validated_at": 1764637200.25}').encode("utf-8")
    assert metadata.confirmed_at(layout, REF) == 1764637200.25
    assert not os.listdir(layout.tmp_dir)


@pytest.mark.parametrize("text", ["", '{"headers": ', "[1, 2]", '{"headers": [1]}', '{"fetched_at": "soon"}'])
def test_a_missing_or_broken_record_reads_as_none(layout, text):
    assert metadata.load_headers(layout, REF) == {} and metadata.confirmed_at(layout, REF) is None
    path = layout.meta_path(REF)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert metadata.load_headers(layout, REF) == {} and metadata.confirmed_at(layout, REF) is None
    metadata.mark_validated(layout, REF, now=1.0)  # best effort: nothing raised
    assert path.read_text() == text or json.loads(path.read_text())["validated_at"] == 1.0


def test_no_record_is_made_up_by_a_validation(layout):
    metadata.mark_validated(layout, REF, now=1.0)
    assert not layout.meta_path(REF).exists() and not os.listdir(layout.tmp_dir)


def test_a_fill_whose_record_cannot_be_written_leaves_the_old_one_and_no_temp_file(layout):
    path = layout.meta_path(REF)
    path.parent.mkdir(parents=True)
    path.write_bytes(RECORD.encode("utf-8"))

    def enospc(_src, _dst):
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        metadata.write_fill(layout, REF, {"etag": '"new"'}, 9, install=enospc)
    assert path.read_bytes() == RECORD.encode("utf-8") and not os.listdir(layout.tmp_dir)


def test_concurrent_validations_never_show_a_reader_half_a_record(layout):
    # Revalidations of one object answer 304 in several waitress threads at once; each moves validated_at.
    path = layout.meta_path(REF)
    path.parent.mkdir(parents=True)
    padded = json.loads(RECORD)
    padded["headers"]["x-amz-meta-pad"] = "p" * 200_000  # big enough that a write is not one syscall
    path.write_text(json.dumps(padded, ensure_ascii=False), encoding="utf-8")

    def validator():
        for i in range(100):
            metadata.mark_validated(layout, REF, now=float(i))

    reads, half = read_while_writing(lambda: metadata.read(layout, REF) is not None, [validator] * 4)
    assert not half, f"{half} of {reads} reads found half a record"
    assert metadata.load_headers(layout, REF)["x-amz-meta-pad"] == "p" * 200_000
    assert not os.listdir(layout.tmp_dir)


def test_a_validation_never_writes_over_a_refresh_in_progress(layout):
    # A 304 for the old object races a refresh that holds the object's lock and is about to write the new
    # object's record: the confirmation is dropped rather than written back over the new record.
    from s3cache import objectlock
    path = layout.meta_path(REF)
    path.parent.mkdir(parents=True)
    path.write_bytes(RECORD.encode("utf-8"))
    lock = objectlock.try_lock(str(layout.temp_path(REF)))
    assert lock is not None
    try:
        metadata.mark_validated(layout, REF, now=1.0)
        assert path.read_bytes() == RECORD.encode("utf-8")
    finally:
        objectlock.release(lock, str(layout.temp_path(REF)))
    metadata.mark_validated(layout, REF, now=2.0)  # the lock free again: recorded
    assert json.loads(path.read_text())["validated_at"] == 2.0 and not os.listdir(layout.tmp_dir)
