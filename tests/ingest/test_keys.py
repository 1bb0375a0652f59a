"""Key specs: the documented key for each record, and no key (never an error) when none is found."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamml.ingest.keys import key_function


def test_each_spec_finds_its_key() -> None:
    values = [b'{"device": {"id": "d1"}, "user": "u1"}', b"user=ada GET /", b"\xff\xfe"]
    assert key_function("none")(values, ["x"]) == [None, None, None]
    assert key_function("name")(values, ["app.log"]) == [b"app.log"] * 3
    assert key_function("name")(values[:2], ["a.jpg", "b.jpg"]) == [b"a.jpg", b"b.jpg"]
    assert key_function("json:device.id")(values, ["x"]) == [b"d1", None, None]
    assert key_function("json:user")(values, ["x"]) == [b"u1", None, None]
    assert key_function(r"regex:user=(?P<key>\w+)")(values, ["x"]) == [None, b"ada", None]
    assert key_function(r"regex:GET")(values, ["x"]) == [None, b"GET", None]  # no group: the match
    assert key_function(r"name-regex:^(cam\d+)")([b"", b""], ["cam7_1.jpg", "x.jpg"]) == [
        b"cam7",
        None,
    ]


@pytest.mark.parametrize("spec", ["colour", "regex:", "regex:(", "json:"])
def test_a_bad_spec_says_what_exists(spec: str) -> None:
    with pytest.raises(ValueError, match="key spec"):
        key_function(spec)


@given(values=st.lists(st.binary(max_size=60), min_size=1, max_size=20))
def test_any_bytes_get_a_key_or_none_never_an_error(values: list[bytes]) -> None:
    for spec in ("json:a.b", r"regex:k=(\d+)", "name", "none"):
        keys = key_function(spec)(values, ["f"])
        assert len(keys) == len(values)
        assert all(k is None or isinstance(k, bytes) for k in keys)
