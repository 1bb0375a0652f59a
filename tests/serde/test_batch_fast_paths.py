"""The serdes' whole-batch fast paths give exactly what one-value-at-a-time encoding gives."""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streamml.serde import JsonSerde, SerdeError, StringSerde
from streamml.serde.base import map_each
from streamml.serde.json import _default


def _same(got: list[Any], want: list[Any]) -> None:
    """Equal item by item, with SerdeErrors compared by kind and message."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if type(w) is SerdeError:
            assert type(g) is SerdeError and (g.kind, str(g)) == (w.kind, str(w))
        else:
            assert type(g) is type(w) and g == w


def _one_by_one(fn: Any, items: list[Any], kind: str) -> list[Any]:
    out = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as exc:  # noqa: BLE001
            out.append(SerdeError(kind, str(exc)))
    return out


class _Unencodable:
    def __repr__(self) -> str:
        return "<unencodable>"


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),  # beyond 64 bits orjson refuses
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.builds(_Unencodable),
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=20))
def test_map_each_equals_item_by_item(items: list[Any]) -> None:
    _same(map_each(int, items, "DecodeError"), _one_by_one(int, items, "DecodeError"))


@given(st.lists(_json_value, max_size=20), st.booleans())
def test_json_encode_batch_equals_one_value_at_a_time(values: list[Any], allow_nan: bool) -> None:
    def one(v: Any) -> bytes | None:
        if v is None:
            return None
        if not allow_nan and any(isinstance(x, float) and not math.isfinite(x) for x in _leaves(v)):
            raise ValueError("value contains NaN or infinity, which JSON cannot represent")
        return orjson.dumps(
            v, default=_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        )

    serde = JsonSerde(allow_nan=allow_nan)
    _same(serde.encode_batch(values), _one_by_one(one, values, "EncodeError"))


def _leaves(v: Any) -> list[Any]:
    if isinstance(v, dict):
        return [x for item in v.values() for x in _leaves(item)]
    if isinstance(v, list):
        return [x for item in v for x in _leaves(item)]
    return [v]


@given(st.lists(st.one_of(st.text(max_size=4), st.none(), st.integers(), st.floats()), max_size=20))
def test_string_encode_batch_equals_one_value_at_a_time(values: list[Any]) -> None:
    def one(v: Any) -> bytes | None:
        return None if v is None else str(v).encode()

    _same(StringSerde().encode_batch(values), _one_by_one(one, values, "EncodeError"))


@given(st.lists(st.one_of(st.binary(max_size=4), st.none()), max_size=20))
def test_string_decode_batch_equals_one_payload_at_a_time(payloads: list[bytes | None]) -> None:
    def one(p: bytes | None) -> str | None:
        return None if p is None else p.decode()

    _same(StringSerde().decode_batch(payloads), _one_by_one(one, payloads, "DecodeError"))
