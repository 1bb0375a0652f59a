"""Directory watch: whole files once each, oldest first; positions bounded by the directory."""

from __future__ import annotations

import os
from pathlib import Path

from streamml.ingest.dirwatch import DirWatch


def _put(path: Path, data: bytes, mtime: int) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))


def _take(watch: DirWatch) -> list[str]:
    names = []
    for _ in range(3):
        read = watch.read(1 << 20)
        if read is not None:
            names.extend(read.labels)
    return names


def test_files_go_oldest_first_matching_the_pattern_once_each(tmp_path: Path) -> None:
    _put(tmp_path / "b.jpg", b"B", 200)
    _put(tmp_path / "a.jpg", b"A", 300)
    _put(tmp_path / "c.txt", b"C", 100)
    _put(tmp_path / ".d.jpg", b"D", 100)  # a dot file: a writer's temporary
    watch = DirWatch(tmp_path, pattern="*.jpg")
    watch.restore(None, [])
    assert _take(watch) == ["b.jpg", "a.jpg"]
    assert _take(watch) == []


def test_a_file_still_growing_waits_until_it_holds_still(tmp_path: Path) -> None:
    watch = DirWatch(tmp_path)
    watch.restore(None, [])
    frame = tmp_path / "f.raw"
    _put(frame, b"half", 100)
    assert watch.read(1 << 20) is None
    _put(frame, b"half and the rest", 101)  # changed since the last scan
    assert watch.read(1 << 20) is None
    read = watch.read(1 << 20)
    assert read is not None and read.values == [b"half and the rest"]


def test_restore_skips_delivered_and_spooled_files(tmp_path: Path) -> None:
    for i in range(4):
        _put(tmp_path / f"{i}.jpg", b"x", 100 + i)
    watch = DirWatch(tmp_path)
    watch.restore(["0.jpg"], [["1.jpg"], ["2.jpg"]])
    assert _take(watch) == ["3.jpg"]


def test_commit_keeps_only_names_still_there_and_deletes_when_asked(tmp_path: Path) -> None:
    for i in range(3):
        _put(tmp_path / f"{i}.jpg", b"x", 100 + i)
    keep = DirWatch(tmp_path)
    keep.restore(None, [])
    assert _take(keep) == ["0.jpg", "1.jpg", "2.jpg"]
    (tmp_path / "0.jpg").unlink()
    assert keep.commit(["0.jpg"], ["1.jpg", "2.jpg"]) == ["1.jpg", "2.jpg"]

    delete = DirWatch(tmp_path, delete_sent=True)
    delete.restore(None, [])
    assert _take(delete) == ["1.jpg", "2.jpg"]
    assert delete.commit([], ["1.jpg"]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.jpg"]
