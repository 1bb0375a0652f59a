"""label_join reads the usual prediction and label inline; anything else the general way.

The same events given as read-only mappings (``MappingProxyType``, not a
``dict``) always take the general path, so the two runs must agree on every
output: labelled and unlabelled events, rejections, late items and metrics.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.join._shards import LEFT, RIGHT, micros
from streamml.operators.join.label import _Config, _LabelLogic
from streamml.operators.join.metrics import ClassificationStats

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def grouped(rows):
    """``(side, key, item)`` rows as the shard step gets them: runs of one side's pairs."""
    out = []
    for side, key, item in rows:
        if out and out[-1][0] == side:
            out[-1][1].append((key, item))
        else:
            out.append((side, [(key, item)]))
    return out


def _config(regression: bool, probability: str | None) -> _Config:
    return _Config(
        step_id="l",
        getters=(lambda e: e["ts"], lambda e: e["ts"]),
        max_delay=micros(timedelta(seconds=5)),
        window=micros(timedelta(seconds=10)),
        lateness=micros(timedelta(seconds=2)),
        shards=1,
        prediction="prediction",
        label="label",
        probability=probability,
        model_version="model_version",
        regression=regression,
        pos_label=1,
        average="binary",
    )


def _plain(x: Any) -> Any:
    """Outputs made comparable: mappings as dicts, window parts as their counts and metrics."""
    if isinstance(x, MappingProxyType):
        return dict(x)
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "stats"):
        return (x.predictions, x.labelled, x.unlabelled, repr(x.stats.result()))
    return x


def _run(cfg: _Config, batches: list[list[tuple[int, str, Any]]]) -> list[list]:
    logic = _LabelLogic(cfg, None)
    outs: list[list] = [[], [], [], [], []]
    for result in [logic.on_batch(grouped(b))[0] for b in batches] + [logic.on_eof()[0]]:
        for lists in result:
            for acc, got in zip(outs, lists, strict=True):
                acc += _plain(got)
    return outs


_VALUES = st.one_of(
    st.integers(0, 1),
    st.booleans(),
    st.sampled_from(["0", "1"]),
    st.floats(0.0, 1.0),
    st.just(None),
    st.just([1]),  # unhashable
)
_PROBA = st.one_of(
    st.floats(0.01, 0.99),
    st.integers(0, 1),
    st.just(np.float32(0.25)),
    st.just({0: 0.4, 1: 0.6}),
    st.just("x"),
    st.just(None),
)


@st.composite
def _items(draw) -> list[tuple[int, str, dict[str, Any]]]:
    items = []
    for i in range(draw(st.integers(0, 30))):
        t = T0 + timedelta(seconds=i // 2 + draw(st.integers(-3, 3)))
        key = draw(st.sampled_from(["a", "b", "c"]))
        if draw(st.booleans()):
            e = {"ts": t, "prediction": draw(_VALUES), "p": draw(_PROBA)}
            if draw(st.booleans()):
                e["model_version"] = draw(st.sampled_from(["v1", "v2"]))
            if draw(st.integers(0, 9)) == 0:
                del e[draw(st.sampled_from(["prediction", "p"]))]
            items.append((LEFT, key, e))
        else:
            e = {"ts": t, "label": draw(_VALUES)}
            if draw(st.integers(0, 9)) == 0:
                del e["label"]
            items.append((RIGHT, key, e))
    return items


@settings(max_examples=300, deadline=None)
@given(
    _items(),
    st.lists(st.integers(0, 30), max_size=4),
    st.booleans(),
    st.sampled_from(["p", None]),
)
def test_inline_reading_matches_the_general_path(items, cuts, regression, probability) -> None:
    cfg = _config(regression, probability)
    bounds = [0, *sorted(set(c for c in cuts if c < len(items))), len(items)]
    batches = [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if a < b]
    proxied = [[(s, k, MappingProxyType(e)) for s, k, e in b] for b in batches]
    assert _run(cfg, batches) == _run(cfg, proxied)


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 1), st.floats(0.0, 1.0)),
        max_size=30,
    )
)
def test_float_probabilities_count_as_numbers_do(rows) -> None:
    """The float fast path of ClassificationStats.add against a float subclass (general path)."""

    class Proba(float):
        pass

    fast, general = ClassificationStats(), ClassificationStats()
    for y_true, y_pred, p in rows:
        fast.add(y_true, y_pred, p)
        general.add(y_true, y_pred, Proba(p))
    assert fast.result() == general.result()
