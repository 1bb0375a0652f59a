"""The edge agent: read sources into the spool, send the spool to Kafka.

Two threads share one :class:`~streamml.ingest.spool.Spool`. The *reader*
polls the sources (log tails, watched directories), keys each read, runs
the edge model on it if there is one, and appends it to the spool — unless
the spool is full, in which case it stops reading (back-pressure) and says
so. HTTP POSTs go into the same spool from the server's threads. The
*sender* (:class:`~streamml.ingest.sender.Sender`) produces the spool in
order and commits positions once Kafka has confirmed.

Everything the agent knows lives in one state directory: ``positions.json``
(delivered positions, see :mod:`streamml.ingest.positions`), ``spool/``
(records read but not yet confirmed) and ``rejected/`` (records the broker
refused for good).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from streamml.ingest.edge import EdgeModel
from streamml.ingest.http import HttpInput
from streamml.ingest.keys import KeyFunction, key_function
from streamml.ingest.positions import Checkpoint
from streamml.ingest.progress import Progress
from streamml.ingest.sender import Sender
from streamml.ingest.source import Read, Source
from streamml.ingest.spool import Spool

__all__ = ["IngestAgent", "SpoolFull"]

logger = logging.getLogger(__name__)


class SpoolFull(RuntimeError):
    """The spool is at its bound: a pushed record must be offered again later."""


class IngestAgent:
    """Send log lines, files and posted records to one Kafka topic, losing and repeating none.

    Use it on the machine where the data appears (a camera's box, an
    application server) to get that data into Kafka, in place of a
    hand-written producer loop that loses records when the broker is away
    or sends them twice after a restart. See :mod:`streamml.ingest` for the
    guarantees.

    Args:
        brokers: Bootstrap servers, ``"host:port,..."``.
        topic: The topic to produce to (it must exist; the agent waits for it).
        state_dir: Where positions, the spool and refused records live. One
            agent per directory; keep it across restarts.
        sources: Polled sources (:class:`~streamml.ingest.logtail.LogTail`,
            :class:`~streamml.ingest.dirwatch.DirWatch`), names unique.
        key: A key spec or function (:func:`~streamml.ingest.keys.key_function`).
        edge: A model to run on each read (:class:`~streamml.ingest.edge.EdgeModel`).
        http: An HTTP endpoint to accept POSTs on (:class:`~streamml.ingest.http.HttpInput`).
        spool_max_bytes: Bound on the spool; when full, inputs pause.
        read_bytes: About how many bytes one read of a source takes.
        poll_interval: Seconds to wait when no source had anything new.
        producer_config: librdkafka settings over
            :data:`~streamml.ingest.sender.PRODUCER_DEFAULTS` (``compression.type``,
            ``linger.ms``, ``batch.size``, security settings...).
        max_records: Records sent per confirmation.
        fsync: ``fsync`` every spool block (survives a power cut; ``False``
            survives a killed process only).

    Examples:
        >>> import tempfile, pathlib
        >>> from streamml.ingest import LogTail
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> agent = IngestAgent("127.0.0.1:9092", "logs", folder / "state",
        ...                     sources=[LogTail(folder / "app.log")], key="regex:user=(\\\\w+)")
        >>> agent.status()["broker"]
        'connecting'
        >>> # with agent: ... runs it in the background until the block ends
    """

    def __init__(
        self,
        brokers: str,
        topic: str,
        state_dir: str | os.PathLike[str],
        *,
        sources: Sequence[Source] = (),
        key: str | KeyFunction | None = "name",
        edge: EdgeModel | None = None,
        http: HttpInput | None = None,
        spool_max_bytes: int = 256 << 20,
        read_bytes: int = 4 << 20,
        poll_interval: float = 0.1,
        producer_config: Mapping[str, Any] | None = None,
        max_records: int = 250_000,
        fsync: bool = True,
    ) -> None:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique; got {names}")
        if read_bytes <= 0 or poll_interval <= 0:
            raise ValueError(
                f"read_bytes and poll_interval must be > 0; got {read_bytes}, {poll_interval}"
            )
        self._sources = {s.name: s for s in sources}
        self._key = key_function(key)
        self._counts_missing = key not in (None, "none")
        self._edge = edge
        self._http = http
        self._read_bytes = read_bytes
        self._poll = poll_interval
        self.state_dir = Path(state_dir)
        self.checkpoint = Checkpoint.load(self.state_dir)
        self.spool = Spool(
            self.state_dir / "spool",
            max_bytes=spool_max_bytes,
            acked_seq=self.checkpoint.acked,
            fsync=fsync,
        )
        self.progress = Progress(spool_max=spool_max_bytes)
        self._sync_spool_progress()
        spooled: dict[str, list[Any]] = {}
        for name, delta in self.spool.unacked_deltas():
            spooled.setdefault(name, []).append(delta)
        for name, source in self._sources.items():
            source.restore(self.checkpoint.sources.get(name), spooled.get(name, []))
        self._sender = Sender(
            brokers,
            topic,
            self.spool,
            self.checkpoint,
            self._sources,
            self.progress,
            producer_config=producer_config,
            max_records=max_records,
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None

    def _sync_spool_progress(self) -> None:
        self.progress.spool_bytes = self.spool.unacked_bytes
        self.progress.spool_records = self.spool.unacked_records

    def status(self) -> dict[str, Any]:
        """The agent's counters and state (what ``GET /health`` serves)."""
        return self.progress.as_dict()

    def offer(self, source: str, read: Read) -> int:
        """Key, score and spool one read; return its first sequence number.

        The polled sources go through here, and so do pushed ones (HTTP),
        from any thread. Raises :class:`SpoolFull` when the spool is at its
        bound: nothing was taken, offer it again later.
        """
        if self.spool.full():
            self.progress.set_paused(True)
            raise SpoolFull(
                f"the spool holds {self.spool.unacked_bytes:,} bytes of its {self.spool.max_bytes:,}"
            )
        values = read.values
        keys = list(read.keys) if read.keys is not None else self._key(values, read.labels)
        notes: list[bytes | None]
        if self._edge is None:
            notes = [None] * len(values)
        else:
            values, notes = self._edge.apply(values)
        with self._lock:
            first = self.spool.append(source, read.delta, keys, values, notes)
            self.progress.read += len(values)
            if self._counts_missing:
                self.progress.keys_missing += keys.count(None)
            if self._edge is not None:
                self.progress.model_errors += sum(1 for n in notes if n and n[:1] == b"e")
            self._sync_spool_progress()
        return first

    def _read_loop(self) -> None:
        stop, sources = self._stop, list(self._sources.values())
        while not stop.is_set():
            if self.spool.full():
                self._sync_spool_progress()
                self.progress.set_paused(True)
                stop.wait(self._poll)
                continue
            self.progress.set_paused(False)
            idle = True
            for source in sources:
                read = source.read(self._read_bytes)
                if read is None:
                    continue
                idle = False
                self.offer(source.name, read)
                if self.spool.full():
                    break
            if idle:
                stop.wait(self._poll)

    @property
    def error(self) -> BaseException | None:
        """What stopped the agent, if it stopped on an error (a disk full, a broken source)."""
        return self._error

    def _guarded(self, target: Any) -> None:
        try:
            target()
        except BaseException as exc:
            logger.exception("the ingest agent stopped on an error")
            self._error = self._error or exc
            self._stop.set()

    def run(self) -> None:
        """Run in this thread until :meth:`stop` (or Ctrl-C); the sender runs beside it.

        Raises what stopped the reader or the sender, if anything did.
        """
        sender = threading.Thread(
            target=self._guarded,
            args=(lambda: self._sender.run(self._stop),),
            name="ingest-send",
        )
        sender.start()
        try:
            if self._http is not None:
                self._http.start(self)
            self._read_loop()
        finally:
            self._stop.set()
            if self._http is not None:
                self._http.stop()
            sender.join()
            for source in self._sources.values():
                source.close()
        if self._error is not None:
            raise self._error

    def start(self) -> IngestAgent:
        """Run in the background (see :meth:`run`); the HTTP input answers once this returns."""
        if self._http is not None:
            self._http.start(self)
        thread = threading.Thread(target=self._guarded, args=(self.run,), name="ingest-read")
        self._threads.append(thread)
        thread.start()
        return self

    @property
    def running(self) -> bool:
        """Whether the agent started with :meth:`start` is still at work."""
        return any(t.is_alive() for t in self._threads) and not self._stop.is_set()

    def stop(self) -> None:
        """Stop reading and sending; what is unconfirmed stays spooled for the next start."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def __enter__(self) -> IngestAgent:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
