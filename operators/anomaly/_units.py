"""Small time helpers of the anomaly states: integer microseconds inside, checked ``timedelta`` outside."""

from __future__ import annotations

from datetime import timedelta

from streamml.operators import _validate
from streamml.operators._time import micros

__all__: list[str] = []

_MIN = -(1 << 62)
""""No time", in microseconds: the expiry of an empty state."""


def _us(td: timedelta) -> int:
    return micros(td)


def _positive(name: str, td: timedelta | None) -> None:
    _validate.duration(name, td, minimum="positive", optional=True)
