"""The producer loop: spool → Kafka, committing positions only after delivery is confirmed.

One cycle takes the oldest spooled blocks (up to ``max_records``), notes
them *in doubt* on disk with the topic's end offsets read just before,
produces them (batched and compressed by librdkafka, each with a
``streamml-ingest: <agent>:<seq>`` header), and waits until the broker has
acknowledged every one. Then, in one atomic write, the checkpoint's
``acked`` moves past them, the sources' positions take their deltas and
the doubt is cleared; the spool drops them.

When a cycle cannot be confirmed — the broker is down, a delivery timed
out, the producer failed, the agent was killed — its records are in doubt:
some may be in the topic. Before sending them again, the sender reads the
topic from the noted offsets and skips every record of its own it finds
there (by the header). So a record is in the topic once: not lost, not
duplicated, whether the broker or the agent went down.

A record the broker refuses for good (larger than the broker accepts) is
written to ``<state>/rejected/<seq>`` with the reason and counted; it
cannot block the records behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamml.ingest.edge import note_header
from streamml.ingest.positions import Checkpoint, InDoubt
from streamml.ingest.progress import Progress
from streamml.ingest.source import Source
from streamml.ingest.spool import Block, Spool
from streamml.producer import ready_producer

__all__ = ["HEADER", "PRODUCER_DEFAULTS", "Sender", "rejected_records"]

logger = logging.getLogger(__name__)

HEADER = "streamml-ingest"
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "message.timeout.ms": 30_000,
    "queue.buffering.max.messages": 1_000_000,  # a whole cycle fits: no BufferError waits
    "delivery.report.only.error": True,
}
"""librdkafka settings the agent uses unless the user's ``producer_config`` overrides them."""

_REFUSED = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_RECORD,
    KafkaError.RECORD_LIST_TOO_LARGE,
}
_WAIT = 0.5  # seconds between looks at the stop flag while the broker is away
_ENDS_EVERY = 2.0  # seconds between reads of the topic's end offsets (lower bounds for a doubt)
_STALL = 5.0  # seconds without an answer after which a read of the topic is given up (and retried)


class _BrokerAway(Exception):
    """The topic cannot be read right now; try again later."""


class Sender:
    """Send the spool to one topic (see the module docstring); run it in its own thread.

    Args:
        brokers: Bootstrap servers.
        topic: The topic to produce to (it must exist).
        spool: The agent's spool.
        checkpoint: The agent's committed state.
        sources: The polled sources by name, to fold delivered deltas.
        progress: Counters to update.
        producer_config: librdkafka settings over :data:`PRODUCER_DEFAULTS`.
        max_records: Records per cycle (per confirmation): the wait for the
            broker's last acknowledgements is paid once per cycle.
        max_bytes: Bytes per cycle (what librdkafka holds in memory at most).
    """

    def __init__(
        self,
        brokers: str,
        topic: str,
        spool: Spool,
        checkpoint: Checkpoint,
        sources: Mapping[str, Source],
        progress: Progress,
        *,
        producer_config: Mapping[str, Any] | None = None,
        max_records: int = 250_000,
        max_bytes: int = 64 << 20,
    ) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError(
                f"max_records and max_bytes must be >= 1; got {max_records}, {max_bytes}"
            )
        self.topic = topic
        self._brokers = brokers
        self._spool = spool
        self._checkpoint = checkpoint
        self._sources = sources
        self._progress = progress
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._config = {**PRODUCER_DEFAULTS, **dict(producer_config or {})}
        self._config.update(
            {
                "bootstrap.servers": brokers,
                "on_delivery": self._on_delivery,
                "error_cb": self._on_error,
            }
        )
        # librdkafka reports every message by message.timeout.ms; an idempotent producer that
        # lost its id to a restarted broker was seen here reporting none for a minute.
        self._stuck_after = int(self._config["message.timeout.ms"]) / 1000 + 2
        self._prefix = f"{checkpoint.agent}:".encode()
        self._failed: list[tuple[KafkaError, Message]] = []
        self._fatal = False
        self._consumer_config = {
            "bootstrap.servers": brokers,
            "group.id": f"streamml-ingest-{checkpoint.agent}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,
        }
        self._rejected_dir = checkpoint.directory / "rejected"
        self._ends: dict[int, int] = {}
        self._ends_due = 0.0
        self._partition_ids: list[int] = []
        self._rejected_now = 0  # refused records of the cycle under way

    # --- librdkafka callbacks (called from poll/flush in this thread) ---
    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append((err, msg))

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = True
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._progress.set_broker("unreachable", err.str())

    # --- the loop ---
    def run(self, stop: threading.Event) -> None:
        """Send until ``stop`` is set; what is unconfirmed then stays in doubt for the next start."""
        self._producer = ready_producer(self._config, self.topic)
        self._consumer = Consumer(self._consumer_config)  # end offsets, and the records in doubt
        landed: set[int] | None = None  # None: a first attempt, not a resend
        doubt = self._checkpoint.in_doubt
        if doubt is not None:
            logger.info("records %d..%d were in doubt at the last stop", doubt.first, doubt.last)
            landed = self._until_known(doubt, stop)
        try:
            while not stop.is_set():
                entries = self._spool.pending(self._max_records, self._max_bytes, wait=0.2)
                if not entries:
                    continue
                blocks = [self._spool.read(e) for e in entries]
                if self._cycle(blocks, landed, stop):
                    landed = None
                elif not stop.is_set():
                    doubt = self._checkpoint.in_doubt
                    assert doubt is not None
                    landed = self._until_known(doubt, stop)
        finally:  # what is unconfirmed now is in doubt on disk: the next start resolves it
            self._consumer.close()
            self._producer.purge()
            self._producer.flush(0)
            self._producer.close()

    def _cycle(self, blocks: list[Block], landed: set[int] | None, stop: threading.Event) -> bool:
        """Send one cycle; ``True`` once every record is confirmed and committed."""
        first, last = blocks[0].first_seq, blocks[-1].last_seq
        before = self._checkpoint.in_doubt
        self._rejected_now = 0
        self._note_doubt(first, last)
        try:
            self._produce(blocks, landed, -1 if before is None else before.last)
            give_up = time.monotonic() + self._stuck_after
            while self._producer.flush(_WAIT) > 0 and not self._fatal:
                if stop.is_set():
                    return False
                if time.monotonic() > give_up:  # past message.timeout.ms and no report
                    logger.warning("no delivery report %g s after sending", self._stuck_after)
                    self._fatal = True
        except (KafkaException, SystemError) as exc:  # raised through a callback: fatal
            self._fatal = True
            logger.debug("producer error: %s", exc)
        if self._fatal:
            self._progress.set_broker("lost the producer's state", "starting a new producer")
            self._renew_producer()
            return False
        failed, self._failed = self._failed, []
        in_doubt = [(e, m) for e, m in failed if e.code() not in _REFUSED]
        for err, msg in failed:
            if err.code() in _REFUSED:
                self._reject(msg.key(), msg.value(), msg.headers(), err.str())
        if in_doubt:
            self._progress.set_broker("deliveries failing", in_doubt[0][0].str())
            self._renew_producer()
            return False
        self._progress.set_broker("up")
        self._commit(blocks)
        return True

    def _renew_producer(self) -> None:
        """Replace the producer after a failed cycle (its records are in doubt, on disk).

        An idempotent producer cannot go on once the broker has forgotten its id (a
        broker restarted with its storage lost): tansu answers UNKNOWN_PRODUCER_ID,
        which librdkafka either raises as fatal or, seen here, answers by reporting
        every later message as timed out. A new producer gets a new id.
        """
        self._producer.purge()
        self._producer.close()
        self._producer = ready_producer(self._config, self.topic)
        self._fatal = False
        self._failed = []

    def _produce(self, blocks: list[Block], landed: set[int] | None, doubt_last: int) -> None:
        skip = landed or set()
        if landed is not None and doubt_last >= 0:  # records in doubt not found: sent again
            self._progress.resent += sum(
                1
                for b in blocks
                for seq in range(b.first_seq, min(b.last_seq, doubt_last) + 1)
                if seq not in skip
            )
        produce, topic, prefix = self._producer.produce, self.topic, self._prefix
        for block in blocks:
            seqs = range(block.first_seq, block.last_seq + 1)
            headers = [[(HEADER, prefix + b"%d" % seq)] for seq in seqs]
            if block.notes.count(None) != len(block.notes):
                for h, note in zip(headers, block.notes):
                    if note is not None:
                        h.append(note_header(note))
            records = zip(seqs, block.keys, block.values, headers)
            if skip:
                records = ((s, k, v, h) for s, k, v, h in records if s not in skip)
            for _, key, value, h in records:
                try:  # the common case: one call, no loop around it
                    produce(topic, value, key, headers=h)
                except BufferError:  # librdkafka's queue is full: let it drain
                    self._produce_when_room(key, value, h)
                except KafkaException as exc:  # refused before sending (too large)
                    self._reject(key, value, h, str(exc.args[0]))

    def _produce_when_room(self, key: bytes | None, value: bytes, headers: list) -> None:
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(self.topic, value, key, headers=headers)
                return
            except BufferError:
                continue
            except KafkaException as exc:
                self._reject(key, value, headers, str(exc.args[0]))
                return

    def _note_doubt(self, first: int, last: int) -> None:
        old = self._checkpoint.in_doubt
        # Any end offset read before these records were sent is at or before them: read them
        # again every few seconds only (a round trip a partition), and if the broker cannot
        # say now, the last ones read still are (none: the whole topic is searched).
        if time.monotonic() >= self._ends_due:
            with suppress(_BrokerAway):
                self._ends = self._end_offsets()
                self._ends_due = time.monotonic() + _ENDS_EVERY
        offsets = dict(self._ends)
        if old is not None:  # still unresolved: its records may be anywhere from its offsets on
            first = min(first, old.first)
            offsets = {p: min(o, offsets.get(p, o)) for p, o in old.offsets.items()}
        self._checkpoint.in_doubt = InDoubt(first, max(last, old.last if old else last), offsets)
        self._checkpoint.save()

    def _partitions(self, *, fresh: bool = False) -> list[int]:
        """The topic's partitions (cached; ``fresh`` asks the broker: a topic may be re-created)."""
        if self._partition_ids and not fresh:
            return self._partition_ids
        try:
            meta = self._consumer.list_topics(self.topic, timeout=2.0).topics.get(self.topic)
        except KafkaException as exc:
            raise _BrokerAway(str(exc.args[0])) from None
        if meta is None or meta.error is not None or not meta.partitions:
            raise _BrokerAway(f"topic {self.topic!r} is not there ({meta.error if meta else ''})")
        self._partition_ids = sorted(meta.partitions)
        return self._partition_ids

    def _watermarks(self, partition: int) -> tuple[int, int]:
        """The low and high offsets of ``partition``; ``_BrokerAway`` when they cannot be read."""
        try:
            return self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=2.0, cached=False
            )
        except KafkaException as exc:
            raise _BrokerAway(str(exc.args[0])) from None

    def _end_offsets(self) -> dict[int, int]:
        return {p: self._watermarks(p)[1] for p in self._partitions()}

    def _until_known(self, doubt: InDoubt, stop: threading.Event) -> set[int] | None:
        """Which records of ``doubt`` are in the topic: retried until the topic can be read."""
        while not stop.is_set():
            try:
                found = self._landed(doubt)
            except _BrokerAway as exc:
                self._progress.set_broker("cannot read the topic", str(exc))
                stop.wait(_WAIT)
                continue
            logger.info(
                "of the %d records in doubt, %d are in the topic; sending the others",
                doubt.last - doubt.first + 1,
                len(found),
            )
            return found
        return None

    def _landed(self, doubt: InDoubt) -> set[int]:
        starts = {}
        for p in self._partitions(fresh=True):
            low, high = self._watermarks(p)
            start = doubt.offsets.get(p, low)
            if start > high:  # the topic was re-created (or truncated) since: search it all
                start = low
            if start < high:  # else nothing was written to it since the offsets were read
                starts[p] = max(start, low)
        found: set[int] = set()
        if not starts:
            return found
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])
        at_end: set[int] = set()
        prefix, cut = self._prefix, len(self._prefix)
        try:
            answered = time.monotonic()
            while len(at_end) < len(starts):
                # consume() returns when it has them all or at its timeout: keep that short
                messages = self._consumer.consume(10_000, 0.1)
                if messages:
                    answered = time.monotonic()
                elif time.monotonic() - answered > _STALL:  # an answering broker sends records
                    raise _BrokerAway(f"no answer reading the topic for {_STALL:g} s")  # or EOF
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_end.add(msg.partition())
                            continue
                        raise _BrokerAway(err.str())
                    for name, value in msg.headers() or ():
                        if name == HEADER and value.startswith(prefix):
                            seq = int(value[cut:])
                            if doubt.first <= seq <= doubt.last:
                                found.add(seq)
        finally:
            self._consumer.unassign()
        return found

    def _commit(self, blocks: list[Block]) -> None:
        cp = self._checkpoint
        for block in blocks:
            source = self._sources.get(block.source)
            if source is not None:  # pushed inputs (HTTP) have no position
                cp.sources[block.source] = source.commit(cp.sources.get(block.source), block.delta)
        delivered = blocks[-1].last_seq + 1 - blocks[0].first_seq - self._rejected_now
        self._progress.sent += delivered  # sent now, or found in the topic after a doubt
        cp.acked = blocks[-1].last_seq + 1
        cp.in_doubt = None
        cp.save()
        self._spool.release(cp.acked)
        self._progress.spool_bytes = self._spool.unacked_bytes
        self._progress.spool_records = self._spool.unacked_records

    def _reject(self, key: bytes | None, value: bytes | None, headers: Any, reason: str) -> None:
        self._rejected_dir.mkdir(exist_ok=True)
        name = dict(headers or ()).get(HEADER, b"unknown").decode().rpartition(":")[2]
        (self._rejected_dir / name).write_bytes(value or b"")
        (self._rejected_dir / f"{name}.reason").write_text(f"key: {key!r}\nreason: {reason}\n")
        self._progress.rejected += 1
        self._rejected_now += 1
        logger.error(
            "record %s refused by the broker (%s); kept in %s", name, reason, self._rejected_dir
        )


def rejected_records(state_dir: str | Path) -> list[Path]:
    """The records the broker refused for good, oldest first (see the module docstring)."""
    folder = Path(state_dir) / "rejected"
    return sorted((p for p in folder.glob("*") if p.suffix != ".reason"), key=lambda p: int(p.name))
