"""Transforms against scikit-learn on the same inputs, and their bad-input outcomes."""

from __future__ import annotations

import bytewax.operators as op
import numpy as np
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction import FeatureHasher
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils import murmurhash3_32 as sk_murmur
from streamml.operators.featurize import (
    ScalerParams,
    hash_features,
    hash_text,
    one_hot,
    online_scale,
    standard_scale,
)
from streamml.operators.featurize._murmur import murmurhash3_32


def run(operator, items, batch_size=4, **kwargs):
    flow = Dataflow("t")
    up = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    out = operator("step", up, **kwargs)
    oks, errs = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    return oks, errs


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=40), st.integers(0, 2**32 - 1))
def test_murmurhash_matches_sklearn(texts, seed):
    got = murmurhash3_32([t.encode("utf-8") for t in texts], seed=seed).tolist()
    assert got == [sk_murmur(t, seed=seed) for t in texts]


def test_standard_scale_matches_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal([5.0, -3.0, 100.0], [2.0, 0.5, 30.0], size=(200, 3))
    fitted = StandardScaler().fit(train)
    params = ScalerParams.from_sklearn(fitted, ["a", "b", "c"])
    params.to_json(tmp_path / "scaler.json")
    assert ScalerParams.from_json(tmp_path / "scaler.json") == params
    test = rng.normal(size=(50, 3)) * 10
    items = [("k", {"id": i, "a": r[0], "b": r[1], "c": r[2]}) for i, r in enumerate(test.tolist())]
    oks, errs = run(standard_scale, items, params=params)
    assert errs == []
    got = np.array([[e["a_scaled"], e["b_scaled"], e["c_scaled"]] for _, e in oks])
    np.testing.assert_allclose(got, fitted.transform(test), rtol=1e-12)
    assert oks[0][1]["a"] == items[0][1]["a"]  # the input fields stay


def test_standard_scale_bad_input_and_params():
    params = ScalerParams(("a",), (0.0,), (2.0,))
    items = [("k", {"a": "x"}), ("k", {"b": 1.0}), ("k", {"a": float("inf")}), ("k", {"a": 4})]
    oks, errs = run(standard_scale, items, params=params, suffix="")
    assert [e["a"] for _, e in oks] == [2.0]
    assert [r.error_type for r in errs] == ["NotANumber", "MissingField", "NonFinite"]
    with pytest.raises(ValueError, match="scale finite and > 0"):
        ScalerParams(("a",), (0.0,), (0.0,))
    with pytest.raises(ValueError, match="equal length"):
        ScalerParams(("a", "b"), (0.0,), (1.0,))


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from("ab"), st.integers(-1000, 1000), st.integers(-50, 50)),
        min_size=1,
        max_size=30,
    ),
    batch_size=st.integers(1, 6),
)
def test_online_scale_matches_sklearn_refit_on_history(rows, batch_size):
    items = [(k, {"id": i, "x": x / 7, "y": float(y)}) for i, (k, x, y) in enumerate(rows)]
    oks, errs = run(online_scale, items, batch_size=batch_size, fields=["x", "y"])
    assert errs == []
    got = {e["id"]: (e["x_scaled"], e["y_scaled"]) for _, e in oks}
    assert sorted(got) == list(range(len(items)))
    for i, (key, ev) in enumerate(items):
        history = [[e["x"], e["y"]] for k, e in items[: i + 1] if k == key]
        want = StandardScaler().fit(history).transform([[ev["x"], ev["y"]]])[0]
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-9)


def test_online_scale_global_state():
    items = [("a", {"x": 1.0}), ("b", {"x": 3.0}), ("c", {"x": "bad"})]
    oks, errs = run(online_scale, items, batch_size=1, fields=["x"], per_key=False)
    assert [(k, e["x_scaled"]) for k, e in oks] == [("a", 0.0), ("b", 1.0)]
    assert [r.error_type for r in errs] == ["NotANumber"]


def test_online_scale_forgets_idle_keys():
    from datetime import datetime, timedelta, timezone

    from streamml.operators.featurize.scaling import _RowScaleLogic

    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    ttl = timedelta(seconds=5)
    logic = _RowScaleLogic("s", ("x",), ["x_scaled"], ttl, None, clock=clock)
    logic.on_batch([("a", {"x": 1.0}), ("a", {"x": 3.0})])
    assert logic.notify_at() == datetime.fromtimestamp(105.0, tz=timezone.utc)
    restored = _RowScaleLogic("s", ("x",), ["x_scaled"], None, logic.snapshot(), clock=clock)
    assert (restored.n, restored.mean) == (2, [2.0])
    now[0] = 105.0
    assert logic.on_notify() == ([], True)  # discarded: Bytewax drops the key's state


def test_online_scale_frames_forget_idle_keys_of_a_shard():
    from datetime import timedelta

    from streamml.operators.featurize.scaling import _OnlineScaleLogic

    now = [100.0]
    logic = _OnlineScaleLogic(
        "s", ("x",), ["x_scaled"], timedelta(seconds=5), None, key="k", clock=lambda: now[0]
    )
    logic.on_batch([pl.DataFrame({"k": ["a", "b", "a"], "x": [1.0, 7.0, 3.0]})])
    now[0] = 103.0
    logic.on_batch([pl.DataFrame({"k": ["b"], "x": [9.0]})])
    now[0] = 106.0
    assert logic.on_notify() == ([], False)  # "a" is forgotten, "b" stays
    assert logic.moments.keys == ["b"]
    [(oks, _)], discard = logic.on_batch([pl.DataFrame({"k": ["a", "b"], "x": [5.0, 8.0]})])
    assert oks[0]["x_scaled"].to_list() == [0.0, 0.0]  # "a" starts afresh; "b" at its mean 8
    now[0] = 200.0
    assert logic.on_notify() == ([], True)


def test_one_hot_matches_sklearn_plus_other():
    cats = ["red", "green", "blue"]
    values = ["green", "blue", "mauve", "red", "red", "", "GREEN"]
    items = [("k", {"c": v}) for v in values]
    oks, errs = run(one_hot, items, field="c", categories=cats)
    assert errs == []
    got = np.array([[e[f"c_{c}"] for c in cats] for _, e in oks])
    enc = OneHotEncoder(categories=[cats], handle_unknown="ignore").fit([[c] for c in cats])
    np.testing.assert_array_equal(got, enc.transform([[v] for v in values]).toarray())
    assert [e["c_other"] for _, e in oks] == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_one_hot_unknown_as_error_and_missing():
    items = [("k", {"c": "x"}), ("k", {}), ("k", {"c": ["unhashable"]}), ("k", {"c": "a"})]
    oks, errs = run(one_hot, items, field="c", categories=["a"], other=False)
    assert [e["c_a"] for _, e in oks] == [1.0]
    assert [r.error_type for r in errs] == ["UnknownCategory", "MissingField", "UnknownCategory"]
    with pytest.raises(ValueError, match="distinct"):
        run(one_hot, [], field="c", categories=["a", "a"])


def test_hash_features_matches_feature_hasher():
    rng = np.random.default_rng(3)
    events = [
        {"user": f"u{rng.integers(10**6)}", "ip": f"10.0.{rng.integers(255)}.1"} for _ in range(200)
    ]
    oks, errs = run(hash_features, [("k", e) for e in events], fields=["user", "ip"], n_features=64)
    assert errs == []
    want = FeatureHasher(64, input_type="dict").transform(events).toarray()
    got = np.array([e["hashed"] for _, e in oks])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_hash_features_bad_input():
    items = [("k", {"user": 5}), ("k", {}), ("k", {"user": "ok"})]
    oks, errs = run(hash_features, items, fields=["user"], n_features=4, alternate_sign=False)
    assert [e["hashed"].sum() for _, e in oks] == [1.0]
    assert [r.error_type for r in errs] == ["NotAString", "MissingField"]


@pytest.mark.parametrize("ngrams", [(1, 1), (1, 2), (2, 3)])
@pytest.mark.parametrize("norm", ["l2", "l1", None])
def test_hash_text_matches_hashing_vectorizer(ngrams, norm):
    texts = [
        "Loved it!! Would buy again",
        "terrible, TERRIBLE service; never again",
        "",
        "a b c",  # single letters are not tokens
        "naïve café — déjà vu 東京 tokyo",
        "the the the the cat",
    ]
    oks, errs = run(
        hash_text,
        [("p", {"text": t}) for t in texts],
        field="text",
        n_features=256,
        ngram_range=ngrams,
        norm=norm,
    )
    assert errs == []
    want = HashingVectorizer(n_features=256, ngram_range=ngrams, norm=norm).transform(texts)
    got = np.array([e["text_hashed"] for _, e in oks])
    assert got.dtype == np.float32 and got.shape == (len(texts), 256)
    np.testing.assert_allclose(got, want.toarray(), rtol=1e-6, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet="ab cDE!é", max_size=40), min_size=1, max_size=10))
def test_hash_text_random_texts_match(texts):
    oks, _ = run(
        hash_text,
        [("p", {"t": t}) for t in texts],
        field="t",
        n_features=32,
        ngram_range=(1, 2),
        lowercase=False,
    )
    want = HashingVectorizer(n_features=32, ngram_range=(1, 2), lowercase=False).transform(texts)
    np.testing.assert_allclose(
        np.array([e["t_hashed"] for _, e in oks]), want.toarray(), rtol=1e-6, atol=1e-7
    )


def test_hash_text_bad_input_and_config():
    oks, errs = run(hash_text, [("p", {"text": None}), ("p", {})], field="text")
    assert oks == [] and [r.error_type for r in errs] == ["NotAString", "MissingField"]
    with pytest.raises(ValueError, match="ngram_range"):
        run(hash_text, [], field="t", ngram_range=(2, 1))
    with pytest.raises(ValueError, match="norm"):
        run(hash_text, [], field="t", norm="max")


# -- frames: the same results as rows, bad rows rejected one by one ------------------


def _frame_rows(operator, rows, **kwargs):
    """Run ``operator`` on ``rows`` (dicts) as ``(key, dict)`` items and as one frame."""
    items = [("k", r) for r in rows]
    oks_r, errs_r = run(operator, items, batch_size=len(items) or 1, **kwargs)
    frame = pl.DataFrame(rows)
    oks_f, errs_f = run(operator, [frame], batch_size=1, **kwargs)
    got = pl.concat(oks_f).to_dicts() if oks_f else []
    return [e for _, e in oks_r], errs_r, got, errs_f


def _same(row_out, frame_out, names):
    assert len(row_out) == len(frame_out)
    for r, f in zip(row_out, frame_out):
        assert r["id"] == f["id"]
        for name in names:
            want = np.asarray(r[name], dtype=np.float64)
            np.testing.assert_allclose(np.asarray(f[name], dtype=np.float64), want, rtol=1e-12)


_values = st.one_of(st.floats(-1e6, 1e6), st.just(float("nan")), st.just(float("inf")), st.none())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(_values, st.floats(-1e3, 1e3)), min_size=1, max_size=30))
def test_standard_scale_frames_equal_rows(values):
    rows = [{"id": i, "a": a, "b": b} for i, (a, b) in enumerate(values)]
    params = ScalerParams(("a", "b"), (1.0, -2.0), (3.0, 0.5))
    by_rows, errs_r, by_frame, errs_f = _frame_rows(standard_scale, rows, params=params)
    _same(by_rows, by_frame, ["a_scaled", "b_scaled"])
    # None is a missing value on both paths (rows: NotANumber, frames: null = MissingField)
    kinds = {"NotANumber": "MissingField"}
    assert [(r.original[1]["id"], kinds.get(r.error_type, r.error_type)) for r in errs_r] == [
        (r.original["id"], r.error_type) for r in errs_f
    ]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("ab"), st.one_of(st.floats(-1e3, 1e3), st.just(float("nan")))),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 3),
)
def test_online_scale_frames_equal_rows(values, shards):
    rows = [{"id": i, "k": k, "x": x} for i, (k, x) in enumerate(values)]
    oks_r, errs_r = run(online_scale, [(r["k"], r) for r in rows], batch_size=7, fields=["x"])
    frames = [pl.DataFrame(rows[i : i + 5]) for i in range(0, len(rows), 5)]
    oks_f, errs_f = run(online_scale, frames, batch_size=2, fields=["x"], key="k", shards=shards)
    got = {r["id"]: r["x_scaled"] for r in (pl.concat(oks_f).to_dicts() if oks_f else [])}
    want = {e["id"]: e["x_scaled"] for _, e in oks_r}
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-9, atol=1e-9)
    assert sorted(r.original["id"] for r in errs_f) == sorted(r.original[1]["id"] for r in errs_r)
    assert {r.error_type for r in errs_f} <= {"NonFinite"}


def test_online_scale_frames_reject_bad_keys_and_rows_without_key():
    frame = pl.DataFrame({"k": ["a", None, "a"], "x": [1.0, 2.0, 3.0]})
    oks, errs = run(online_scale, [frame, ("a", {"x": 1.0})], batch_size=2, fields=["x"], key="k")
    assert pl.concat(oks)["x_scaled"].to_list() == [0.0, 1.0]
    assert sorted(r.error_type for r in errs) == ["BadItem", "BadKey"]
    oks, errs = run(online_scale, [frame], fields=["x"])  # rows path: a frame needs key=
    assert oks == [] and [r.error_type for r in errs] == ["BadItem"]
    oks, errs = run(online_scale, [frame.drop("k")], fields=["x"], per_key=False)
    assert pl.concat(oks)["x_scaled"].to_list() == [0.0, 1.0, pytest.approx(1.2247448713915)]
    with pytest.raises(ValueError, match="per_key=False"):
        run(online_scale, [], fields=["x"], key="k", per_key=False)


_cats = st.one_of(st.sampled_from(["red", "green", "blue", "RED", ""]), st.none())


@settings(max_examples=30, deadline=None)
@given(st.lists(_cats, min_size=1, max_size=30), st.booleans())
def test_one_hot_frames_equal_rows(values, other):
    rows = [{"id": i, "c": c} for i, c in enumerate(values) if c is not None]
    rows += [{"id": 100 + i} for i, c in enumerate(values) if c is None]  # missing
    frame_rows = [{"c": None, **r} for r in rows]
    items = [("k", r) for r in rows]
    kwargs = dict(field="c", categories=["red", "green", "blue"], other=other)
    oks_r, errs_r = run(one_hot, items, batch_size=len(items), **kwargs)
    oks_f, errs_f = run(one_hot, [pl.DataFrame(frame_rows)], batch_size=1, **kwargs)
    names = ["c_red", "c_green", "c_blue"] + (["c_other"] if other else [])
    _same([e for _, e in oks_r], pl.concat(oks_f).to_dicts() if oks_f else [], names)
    assert [(r.original[1]["id"], r.error_type) for r in errs_r] == [
        (r.original["id"], r.error_type) for r in errs_f
    ]


_words = st.text(alphabet="ab cDE!é東", max_size=30)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(_words, st.none(), st.integers()), min_size=1, max_size=20))
def test_hashers_frames_equal_rows(texts):
    texts = [t for t in texts if not isinstance(t, int)]  # a frame column has one type
    if not texts:
        return
    rows = [{"id": i, "t": t, "u": f"user{i % 3}"} for i, t in enumerate(texts)]
    for op_, kwargs, name in [
        (hash_text, dict(field="t", n_features=64, ngram_range=(1, 2)), "t_hashed"),
        (hash_features, dict(fields=["u", "t"], n_features=32), "hashed"),
    ]:
        by_rows, errs_r, by_frame, errs_f = _frame_rows(op_, rows, **kwargs)
        _same(by_rows, by_frame, [name])
        # None: rows NotAString (a value that is not a str), frames MissingField (null)
        assert [r.original[1]["id"] for r in errs_r] == [r.original["id"] for r in errs_f]
        assert {r.error_type for r in errs_f} <= {"MissingField"}


def test_hashers_reject_a_frame_column_that_is_not_text():
    frame = pl.DataFrame({"t": [1, 2]})
    oks, errs = run(hash_text, [frame], field="t")
    assert oks == [] and [r.error_type for r in errs] == ["NotAString", "NotAString"]
    oks, errs = run(hash_features, [frame.with_columns(u=pl.lit("x"))], fields=["u", "t"])
    assert oks == [] and [r.error_type for r in errs] == ["NotAString", "NotAString"]
