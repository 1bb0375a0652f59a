"""assemble: declared order and dtype, defaults or errors for bad features."""

from __future__ import annotations

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.featurize import Feature, FeatureSchema, assemble


def run(items, schema, **kwargs):
    flow = Dataflow("t")
    up = op.input("in", flow, TestingSource(items, batch_size=3))
    out = assemble("vec", up, schema=schema, **kwargs)
    oks, errs = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    return oks, errs


VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-(2**31), 2**31),
    st.sampled_from([1e39, -1e300, 2**2000, 2**70]),  # beyond float32 or float64
    st.none(),
    st.text(max_size=3),
    st.booleans(),
)


@settings(max_examples=80, deadline=None)
@given(
    events=st.lists(st.dictionaries(st.sampled_from("abcd"), VALUE, max_size=4), max_size=12),
    on_invalid=st.sampled_from(["error", "default"]),
)
def test_assemble_matches_reference(events, on_invalid):
    schema = FeatureSchema([Feature("c", default=-1.0), Feature("a"), Feature("d", default=None)])
    oks, errs = run(
        [("k", dict(e, id=i)) for i, e in enumerate(events)], schema, on_invalid=on_invalid
    )
    got = {e["id"]: e["features"] for _, e in oks}
    rejected = {r.original[1]["id"]: r.reason for r in errs}
    assert sorted(list(got) + list(rejected)) == list(range(len(events)))
    for i, ev in enumerate(events):
        row, bad = [], []
        for f in schema.features:
            v = ev.get(f.name)
            try:
                ok = isinstance(v, (int, float)) and abs(float(v)) <= float(
                    np.finfo(np.float32).max
                )
            except OverflowError:
                ok = False
            if ok:
                row.append(float(v))
            elif on_invalid == "default" and f.default is not None:
                row.append(f.default)
            else:
                bad.append(f.name)
        if bad:
            assert i in rejected and all(name in rejected[i] for name in bad)
        else:
            assert got[i].dtype == np.float32
            np.testing.assert_array_equal(got[i], np.array(row, dtype=np.float32))


def test_vector_features_and_float64():
    schema = FeatureSchema([Feature("x"), Feature("emb", width=3)], dtype="float64")
    items = [
        ("k", {"x": 1, "emb": np.array([1.0, 2.0, 3.0], dtype=np.float32)}),
        ("k", {"x": 2, "emb": [1.0, 2.0]}),  # wrong width
        ("k", {"x": 3, "emb": "abc"}),
        ("k", {"x": 4, "emb": [1.0, float("nan"), 0.0]}),
        "not a pair",
    ]
    oks, errs = run(items, schema)
    assert [e["features"].tolist() for _, e in oks] == [[1.0, 1.0, 2.0, 3.0]]
    assert oks[0][1]["features"].dtype == np.float64
    assert sorted(r.reason for r in errs) == [
        "emb has shape (2,), expected (3,)",
        "emb is not finite",
        "emb is str, not a number",
        "expected a (key, event) pair",
    ]


def test_schema_json_round_trip_and_validation(tmp_path):
    schema = FeatureSchema([Feature("a", default=None), Feature("b", width=4, default=0.5)])
    schema.to_json(tmp_path / "schema.json")
    assert FeatureSchema.from_json(tmp_path / "schema.json") == schema
    assert schema.width == 5
    with pytest.raises(ValueError, match="distinct"):
        FeatureSchema([Feature("a"), Feature("a")])
    with pytest.raises(ValueError, match="at least one"):
        FeatureSchema([])
    with pytest.raises(ValueError, match="default must be finite"):
        FeatureSchema([Feature("a", default=float("nan"))])
    with pytest.raises(ValueError, match="on_invalid"):
        run([], schema, on_invalid="drop")


_num = st.one_of(st.floats(-1e3, 1e3), st.just(float("nan")), st.just(float("inf")), st.none())


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(_num, _num, st.one_of(st.none(), st.lists(_num, min_size=1, max_size=3))),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from(["error", "default"]),
)
def test_assemble_frames_equal_rows(values, on_invalid):
    """The same vectors and the same rejected rows (with the same reasons) on both units."""
    import polars as pl

    schema = FeatureSchema(
        [Feature("a"), Feature("b", default=None), Feature("v", default=-1.0, width=2)]
    )
    rows = [{"id": i, "a": a, "b": b, "v": v} for i, (a, b, v) in enumerate(values)]
    # None is missing on both units: rows lacking the field, frames holding a null
    items = [("k", {k: x for k, x in r.items() if x is not None}) for r in rows]
    frame = pl.DataFrame(
        rows, schema={"id": pl.Int64, "a": pl.Float64, "b": pl.Float64, "v": pl.List(pl.Float64)}
    )
    kw = dict(schema=schema, on_invalid=on_invalid)
    oks_r, errs_r = run(items, **kw)
    oks_f, errs_f = run([frame], **kw)
    got = pl.concat(oks_f).to_dicts() if oks_f else []
    assert [e["id"] for _, e in oks_r] == [r["id"] for r in got]
    for (_, e), r in zip(oks_r, got):
        np.testing.assert_array_equal(np.asarray(r["features"], dtype=np.float32), e["features"])
    want = [(r.original[1]["id"], r.error_type, r.reason) for r in errs_r]
    assert want == [(r.original["id"], r.error_type, r.reason) for r in errs_f]
