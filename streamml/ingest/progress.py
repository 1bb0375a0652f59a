"""What the agent is doing, in counters and one line a person can read.

The reader and the sender update a :class:`Progress`; the CLI prints
:meth:`Progress.line` every few seconds and the HTTP input serves
:meth:`Progress.as_dict` at ``GET /health``. Changes of state (broker lost,
broker back, spool full, inputs resumed) are logged once, when they happen,
not on every poll.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Progress"]

logger = logging.getLogger("streamml.ingest")


def _mb(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


@dataclass
class Progress:
    """Counters of one agent (plain ints: one writer each, read by anyone).

    Examples:
        >>> p = Progress(spool_max=100_000_000)
        >>> p.read, p.sent = 1500, 1200
        >>> p.line(now=p.started + 10).startswith("read 1,500 | sent 1,200 (120/s) | spool 0 B of 100.0 MB")
        True
    """

    spool_max: int
    started: float = field(default_factory=time.monotonic)
    read: int = 0
    sent: int = 0
    resent: int = 0
    rejected: int = 0
    keys_missing: int = 0
    model_errors: int = 0
    spool_bytes: int = 0
    spool_records: int = 0
    broker: str = "connecting"
    paused: bool = False
    _last: tuple[float, int] = (0.0, 0)

    def set_broker(self, state: str, detail: str = "") -> None:
        """Record the broker's state (``up``, or what is wrong), logging changes of state."""
        if state != self.broker:
            if state == "up":
                logger.info("broker reachable: sending (%d records spooled)", self.spool_records)
            else:
                logger.warning(
                    "broker %s (%s); records wait in the spool", state, detail or "no detail"
                )
            self.broker = state

    def set_paused(self, paused: bool) -> None:
        """Record back-pressure from a full spool, logging changes."""
        if paused != self.paused:
            if paused:
                logger.warning(
                    "spool full (%s of %s): inputs paused until the broker takes records",
                    _mb(self.spool_bytes),
                    _mb(self.spool_max),
                )
            else:
                logger.info("spool has room again: inputs resumed")
            self.paused = paused

    def as_dict(self) -> dict[str, Any]:
        """The counters, for machines (``GET /health``)."""
        return {
            "read": self.read,
            "sent": self.sent,
            "resent": self.resent,
            "rejected": self.rejected,
            "keys_missing": self.keys_missing,
            "model_errors": self.model_errors,
            "spool_bytes": self.spool_bytes,
            "spool_records": self.spool_records,
            "spool_max": self.spool_max,
            "broker": self.broker,
            "paused": self.paused,
        }

    def line(self, now: float | None = None) -> str:
        """One line for people: totals, the send rate since the last line, the spool, the broker."""
        now = time.monotonic() if now is None else now
        since, sent_then = self._last if self._last[0] else (self.started, 0)
        rate = (self.sent - sent_then) / max(now - since, 1e-9)
        self._last = (now, self.sent)
        parts = [
            f"read {self.read:,}",
            f"sent {self.sent:,} ({rate:,.0f}/s)",
            f"spool {_mb(self.spool_bytes)} of {_mb(self.spool_max)}"
            + (" FULL: inputs paused" if self.paused else ""),
            f"broker {self.broker}",
        ]
        for label, n in (
            ("resent after doubt", self.resent),
            ("rejected by the broker", self.rejected),
            ("keys missing", self.keys_missing),
            ("model errors", self.model_errors),
        ):
            if n:
                parts.append(f"{label} {n:,}")
        return " | ".join(parts)
