"""Tail a log file line by line, across rotation, resuming exactly where delivery stopped.

A line is a record (without its newline); a last line still being written
waits for its newline. The position is the file's inode and the byte
offset after the last whole line, so a restarted agent starts at the next
line, never the same one twice.

Rotation is followed both ways logrotate does it:

- *rename and create* (the default): the file is renamed (``app.log`` →
  ``app.log.1``) and a new one created. At end of file the tail notices the
  name now points at another inode, reads the old file to its end (a last
  line without newline included), then starts the new file at 0. If the
  agent was stopped across a rotation, it finds the old file by its inode
  among the names beside it (``app.log.1``...) and finishes it first.
- *copytruncate*: the file is copied and truncated in place. The tail sees
  the file shorter than its offset and starts again at 0. (Lines written
  between the copy and the truncation are in the copy only: a limit of
  copytruncate itself, for every reader.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from streamml.ingest.source import Read

__all__ = ["LogTail"]

logger = logging.getLogger(__name__)


class LogTail:
    """Lines of one log file, with rotation (see the module docstring).

    Args:
        path: The log file's name (it need not exist yet).
        name: The source's name in positions and keys; the path by default.

    Examples:
        >>> import tempfile, pathlib
        >>> log = pathlib.Path(tempfile.mkdtemp()) / "app.log"
        >>> _ = log.write_bytes(b"one\\ntwo\\nthr")
        >>> tail = LogTail(log)
        >>> tail.restore(None, [])
        >>> r = tail.read(1 << 20)
        >>> r.values, r.delta["offset"]
        ([b'one', b'two'], 8)
        >>> tail.read(1 << 20) is None  # "thr" waits for its newline
        True
        >>> tail.close()
    """

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or str(self.path)
        self._label = self.path.name
        self._file: BinaryIO | None = None
        self._ino = -1
        self._offset = 0  # after the last whole line handed out
        self._partial = b""

    def restore(self, committed: Any, spooled: Sequence[Any]) -> None:
        position = spooled[-1] if spooled else committed
        self.close()
        if position is None:
            self._open_current(0)
            return
        ino, offset = position["ino"], position["offset"]
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino == ino:
            self._open_current(0 if st.st_size < offset else offset)
            return
        rotated = self._find_by_inode(ino)
        if rotated is not None:
            logger.info("%s was rotated while stopped; finishing %s first", self.path, rotated)
            self._open(rotated, offset)
            return
        logger.warning(
            "%s: the file read up to offset %d (inode %d) is gone; starting the current file at 0",
            self.path,
            offset,
            ino,
        )
        self._open_current(0)

    def _find_by_inode(self, ino: int) -> Path | None:
        try:
            siblings = list(self.path.parent.iterdir())
        except FileNotFoundError:
            return None
        for candidate in siblings:
            if candidate.name.startswith(self.path.name) and candidate != self.path:
                try:
                    if candidate.stat().st_ino == ino:
                        return candidate
                except FileNotFoundError:
                    continue
        return None

    def _open_current(self, offset: int) -> None:
        try:
            self._open(self.path, offset)
        except FileNotFoundError:
            self._file, self._ino, self._offset = None, -1, 0

    def _open(self, path: Path, offset: int) -> None:
        f = open(path, "rb")  # noqa: SIM115 - held open across reads, closed by close()
        st = os.fstat(f.fileno())
        if st.st_size < offset:
            offset = 0
        f.seek(offset)
        self._file, self._ino, self._offset, self._partial = f, st.st_ino, offset, b""

    def read(self, max_bytes: int) -> Read | None:
        if self._file is None:
            self._open_current(0)
            if self._file is None:
                return None
        data = self._file.read(max_bytes)
        if data:
            buf = self._partial + data if self._partial else data
            lines = buf.split(b"\n")
            self._partial = lines.pop()  # after the last newline: b"" or a line being written
            if not lines:
                return None
            self._offset += len(buf) - len(self._partial)
            return Read(lines, [self._label], self._delta())
        return self._at_end()

    def _delta(self) -> dict[str, int]:
        return {"ino": self._ino, "offset": self._offset}

    def _at_end(self) -> Read | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None  # renamed and not yet re-created: keep the old file for now
        if st.st_ino != self._ino:
            last = self._partial
            if last:  # the rotated file is finished: its last line has no newline
                self._offset += len(last)
                self._partial = b""
                return Read([last], [self._label], self._delta())
            logger.info("%s rotated: reading the new file from the start", self.path)
            self.close()
            self._open_current(0)
            return None
        if st.st_size < self._offset + len(self._partial):
            logger.info("%s truncated (copytruncate): reading it again from the start", self.path)
            self.close()
            self._open_current(0)
        return None

    def commit(self, committed: Any, delta: Any) -> Any:
        return delta

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
