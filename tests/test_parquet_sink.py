"""parquet_sink to a local directory: layout, rows in = rows out, rejections, rolls, the commit protocol."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamml.errors import Rejected
from streamml.objectstore import STAGING, Committed, ParquetSink, _pieces, parquet_sink

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T0_MS = int(T0.timestamp() * 1000)


def visible(root: str | Path, hive: bool = True) -> pl.DataFrame:
    """Every committed file under ``root`` read with its hive columns, as a reader would."""
    files = sorted(p for p in Path(root).rglob("*.parquet") if STAGING not in p.parts)
    if not files:
        return pl.DataFrame()
    return pl.concat(
        [
            pl.read_parquet(f, hive_partitioning=hive).with_columns(file=pl.lit(str(f)))
            for f in files
        ],
        how="diagonal_relaxed",
    )


def run(items: list[Any], root: Path, batch: int = 10, **kwargs: Any) -> list[Rejected]:
    flow = Dataflow("parquet_test")
    errs: list[Rejected] = []
    up = op.input("in", flow, TestingSource(items, batch))
    kwargs.setdefault("time", "ts")
    op.output("errs", parquet_sink("pq", up, path=str(root), **kwargs), TestingSink(errs))
    run_main(flow)
    return errs


def test_rows_and_frames_land_in_hive_directories_and_bad_rows_are_rejected(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "sensor": ["a/b c", "x", None],
            "ts": [T0, T0 + timedelta(hours=1), T0 + timedelta(days=1, hours=23)],
            "p_hot": [0.1, 0.2, 0.3],
        }
    )
    rows = [
        {"sensor": "x", "ts": T0 + timedelta(minutes=5), "p_hot": 0.4},
        {"sensor": "x", "p_hot": 0.5},  # no event time
        "not a row",
        {"sensor": "x", "ts": T0, "p_hot": "hot"},  # a string among numbers
    ]
    objects = [
        {"sensor": "y", "ts": T0, "p_hot": 0.6, "tags": {"a", "b"}}
    ]  # a set: no Parquet type
    errs = run([frame, *rows, *objects], tmp_path, partition_by="sensor")
    assert sorted((e.error_type, str(e.original)) for e in errs) == sorted(
        [
            ("MissingField", str(rows[1])),
            ("BadItem", str(rows[2])),
            ("BadItem", str(rows[3])),
            ("BadItem", str(objects[0])),
        ]
    )
    dirs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert dirs == [
        "date=2026-01-01/hour=00/sensor=a%2Fb%20c",
        "date=2026-01-01/hour=00/sensor=x",
        "date=2026-01-01/hour=01/sensor=x",
        "date=2026-01-02/hour=23/sensor=__HIVE_DEFAULT_PARTITION__",
    ]
    got = visible(tmp_path).sort("p_hot")
    assert got["p_hot"].to_list() == [0.1, 0.2, 0.3, 0.4]
    assert got["sensor"].to_list() == ["a/b c", "x", None, "x"]
    assert not list((tmp_path / STAGING).iterdir())


def test_epoch_milliseconds_and_other_time_zones_give_the_utc_hour(tmp_path: Path) -> None:
    paris = timezone(timedelta(hours=1))
    frames = [
        pl.DataFrame({"ts": [T0_MS + 3_600_000], "v": [1]}),
        pl.DataFrame({"ts": [datetime(2026, 1, 1, 3, 30, tzinfo=paris)], "v": [2]}),
        pl.DataFrame({"ts": ["2026-01-01"], "v": [3]}),  # text is no time
        pl.DataFrame({"ts": [2**62, T0_MS], "v": [4, 5]}),  # year 146 million; 2026
    ]
    errs = run(frames, tmp_path, batch=1)
    assert [(e.error_type, e.original) for e in errs] == [
        ("BadTime", {"ts": "2026-01-01", "v": 3}),
        ("BadTime", {"ts": 2**62, "v": 4}),
    ]
    hours = {p.parent.name: pl.read_parquet(p)["v"].to_list() for p in tmp_path.rglob("*.parquet")}
    assert hours == {"hour=01": [1], "hour=02": [2], "hour=00": [5]}


def test_roll_by_size_splits_files_and_keeps_every_row_once(tmp_path: Path) -> None:
    items = [{"id": i, "ts": T0_MS + i} for i in range(400)]
    run(items, tmp_path, batch=20, roll_bytes=300)
    files = list(tmp_path.rglob("*.parquet"))
    assert len(files) >= 10
    assert sorted(visible(tmp_path)["id"].to_list()) == list(range(400))
    seqs = sorted(int(f.stem.rsplit("-", 1)[1]) for f in files)
    assert seqs == list(range(len(files)))


def test_bad_settings_fail_at_build(tmp_path: Path) -> None:
    flow = Dataflow("bad")
    up = op.input("in", flow, TestingSource([]))
    for kwargs, message in [
        ({"time": ""}, "time must name"),
        ({"time": "ts", "roll_bytes": 0}, "roll_bytes must be > 0"),
        ({"time": "ts", "roll_interval": timedelta(0)}, "roll_interval must be > 0"),
        ({"time": "ts", "parts": 0}, "parts must be >= 1"),
        ({"time": "ts", "compression": "zip"}, "compression must be one of"),
        ({"time": "ts", "name": "_x"}, "name must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            parquet_sink("pq", up, path=str(tmp_path), **kwargs)
    with pytest.raises(ValueError, match="nosuchstore"):
        parquet_sink("pq", up, path="nosuchstore://x", time="ts")


def _placed(ids: range, hour: int) -> tuple[str, pl.DataFrame]:
    frame = pl.DataFrame({"id": list(ids), "ts": [T0_MS + hour * 3_600_000] * len(ids)})
    pieces, bad = _pieces("t", "ts", None, frame)
    assert len(pieces) == 1 and not bad
    return pieces[0]


def _ids(root: Path) -> list[int]:
    got = visible(root)
    return sorted(got["id"].to_list()) if got.height else []


def test_files_appear_a_snapshot_late_and_a_resume_keeps_exactly_the_snapshot(
    tmp_path: Path,
) -> None:
    sink = ParquetSink(str(tmp_path))
    part = sink.build_part("pq", "0", None)
    part.write_batch([_placed(range(0, 10), 1)])
    first = part.snapshot()
    assert _ids(tmp_path) == []  # staged, listed by the snapshot, not yet visible
    part.write_batch([_placed(range(10, 20), 2)])
    second = part.snapshot()
    assert _ids(tmp_path) == list(range(10))
    part.write_batch([_placed(range(20, 30), 3)])
    part.snapshot()
    part.write_batch([_placed(range(30, 40), 3)])
    part._stage("date=2026-01-01/hour=03")  # a roll: staged, in no snapshot
    assert _ids(tmp_path) == list(range(20))
    # The process dies here (no close). The last durable snapshot is `second`: its staged
    # file (rows 10-19) is already committed; the files after it are deleted, to be rewritten.
    resumed = sink.build_part("pq", "0", second)
    assert _ids(tmp_path) == list(range(20))
    assert not list((tmp_path / STAGING).iterdir())
    resumed.write_batch([_placed(range(20, 40), 3)])  # the replay
    resumed.close()
    assert _ids(tmp_path) == list(range(40))
    # Had only `first` been durable: the committed file of rows 10-19 is retracted, since
    # its rows are replayed; the resume re-commits nothing twice.
    again = sink.build_part("pq", "0", first)
    assert _ids(tmp_path) == list(range(10))
    again.close()


def test_resume_commits_the_files_its_snapshot_staged(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), name="scores")
    part = sink.build_part("pq", "0", None)
    part.write_batch([_placed(range(5), 0), _placed(range(5, 8), 1)])
    state = part.snapshot()
    assert len(state.pending) == 2 and _ids(tmp_path) == []
    sink.build_part("pq", "0", state)
    assert _ids(tmp_path) == list(range(8))
    # A fresh run (no snapshot) never overwrites: it numbers its files after the last one.
    fresh = sink.build_part("pq", "0", None)
    fresh.write_batch([_placed(range(8, 9), 0)])
    fresh.close()
    assert _ids(tmp_path) == list(range(9))
    # A staged file the snapshot lists but the store lost is an error, not a silent loss.
    lost = Committed(100, ((99, "date=2026-01-01/hour=00/scores-0-00000099.parquet"),))
    with pytest.raises(FileNotFoundError, match="is gone"):
        sink.build_part("pq", "0", lost)


rows_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "ts": st.one_of(
                st.none(), st.integers(0, 4 * 24 * 3_600_000), st.integers(-(2**63), 2**64 - 1)
            ),
            "key": st.one_of(st.none(), st.text(max_size=6)),
            "x": st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-(2**70), 2**70)),
        }
    ),
    max_size=40,
)


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, batch=st.integers(1, 8), parts=st.integers(1, 3))
def test_every_row_is_written_once_or_rejected(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]], batch: int, parts: int
) -> None:
    root = tmp_path_factory.mktemp("pq")
    items = [{**row, "id": i} for i, row in enumerate(rows)]
    errs = run(items, root, batch=batch, partition_by="key", parts=parts, roll_bytes=200)
    rejected = sorted(e.original["id"] for e in errs)
    got = visible(root, hive=False)
    written = sorted(got["id"].to_list()) if got.height else []
    assert sorted(written + rejected) == list(range(len(items)))
    assert len(set(written)) == len(written)
    for row in got.iter_rows(named=True):
        item = items[row["id"]]
        hour = datetime.fromtimestamp(item["ts"] / 1000, timezone.utc)
        key = "__HIVE_DEFAULT_PARTITION__" if item["key"] is None else quote(item["key"], safe="")
        assert f"/date={hour.year:04d}-{hour:%m-%d}/hour={hour:%H}/key={key}/" in row["file"]
