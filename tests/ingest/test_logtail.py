"""Log tail: whole lines once each, across rename and copytruncate rotation and restarts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamml.ingest.logtail import LogTail


def _drain(tail: LogTail, deltas: list | None = None) -> list[bytes]:
    lines = []
    for _ in range(20):  # a few reads past the end: rotation is noticed at end of file
        read = tail.read(64)
        if read is not None:
            lines.extend(read.values)
            if deltas is not None:
                deltas.append(read.delta)
    return lines


def test_lines_come_whole_and_a_partial_last_line_waits(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\nbb\nccc")
    tail = LogTail(log)
    tail.restore(None, [])
    assert _drain(tail) == [b"a", b"bb"]
    with open(log, "ab") as f:
        f.write(b"c\n\nd\n")
    assert _drain(tail) == [b"cccc", b"", b"d"]  # an empty line is a record too


def test_rename_rotation_finishes_the_old_file_then_reads_the_new(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"1\n2\n")
    tail = LogTail(log)
    tail.restore(None, [])
    assert _drain(tail) == [b"1", b"2"]
    with open(log, "ab") as f:
        f.write(b"3\nlast without newline")
    os.rename(log, tmp_path / "app.log.1")
    log.write_bytes(b"4\n")
    assert _drain(tail) == [b"3", b"last without newline", b"4"]


def test_copytruncate_starts_the_file_again(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"1\n2\n3\n")
    tail = LogTail(log)
    tail.restore(None, [])
    assert _drain(tail) == [b"1", b"2", b"3"]
    (tmp_path / "app.log.1").write_bytes(log.read_bytes())
    with open(log, "r+b") as f:
        f.truncate(0)
    assert _drain(tail) == []
    with open(log, "ab") as f:
        f.write(b"4\n")
    assert _drain(tail) == [b"4"]


def test_a_restart_resumes_at_the_next_line_even_across_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"1\n2\n3\n")
    tail = LogTail(log)
    tail.restore(None, [])
    deltas: list = []
    assert _drain(tail, deltas) == [b"1", b"2", b"3"]
    tail.close()
    # while the agent is down: more lines, then a rotation, then more in the new file
    with open(log, "ab") as f:
        f.write(b"4\n")
    os.rename(log, tmp_path / "app.log.1")
    log.write_bytes(b"5\n")
    again = LogTail(log)
    again.restore(deltas[-1], [])
    assert _drain(again) == [b"4", b"5"]


def test_restore_prefers_the_last_spooled_position(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"1\n2\n3\n")
    ino = log.stat().st_ino
    tail = LogTail(log)
    tail.restore({"ino": ino, "offset": 2}, [{"ino": ino, "offset": 4}])
    assert _drain(tail) == [b"3"]  # 2 is spooled already: not read again


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    tail = LogTail(log)
    tail.restore(None, [])
    assert tail.read(64) is None
    log.write_bytes(b"hello\n")
    assert _drain(tail) == [b"hello"]


@given(
    chunks=st.lists(st.binary(max_size=50), max_size=30),
    read_size=st.integers(1, 64),
    rotate_at=st.integers(0, 30),
)
def test_any_bytes_in_any_chunks_come_out_as_exactly_their_whole_lines(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[bytes], read_size: int, rotate_at: int
) -> None:
    folder = tmp_path_factory.mktemp("log")
    log = folder / "app.log"
    log.write_bytes(b"")
    tail = LogTail(log)
    tail.restore(None, [])
    got: list[bytes] = []
    written = [b""]  # the content of each file, the current one last
    for i, chunk in enumerate(chunks):
        if i == rotate_at:  # rename rotation part-way
            os.rename(log, folder / f"app.log.{i}")
            log.write_bytes(b"")
            got.extend(_drain_sized(tail, read_size, len(written[-1])))
            written.append(b"")
        with open(log, "ab") as f:
            f.write(chunk)
        written[-1] += chunk
        got.extend(_drain_sized(tail, read_size, len(written[-1])))
    expected = []
    for i, content in enumerate(written):
        lines = content.split(b"\n")
        last = lines.pop()
        expected.extend(lines)
        if last and i < len(written) - 1:  # a rotated file's unfinished last line is sent
            expected.append(last)
    assert got == expected


def _drain_sized(tail: LogTail, size: int, unread: int) -> list[bytes]:
    lines = []
    for _ in range(unread // size + 4):  # every byte, then end of file and a rotation noticed
        read = tail.read(size)
        if read is not None:
            lines.extend(read.values)
    return lines
