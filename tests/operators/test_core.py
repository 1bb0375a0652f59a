"""The core under every family: the key router and versioned snapshot records."""

from __future__ import annotations

import pickle
import zlib

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamml.operators._core.keys import route
from streamml.operators._core.state import (
    StateVersionError,
    frame_from_bytes,
    frame_to_bytes,
    restore,
    snapshot,
)

keys = st.lists(st.one_of(st.none(), st.text(max_size=4)), max_size=40)


@given(keys, st.integers(min_value=1, max_value=9))
def test_route_partitions_rows_by_a_stable_hash(batch: list, shards: int) -> None:
    frame = pl.DataFrame(
        {"k": batch, "i": list(range(len(batch)))}, schema={"k": pl.String, "i": pl.Int64}
    )
    parts, bad = route(frame, key="k", shards=shards, step_id="s")
    seen = sorted(i for _, part in parts for i in part["i"].to_list()) + [
        r.original["i"] for r in bad
    ]
    assert sorted(seen) == list(range(len(batch)))
    assert all(r.error_type == "BadKey" and r.original["k"] is None for r in bad)
    for shard, part in parts:
        assert part["i"].to_list() == sorted(part["i"].to_list())  # order kept
        expected = {str(zlib.crc32(k.encode()) % shards) if shards > 1 else "0" for k in part["k"]}
        assert expected == {shard}


def test_integer_keys_share_shards_with_their_text() -> None:
    ints = pl.DataFrame({"k": [1, 2, 3, 40]})
    text = ints.with_columns(pl.col("k").cast(pl.String))
    as_int = [
        (s, p["k"].cast(pl.String).to_list())
        for s, p in route(ints, key="k", shards=3, step_id="s")[0]
    ]
    as_text = [(s, p["k"].to_list()) for s, p in route(text, key="k", shards=3, step_id="s")[0]]
    assert as_int == as_text


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (pl.DataFrame({"x": [1, 2]}), "no key column 'k'"),
        (pl.DataFrame({"k": [1.5, 2.5]}), "key column 'k' is Float64"),
        (pl.DataFrame({"k": [[1], [2]]}), "key column 'k' is List"),
    ],
)
def test_an_unusable_key_column_rejects_every_row_without_raising(
    frame: pl.DataFrame, why: str
) -> None:
    parts, bad = route(frame, key="k", shards=4, step_id="s")
    assert parts == [] and len(bad) == len(frame)
    assert all(r.reason.startswith(why) and r.error_type == "BadKey" for r in bad)


def test_shards_must_be_positive() -> None:
    with pytest.raises(ValueError, match="shards must be >= 1"):
        route(pl.DataFrame({"k": ["a"]}), key="k", shards=0, step_id="s")


def test_snapshot_records_pickle_without_streamml_classes() -> None:
    record = snapshot(
        "streamml.test", 3, {"frame": frame_to_bytes(pl.DataFrame({"a": [1]})), "n": np.arange(3)}
    )
    blob = pickle.dumps(record)
    assert b"streamml" not in blob.replace(
        b"streamml.test", b""
    )  # no class path to break on a move
    data = restore(pickle.loads(blob), kind="streamml.test", version=3)
    assert frame_from_bytes(data["frame"]).to_dicts() == [{"a": 1}]


def test_restore_upgrades_step_by_step_and_refuses_the_unknown() -> None:
    v1 = snapshot("streamml.test", 1, [1, 2])
    upgrades = {1: lambda d: {"values": d}, 2: lambda d: {**d, "count": len(d["values"])}}
    assert restore(v1, kind="streamml.test", version=3, upgrades=upgrades) == {
        "values": [1, 2],
        "count": 2,
    }
    with pytest.raises(StateVersionError, match="newer than this streamml reads"):
        restore(snapshot("streamml.test", 4, None), kind="streamml.test", version=3)
    with pytest.raises(StateVersionError, match="no upgrade"):
        restore(v1, kind="streamml.test", version=2)
    with pytest.raises(StateVersionError, match="before versioned snapshots"):
        restore((1, 2), kind="streamml.test", version=1)
