"""The agent's committed state on disk: what Kafka has, and where each source stands.

One small JSON file, ``<state dir>/positions.json``, replaced atomically
(written to a temporary file, ``fsync``-ed, renamed over the old one), so a
crash leaves either the old state or the new one, never half of each. It
holds, together, because they must move together:

- ``agent``: this agent's id, written into every record's
  ``streamml-ingest`` header (``<agent>:<seq>``) so a restarted agent can
  recognise its own records in the topic;
- ``acked``: every record below this sequence number is confirmed delivered;
- ``sources``: each source's position *as of the delivered records* (a log
  file's inode and byte offset, a directory's taken file names);
- ``in_doubt``: the records being sent when the agent stopped, and the topic
  offsets from which they can only be found. A restarted agent reads the
  topic from there, and resends only the records it does not find.

Positions are committed only after delivery is confirmed: a record read but
not yet delivered is in the spool, and the source resumes after it.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Checkpoint", "InDoubt"]

_FILE = "positions.json"


@dataclass(frozen=True)
class InDoubt:
    """Records whose delivery was not confirmed: sequence numbers ``first..last``.

    ``offsets`` maps each partition to an offset at or before the first of
    them (read before they were sent): the only place they can be.
    """

    first: int
    last: int
    offsets: dict[int, int]


@dataclass
class Checkpoint:
    """The committed state of one agent (see the module docstring).

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> cp = Checkpoint.load(d)
        >>> cp.acked, cp.sources
        (0, {})
        >>> cp.acked, cp.sources["app.log"] = 10, {"ino": 5, "offset": 120}
        >>> cp.save()
        >>> again = Checkpoint.load(d)
        >>> again.acked, again.sources, again.agent == cp.agent
        (10, {'app.log': {'ino': 5, 'offset': 120}}, True)
    """

    directory: Path
    agent: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    acked: int = 0
    sources: dict[str, Any] = field(default_factory=dict)
    in_doubt: InDoubt | None = None

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Checkpoint:
        """Read the state in ``directory``, or start a new agent's state there."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        try:
            raw = orjson.loads((path / _FILE).read_bytes())
        except FileNotFoundError:
            fresh = cls(path)
            fresh.save()
            return fresh
        except orjson.JSONDecodeError as exc:
            raise ValueError(
                f"{path / _FILE} is not valid JSON ({exc}); it is the agent's delivery "
                "state: restore it, or start with an empty state directory"
            ) from None
        doubt = raw.get("in_doubt")
        return cls(
            path,
            agent=raw["agent"],
            acked=raw["acked"],
            sources=raw["sources"],
            in_doubt=None
            if doubt is None
            else InDoubt(
                doubt["first"], doubt["last"], {int(p): o for p, o in doubt["offsets"].items()}
            ),
        )

    def save(self) -> None:
        """Replace the file atomically and durably."""
        doubt = self.in_doubt
        data = orjson.dumps(
            {
                "agent": self.agent,
                "acked": self.acked,
                "sources": self.sources,
                "in_doubt": None
                if doubt is None
                else {
                    "first": doubt.first,
                    "last": doubt.last,
                    "offsets": {str(p): o for p, o in doubt.offsets.items()},
                },
            }
        )
        tmp = self.directory / (_FILE + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / _FILE)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
