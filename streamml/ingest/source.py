"""What every ingest source is: something the agent polls for records, with a position.

A source hands the agent one :class:`Read` at a time — a few thousand log
lines, a few files — with the *delta* its position takes once those records
are delivered. The agent spools the read, sends it, and only then folds the
delta into the committed positions (:meth:`Source.commit`). At start, a
source is put back where it was with :meth:`Source.restore`: the committed
position, then the deltas of reads still waiting in the spool, which are
already read and must not be read again.

:class:`~streamml.ingest.logtail.LogTail` and
:class:`~streamml.ingest.dirwatch.DirWatch` are the polled sources;
:class:`~streamml.ingest.http.HttpInput` pushes into the spool itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Read", "Source"]


@dataclass(frozen=True)
class Read:
    """Records from one poll of a source.

    Attributes:
        values: The records' bytes (a line without its newline, a file's content).
        labels: A name per record that a key can be taken from (the file
            name), or one name for all of them.
        delta: The position change once these records are delivered (JSON-able).
        keys: Keys given with the records (an HTTP ``?key=``): they replace
            the agent's key spec for this read.

    Examples:
        >>> Read([b"GET /"], ["access.log"], {"ino": 1, "offset": 6}).values
        [b'GET /']
    """

    values: Sequence[bytes]
    labels: Sequence[str]
    delta: Any
    keys: Sequence[bytes | None] | None = None


@runtime_checkable
class Source(Protocol):
    """A polled input of the agent (see the module docstring)."""

    @property
    def name(self) -> str:
        """Unique among the agent's sources: the key of its position on disk."""
        ...

    def restore(self, committed: Any, spooled: Sequence[Any]) -> None:
        """Resume after ``committed`` (``None``: never ran) and the spooled ``deltas``."""
        ...

    def read(self, max_bytes: int) -> Read | None:
        """The next records, about ``max_bytes`` at most; ``None`` when there is nothing new."""
        ...

    def commit(self, committed: Any, delta: Any) -> Any:
        """The committed position once the records of ``delta`` are delivered."""
        ...

    def close(self) -> None:
        """Release files."""
        ...
