"""relaxed_gc raises the youngest generation's threshold for a block and always restores it."""

from __future__ import annotations

import gc

import pytest

from streamml.tuning import relaxed_gc


def test_thresholds_come_back_after_an_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), relaxed_gc(12_345):
        assert gc.get_threshold() == (12_345, *before[1:])
        raise RuntimeError("boom")
    assert gc.get_threshold() == before


def test_a_higher_threshold_already_set_is_kept() -> None:
    before = gc.get_threshold()
    gc.set_threshold(500_000, *before[1:])
    try:
        with relaxed_gc(1_000):
            assert gc.get_threshold()[0] == 500_000
    finally:
        gc.set_threshold(*before)


@pytest.mark.parametrize("gen0", [0, -1, 1.5, "100"])
def test_nonsense_thresholds_are_refused(gen0) -> None:
    with pytest.raises(ValueError, match="gen0"), relaxed_gc(gen0):
        pass
