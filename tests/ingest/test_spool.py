"""The spool: blocks come back as written, survive a reopen, a torn tail is cut, the bound holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamml.ingest.spool import Spool


def _records(spool: Spool) -> list[tuple[int, str, object, list, list, list]]:
    blocks = [spool.read(e) for e in spool.pending(10**9)]
    return [
        (b.first_seq, b.source, b.delta, list(b.keys), list(b.values), list(b.notes))
        for b in blocks
    ]


maybe_bytes = st.one_of(st.none(), st.binary(max_size=40))
block = st.integers(1, 8).flatmap(
    lambda n: st.tuples(
        st.lists(maybe_bytes, min_size=n, max_size=n),
        st.lists(st.binary(max_size=40), min_size=n, max_size=n),
        st.lists(maybe_bytes, min_size=n, max_size=n),
    )
)


@given(blocks=st.lists(block, min_size=1, max_size=6))
def test_blocks_read_back_as_written_and_after_a_reopen(tmp_path_factory, blocks) -> None:
    directory = tmp_path_factory.mktemp("spool")
    spool = Spool(directory, max_bytes=1 << 30, fsync=False)
    expected, seq = [], 0
    for i, (keys, values, notes) in enumerate(blocks):
        assert spool.append("src", {"i": i}, keys, values, notes) == seq
        expected.append((seq, "src", {"i": i}, keys, values, notes))
        seq += len(values)
    assert _records(spool) == expected
    again = Spool(directory, max_bytes=1 << 30)
    assert again.next_seq == seq
    assert _records(again) == expected


def test_acknowledged_blocks_are_gone_after_release_and_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=100)
    for i in range(5):
        spool.append("s", i, [None, None], [b"x" * 60, b"y"], [None, None])
    assert len(list(tmp_path.glob("*.seg"))) == 5  # a segment per block at this segment size
    spool.release(6)  # blocks 0..2 (seqs 0-5) delivered
    assert [b.delta for b in map(spool.read, spool.pending(100))] == [3, 4]
    assert len(list(tmp_path.glob("*.seg"))) == 2
    reopened = Spool(tmp_path, max_bytes=1 << 20, acked_seq=6)
    assert reopened.unacked_deltas() == [("s", 3), ("s", 4)]
    assert reopened.unacked_records == 4


def test_a_torn_last_block_is_cut_off_at_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append("s", 1, [None], [b"whole"], [None])
    spool.append("s", 2, [None], [b"torn by a crash"], [None])
    segment = next(tmp_path.glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # the last block lost its end
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert reopened.unacked_deltas() == [("s", 1)]
    assert reopened.next_seq == 1  # the torn record's number is given again
    reopened.append("s", 3, [None], [b"next"], [None])
    assert [b.values for b in map(reopened.read, reopened.pending(10))] == [[b"whole"], [b"next"]]


def test_full_at_the_bound_and_room_again_after_release(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=500)
    while not spool.full():
        spool.append("s", None, [None], [b"z" * 100], [None])
    assert spool.unacked_bytes >= 500
    spool.release(spool.next_seq)
    assert not spool.full() and spool.unacked_bytes == 0


def test_pending_takes_whole_blocks_up_to_the_record_limit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for n in (3, 3, 3):
        spool.append("s", n, [None] * n, [b"v"] * n, [None] * n)
    assert [e.count for e in spool.pending(7)] == [3, 3]
    assert [e.count for e in spool.pending(1)] == [3]  # never less than one block


def test_a_block_needs_matching_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="as many keys, values and notes"):
        Spool(tmp_path, max_bytes=10).append("s", None, [None], [b"a", b"b"], [None])
    with pytest.raises(ValueError, match="max_bytes must be > 0"):
        Spool(tmp_path, max_bytes=0)
