"""infer_by_key: each event scored by its group's model, one call per model per batch, an LRU of models."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.infer.keyed import ModelCache, infer_by_key

from streamml.models import CallableModel


def _group(key: str) -> str:
    if key == "boom":
        raise KeyError(key)
    return f"m{int(key[1:]) % 5}"


class _Fleet:
    """Models m0..m4: model m<j> scores (j + 1) * sum(row); it records its calls and loads."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.calls: list[tuple[str, int]] = []

    def load(self, name: str) -> CallableModel:
        if name == "m4":
            raise FileNotFoundError("no file for m4")
        self.loads.append(name)
        weight = int(name[1:]) + 1

        def fn(x: np.ndarray) -> np.ndarray:
            self.calls.append((name, len(x)))
            return weight * x.sum(axis=1)

        return CallableModel(fn, outputs="score", shape=(2,), version=name)


@settings(max_examples=20, deadline=None)
@given(
    keys=st.lists(st.integers(0, 20), max_size=50),
    batch=st.integers(1, 20),
    max_models=st.integers(1, 4),
)
def test_each_event_is_scored_by_its_groups_model_once_per_batch(
    keys: list[int], batch: int, max_models: int
) -> None:
    fleet = _Fleet()
    events: list[Any] = [
        (f"k{k}", {"id": i, "features": [float(k), 1.0]}) for i, k in enumerate(keys)
    ]
    flow = Dataflow("by_key")
    up = op.input("in", flow, TestingSource(events, batch_size=batch))
    out = infer_by_key("s", up, model_for=_group, load=fleet.load, max_models=max_models)
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    # Brute force: group m4 cannot load; every other event is scored by its group's weight.
    failing = {i for i, k in enumerate(keys) if k % 5 == 4}
    assert sorted(e["id"] for _, e in oks) == [i for i in range(len(keys)) if i not in failing]
    for key, e in oks:
        k = int(key[1:])
        assert e["score"] == (k % 5 + 1) * (k + 1.0) and e["model_version"] == f"m{k % 5}"
    assert sorted(r.original[1]["id"] for r in errs) == sorted(failing)
    assert all(r.error_type == "ModelRejected" and "no file for m4" in r.reason for r in errs)
    for key in {k for k, _ in oks}:  # a key's events keep their order
        ids = [e["id"] for k, e in oks if k == key]
        assert ids == sorted(ids)
    # One call per model per source batch.
    want_calls = []
    for lo in range(0, len(keys), batch):
        groups: dict[str, int] = {}
        for k in keys[lo : lo + batch]:
            if k % 5 != 4:
                groups[f"m{k % 5}"] = groups.get(f"m{k % 5}", 0) + 1
        want_calls += sorted(groups.items())
    assert sorted(fleet.calls) == sorted(want_calls)
    assert len(out.models.names()) <= max_models


@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.sampled_from("abcdef"), max_size=40), capacity=st.integers(1, 4))
def test_the_cache_is_an_lru_of_its_capacity(names: list[str], capacity: int) -> None:
    loads = []
    cache = ModelCache(lambda n: loads.append(n) or CallableModel(abs, version=n), capacity)
    # Brute force LRU.
    held: OrderedDict[str, None] = OrderedDict()
    want_loads = []
    for n in names:
        assert cache.get(n).version == n
        if n in held:
            held.move_to_end(n)
        else:
            want_loads.append(n)
            held[n] = None
            if len(held) > capacity:
                held.popitem(last=False)
    assert loads == want_loads
    assert cache.names() == list(held)


def test_bad_keys_and_items_go_to_errs() -> None:
    fleet = _Fleet()
    events = [("boom", {"features": [1.0, 1.0]}), "junk", ("k1", {"features": [1.0]})]
    flow = Dataflow("by_key_bad")
    up = op.input("in", flow, TestingSource(events, batch_size=3))
    out = infer_by_key("s", up, model_for=_group, load=fleet.load)
    errs: list = []
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    assert [r.error_type for r in errs] == ["BadKey", "BadItem", "BadShape"]


def test_misconfiguration_is_refused_when_built() -> None:
    flow = Dataflow("bad")
    up = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="max_models must be an int >= 1"):
        infer_by_key("a", up, model_for=_group, load=_Fleet().load, max_models=0)
    with pytest.raises(ValueError, match="load must be a function"):
        infer_by_key("b", up, model_for=_group, load="models/")
