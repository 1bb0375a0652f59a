"""KeyedEventTime: rows held until a due time of the operator's own (what the joins use)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from streamml.operators._core.event_time import KeyedEventTime


@given(
    st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 50), st.integers(0, 20)), max_size=30),
    st.integers(0, 5),
)
def test_a_row_held_until_a_later_due_time_leaves_once_its_keys_watermark_reaches_it(rows, delay):
    et = KeyedEventTime(max_delay=timedelta(microseconds=delay))
    out: list[int] = []
    newest: dict[str, int] = {}
    for key, t, extra in rows:
        adm = et.admit([key], np.array([t]))
        if len(adm.ok):
            newest[key] = max(newest.get(key, t), t)
            et.hold(None, adm.kid, adm.ts + extra, np.zeros((1, 0)))
        released = et.release().held
        for kid, due in zip(released.kid.tolist(), released.ts.tolist()):
            # released only when the key's watermark has reached the due time
            assert due <= newest[et.key_of(kid)] - delay
            out.append(due)
    held = et.held
    for kid, due in zip(held.kid.tolist(), held.ts.tolist()):
        assert due > newest[et.key_of(kid)] - delay  # and kept until then, even at max_delay=0


def test_idle_release_moves_the_watermark_up_to_the_due_time():
    now = [0.0]
    et = KeyedEventTime(
        max_delay=timedelta(0), idle_release=timedelta(seconds=1), clock=lambda: now[0]
    )
    adm = et.admit(["k"], np.array([100]))
    et.hold(None, adm.kid, adm.ts + 50)
    assert len(et.release().held) == 0
    now[0] = 2.0
    assert et.release().held.ts.tolist() == [150]
    assert et.watermark("k") == 150
    assert et.admit(["k"], np.array([149])).late.tolist() == [0]
