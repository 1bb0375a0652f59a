"""Avro values: the Confluent wire format through a schema registry, and plain schemaless Avro.

As frames (``decode_frame``), a batch of flat records (see
``streamml.serde._avro_flat``) is decoded straight into the columns of a
``polars.DataFrame``, but for the few bodies that do not read; those, and any
other batch, are decoded per record by fastavro. Either
way the column types come from the Avro schema (``int`` is Int32, ``long``
Int64, ``float`` Float32, ``double`` Float64, timestamps UTC Datetime; see
``polars_dtype``), so they do not change from batch to batch. Encoding a frame
goes row by row through fastavro (``encode_batch``).

Confluent wire format: one magic byte ``0``, the writer schema's registry id as
a 4-byte big-endian integer, then the Avro binary body. Writer schemas are
fetched by id from any Confluent-compatible registry (through
``confluent_kafka.schema_registry.SchemaRegistryClient``) and cached, parsed,
per id. An optional reader schema resolves every writer version to one shape
(schema evolution: a v2 reader with a new defaulted field reads v1 records).
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import load_schema

from streamml.serde._avro_flat import (
    FlatRecordReader,
    JoinedPayloads,
    flat_reader,
    join_payloads,
    polars_schema,
)
from streamml.serde.base import (
    Deserializer,
    FrameDecoded,
    SerdeError,
    Serializer,
    ServiceUnavailable,
    empty_frame,
    frame_from_values,
    map_each,
)

__all__ = ["AvroSerde", "ConfluentAvroSerde", "load_avro_schema"]

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")
# Smaller batches go record by record: NumPy's fixed cost (~60 µs a batch) outweighs
# fastavro's ~2.5 µs a record below about 30 records.
_FLAT_MIN_BATCH = 32

SchemaLike = str | Path | Mapping[str, Any]
T = TypeVar("T")

DEFAULT_REGISTRY_TIMEOUT = timedelta(seconds=60)
_FIRST_RETRY_S, _MAX_RETRY_S = 0.1, 5.0  # exponential backoff between registry attempts


def load_avro_schema(schema: SchemaLike) -> dict[str, Any]:
    """Parse an Avro schema from a dict, a JSON string, or a path to an ``.avsc`` file.

    Examples:
        >>> load_avro_schema('{"type": "record", "name": "A", "fields": []}')["name"]
        'A'
    """
    if isinstance(schema, Mapping):
        return parse_schema(dict(schema))
    if isinstance(schema, Path) or (isinstance(schema, str) and schema.endswith(".avsc")):
        return load_schema(str(schema))
    return parse_schema(json.loads(schema))


def _schema_json(schema: SchemaLike) -> str:
    if isinstance(schema, Mapping):
        return json.dumps(schema)
    if isinstance(schema, Path) or (isinstance(schema, str) and schema.endswith(".avsc")):
        return Path(schema).read_text()
    return schema


def _read_exact(buf: io.BytesIO, size: int, writer: Any, reader: Any) -> Any:
    """Read one Avro datum and insist it used every byte of the body."""
    value = schemaless_reader(buf, writer, reader)
    rest = size - buf.tell()
    if rest:
        raise ValueError(f"{rest} unread bytes after the Avro record (wrong schema or corrupt)")
    return value


def _describe(exc: Exception) -> str:
    if isinstance(exc, (EOFError, StopIteration, IndexError, struct.error)):
        return f"truncated Avro body ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)


class AvroSerde(Deserializer, Serializer):
    """Plain schemaless Avro with a schema known to both sides (no registry, no header).

    For users without a schema registry: the writer schema comes from a local
    ``.avsc`` file (or a dict / JSON string). ``reader_schema`` evolves the
    records to a newer shape on read.

    Examples:
        >>> schema = {"type": "record", "name": "Reading",
        ...           "fields": [{"name": "sensor", "type": "string"},
        ...                      {"name": "value", "type": "double"}]}
        >>> serde = AvroSerde(schema)
        >>> payloads = serde.encode_batch([{"sensor": "s1", "value": 2.5}])
        >>> payloads
        [b'\\x04s1\\x00\\x00\\x00\\x00\\x00\\x00\\x04@']
        >>> serde.decode_batch(payloads + [b"\\x04s1"])
        [{'sensor': 's1', 'value': 2.5}, SerdeError('truncated Avro body (EOFError: ...)')]
    """

    def __init__(self, schema: SchemaLike, *, reader_schema: SchemaLike | None = None) -> None:
        self._writer = load_avro_schema(schema)
        self._reader = load_avro_schema(reader_schema) if reader_schema is not None else None
        self._flat = flat_reader(self._writer) if self._reader is None else None
        self._polars = polars_schema(self._reader if self._reader is not None else self._writer)

    def _decode_one(self, payload: bytes) -> Any:
        return _read_exact(io.BytesIO(payload), len(payload), self._writer, self._reader)

    def _decode_each(self, payloads: Sequence[bytes | None]) -> list[Any]:
        return map_each(
            lambda p: None if p is None else self._decode_one(p), payloads, "DecodeError", _describe
        )

    def decode_frame(self, payloads: list[bytes | None]) -> FrameDecoded:
        """Decode a batch into a DataFrame, one row per record; see the module docstring.

        Examples:
            >>> serde = AvroSerde({"type": "record", "name": "Reading", "fields": [
            ...     {"name": "sensor", "type": "string"}, {"name": "value", "type": "double"}]})
            >>> good = serde.encode_batch([{"sensor": "s1", "value": 2.5}])
            >>> decoded = serde.decode_frame(good + [b"\\x04s1", None])
            >>> decoded.frame.rows(), decoded.rows.tolist()
            ([('s1', 2.5)], [0])
            >>> [(i, err.kind) for i, err in decoded.errors]
            [(1, 'DecodeError'), (2, 'Tombstone')]
        """
        joined = join_payloads(payloads) if self._flat is not None else None
        if self._flat is not None and joined is not None:
            split = (self._flat, payloads, joined, 0, np.arange(len(payloads)))
            return _columns_then_rest(split, self._frame_each)
        return self._frame_each(payloads)

    def _frame_each(self, payloads: Sequence[bytes | None]) -> FrameDecoded:
        return frame_from_values(self._decode_each(payloads), self._polars)

    def _encode_one(self, value: Any) -> bytes:
        buf = io.BytesIO()
        schemaless_writer(buf, self._writer, value)
        return buf.getvalue()

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Any]:
        """Decode each payload; a payload that is not a valid record becomes a SerdeError.

        A batch of 32 or more flat records (see ``streamml.serde._avro_flat``) is decoded
        all at once with NumPy, with exactly fastavro's results, but for the
        bodies that do not read, which are decoded one at a time like any
        other batch.
        """
        if self._flat is not None and len(payloads) >= _FLAT_MIN_BATCH:
            joined = join_payloads(payloads)
            if joined is not None:
                split = (self._flat, payloads, joined, 0, np.arange(len(payloads)))
                values = _rows_then_rest(split, self._decode_each)
                if values is not None:
                    return values
        return self._decode_each(payloads)

    def encode_batch(self, values: Sequence[Any]) -> list[bytes | None | SerdeError]:
        return map_each(
            lambda v: None if v is None else self._encode_one(v), values, "EncodeError", _describe
        )


class ConfluentAvroSerde(Deserializer, Serializer):
    """Avro in the Confluent wire format, with schemas from a schema registry.

    Decoding reads the schema id from each payload's header, fetches that
    writer schema from the registry once and caches it parsed. A payload with
    a wrong magic byte, an id the registry does not know, or a body that does
    not match its schema comes back as a :class:`SerdeError` saying which.

    Encoding registers ``schema`` under ``subject`` once (idempotent on a real
    registry: the existing id is returned) and prefixes every body with its id.

    Args:
        registry: A ``SchemaRegistryClient`` (or anything with ``get_schema(id)``
            and ``register_schema(subject, schema)``), its config dict, e.g.
            ``{"url": "http://registry:8081"}`` or ``{"url": "mock://test"}``,
            or just the URL.
        schema: The writer schema for encoding (dict, JSON string or ``.avsc``
            path). Not needed to decode.
        subject: The registry subject to register ``schema`` under, by
            convention ``"<topic>-value"``. Required with ``schema``.
        reader_schema: Decode every writer version into this shape.
        registry_timeout: How long a registry that cannot be reached (refused
            connection, timeout, server error) is retried, with exponential
            backoff from 0.1 s to 5 s between attempts, before the serde
            raises :class:`~streamml.serde.ServiceUnavailable` and the
            dataflow stops (60 s by default). Only a schema id the registry
            answers "not found" for (HTTP 404) makes a payload a dead letter
            (``UnknownSchema``): an outage is not bad data.

    Examples:
        >>> from confluent_kafka.schema_registry import SchemaRegistryClient
        >>> registry = SchemaRegistryClient.new_client({"url": "mock://doc"})
        >>> schema = {"type": "record", "name": "Reading",
        ...           "fields": [{"name": "value", "type": "double"}]}
        >>> serde = ConfluentAvroSerde(registry, schema=schema, subject="readings-value")
        >>> [payload] = serde.encode_batch([{"value": 2.5}])
        >>> payload[:5], serde.schema_id
        (b'\\x00\\x00\\x00\\x00\\x01', 1)
        >>> serde.decode_batch([payload, b"\\x00\\x00\\x00\\x00\\x63" + payload[5:]])
        [{'value': 2.5}, SerdeError('schema id 99 is not in the registry: ...')]
        >>> ConfluentAvroSerde(None)
        Traceback (most recent call last):
        ...
        TypeError: registry must be a SchemaRegistryClient, its config dict such as {'url': 'http://registry:8081'}, or the registry's URL; got None
    """

    def __init__(
        self,
        registry: Any,
        *,
        schema: SchemaLike | None = None,
        subject: str | None = None,
        reader_schema: SchemaLike | None = None,
        registry_timeout: timedelta = DEFAULT_REGISTRY_TIMEOUT,
    ) -> None:
        registry, self._registry_name = _registry_client(registry)
        if not isinstance(registry_timeout, timedelta) or registry_timeout <= timedelta(0):
            raise ValueError(
                f"registry_timeout must be a timedelta > 0, e.g. timedelta(seconds=60); "
                f"got {registry_timeout!r}"
            )
        if schema is not None and not subject:
            raise ValueError(
                "a subject is needed to register the schema; e.g. subject='events-value'"
            )
        self._registry = registry
        self._registry_timeout_s = registry_timeout.total_seconds()
        self._schema = schema
        self._subject = subject
        self._writer = load_avro_schema(schema) if schema is not None else None
        self._reader = load_avro_schema(reader_schema) if reader_schema is not None else None
        self._schema_id: int | None = None
        self._writers: dict[int, Any] = {}
        self._flat: dict[int, FlatRecordReader | None] = {}
        self._reader_polars = polars_schema(self._reader) if self._reader is not None else None
        self._polars: dict[int, pl.Schema | None] = {}

    def _ask_registry(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried with backoff while the registry cannot be reached.

        A "not found" answer (see :func:`_not_found`) is raised as it is, at
        once; any other failure is retried until ``registry_timeout``, then
        raised as :class:`ServiceUnavailable`.
        """
        deadline = time.monotonic() + self._registry_timeout_s
        pause = _FIRST_RETRY_S
        while True:
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 - sorted into "not found" and "unreachable"
                if _not_found(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServiceUnavailable(
                        f"schema registry {self._registry_name} did not answer ({what}) within "
                        f"registry_timeout={self._registry_timeout_s:g} s; last error: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            time.sleep(min(pause, left))
            pause = min(pause * 2, _MAX_RETRY_S)

    @property
    def schema_id(self) -> int:
        """The registry id of the writer schema (registering it on first use)."""
        if self._schema_id is None:
            if self._schema is None:
                raise ValueError(
                    "this serde has no writer schema; pass schema= and subject= to encode"
                )
            from confluent_kafka.schema_registry import Schema

            schema = Schema(_schema_json(self._schema), "AVRO")
            self._schema_id = self._ask_registry(
                f"registering subject {self._subject!r}",
                lambda: self._registry.register_schema(self._subject, schema),
            )
        return self._schema_id

    def _writer_for(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                registered = self._ask_registry(
                    f"schema id {schema_id}", lambda: self._registry.get_schema(schema_id)
                )
            except ServiceUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - "not found": this payload's error
                raise SerdeError(
                    "UnknownSchema", f"schema id {schema_id} is not in the registry: {exc}"
                ) from None
            if registered.schema_type not in (None, "AVRO"):
                raise SerdeError(
                    "UnknownSchema", f"schema id {schema_id} is {registered.schema_type}, not AVRO"
                )
            writer = self._writers[schema_id] = parse_schema(json.loads(registered.schema_str))
        return writer

    def _decode_one(self, payload: bytes) -> Any:
        if len(payload) < _HEADER.size:
            raise SerdeError(
                "DecodeError", f"payload of {len(payload)} bytes is shorter than the 5-byte header"
            )
        magic, schema_id = _HEADER.unpack_from(payload)
        if magic != MAGIC_BYTE:
            raise SerdeError(
                "DecodeError", f"magic byte is {magic}, not 0: not Confluent wire format"
            )
        writer = self._writer_for(schema_id)
        buf = io.BytesIO(payload)
        buf.seek(_HEADER.size)
        return _read_exact(buf, len(payload), writer, self._reader)

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Any]:
        """Decode each payload; a payload that cannot be decoded becomes a SerdeError saying why.

        Without a reader schema, in a batch of 32 or more payloads the ones
        that carry the schema id of a flat record schema (see
        ``streamml.serde._avro_flat``) that all or most of them carry are
        decoded all at once with NumPy, with exactly fastavro's results; the
        others, and the bodies that do not read, are decoded one at a time.
        """
        if self._reader is None and len(payloads) >= _FLAT_MIN_BATCH:
            split = self._flat_split(payloads)
            if split is not None:
                values = _rows_then_rest(split, self._decode_each)
                if values is not None:
                    return values
        return self._decode_each(payloads)

    def _flat_reader(self, header: bytes) -> FlatRecordReader | None:
        """The flat reader of a Confluent header's schema id; None if not Avro's header, or not flat."""
        if len(header) < _HEADER.size or header[0] != MAGIC_BYTE:
            return None
        schema_id = _HEADER.unpack(header)[1]
        if schema_id not in self._flat:
            try:
                writer = self._writer_for(schema_id)
            except SerdeError:
                return None
            self._flat[schema_id] = flat_reader(writer)
        return self._flat[schema_id]

    def _decode_each(self, payloads: Sequence[bytes | None]) -> list[Any]:
        return [
            item if type(item) is not _Wrapped else item.error
            for item in map_each(self._decode_guarded, payloads, "DecodeError", _describe)
        ]

    def decode_frame(self, payloads: list[bytes | None]) -> FrameDecoded:
        """Decode a batch into a DataFrame, one row per record; see the module docstring.

        Without a reader schema, the payloads that carry the id of a flat
        record schema that all or most of the batch carry are decoded
        straight into columns, but for bodies that do not read. The others
        are decoded by fastavro one by one, and their columns take their types
        from the reader schema, or from the writer schema when every decoded
        record has the same one (records of several writer versions in one
        batch leave the types to polars).

        Examples:
            >>> from confluent_kafka.schema_registry import SchemaRegistryClient
            >>> registry = SchemaRegistryClient.new_client({"url": "mock://frame-doc"})
            >>> schema = {"type": "record", "name": "Reading",
            ...           "fields": [{"name": "value", "type": "double"}]}
            >>> serde = ConfluentAvroSerde(registry, schema=schema, subject="readings-value")
            >>> payloads = serde.encode_batch([{"value": 2.5}, {"value": 3.0}])
            >>> serde.decode_frame(payloads).frame["value"].to_list()
            [2.5, 3.0]
            >>> decoded = serde.decode_frame([payloads[0], b"\\x01" + payloads[1][1:]])
            >>> decoded.rows.tolist(), decoded.errors
            ([0], [(1, SerdeError('magic byte is 1, not 0: not Confluent wire format'))])
        """
        if self._reader is None:
            split = self._flat_split(payloads)
            if split is not None:
                return _columns_then_rest(split, self._frame_each)
        return self._frame_each(payloads)

    def _frame_each(self, payloads: Sequence[bytes | None]) -> FrameDecoded:
        values = self._decode_each(payloads)
        return frame_from_values(values, self._frame_schema(payloads, values))

    def _flat_split(self, payloads: Sequence[bytes | None]) -> _Split | None:
        """The payloads to read as columns: all, or those with the header most of them carry.

        One message with another header in a fetch must not send the other
        thousands through fastavro one by one (the sensor demo, with 200
        corrupt messages among 200,000, decoded a third of its batches that
        way). ``None`` when no flat schema's header is common to at least half
        the batch.
        """
        joined = join_payloads(payloads)
        if joined is not None:  # all bytes: the usual batch has one header
            header = payloads[0][: _HEADER.size]  # type: ignore[index]
            if len(header) == _HEADER.size and joined.same_prefix(header):
                reader = self._flat_reader(header)
                if reader is None:  # not flat (or not Avro): nothing to read as columns
                    return None
                return reader, payloads, joined, _HEADER.size, np.arange(len(payloads))
        heads = [p[: _HEADER.size] if type(p) is bytes else None for p in payloads]
        counts: dict[bytes, int] = {}
        for head in heads:
            if head is not None:
                counts[head] = counts.get(head, 0) + 1
        if not counts:
            return None
        header = max(counts, key=counts.__getitem__)
        if counts[header] * 2 < len(payloads) or len(header) < _HEADER.size:
            return None
        reader = self._flat_reader(header)
        if reader is None:
            return None
        common = [i for i, head in enumerate(heads) if head == header]
        joined = join_payloads([payloads[i] for i in common])
        return reader, payloads, joined, _HEADER.size, np.asarray(common)  # type: ignore[return-value]

    def _frame_schema(self, payloads: Sequence[bytes | None], values: list[Any]) -> Any:
        if self._reader is not None:
            return self._reader_polars
        ids = {payloads[i][1:5] for i, v in enumerate(values) if type(v) is dict}  # type: ignore[index]
        if len(ids) != 1:
            return None
        (schema_id,) = struct.unpack(">I", ids.pop())
        if schema_id not in self._polars:
            self._polars[schema_id] = polars_schema(self._writer_for(schema_id))
        return self._polars[schema_id]

    def _decode_guarded(self, payload: bytes | None) -> Any:
        if payload is None:
            return None
        try:
            return self._decode_one(payload)
        except SerdeError as err:
            return _Wrapped(err)

    def _encode_one(self, value: Any) -> bytes:
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC_BYTE, self.schema_id))
        schemaless_writer(buf, self._writer, value)
        return buf.getvalue()

    def encode_batch(self, values: Sequence[Any]) -> list[bytes | None | SerdeError]:
        schema_id = self.schema_id  # fail loudly at the first batch if misconfigured
        del schema_id
        return map_each(
            lambda v: None if v is None else self._encode_one(v), values, "EncodeError", _describe
        )


def _registry_client(registry: Any) -> tuple[Any, str]:
    """A registry client from a client, its config dict or its URL, and a name for errors."""
    if isinstance(registry, str) and registry:
        registry = {"url": registry}
    if isinstance(registry, Mapping):
        if not registry.get("url"):
            raise ValueError(
                "a schema registry config needs its url, e.g. {'url': 'http://registry:8081'}; "
                f"got {dict(registry)!r}"
            )
        from confluent_kafka.schema_registry import SchemaRegistryClient

        return SchemaRegistryClient.new_client(dict(registry)), str(registry["url"])
    if isinstance(registry, type) or not callable(getattr(registry, "get_schema", None)):
        raise TypeError(
            "registry must be a SchemaRegistryClient, its config dict such as "
            f"{{'url': 'http://registry:8081'}}, or the registry's URL; got {registry!r}"
        )
    return registry, type(registry).__name__


def _not_found(exc: Exception) -> bool:
    """Whether a registry failure is its answer "no such schema" (HTTP 404, or a ``LookupError``)."""
    return getattr(exc, "http_status_code", None) == 404 or isinstance(exc, LookupError)


# A batch to read as columns: the flat reader, the payloads, the ones to read (joined), the
# header size to skip, and their indices; every other payload is decoded one by one.
_Split = tuple[FlatRecordReader, Sequence[bytes | None], JoinedPayloads, int, np.ndarray]


def _rows_then_rest(
    split: _Split, decode_each: Callable[[Sequence[bytes | None]], list[Any]]
) -> list[Any] | None:
    """``decode_batch``'s values: the payloads ``split`` names read as columns where their bodies
    read, every other one by ``decode_each``; ``None`` when a string is not UTF-8 (whose, the
    columns do not say: decode the batch one by one).
    """
    reader, payloads, joined, skip, common = split
    got = reader.read_where(joined, skip)
    if got is None:
        return None
    values, kept = got
    if len(kept) == len(payloads):  # the usual batch: every body read
        return values
    out: list[Any] = [None] * len(payloads)
    good = common[kept]
    for i, value in zip(good.tolist(), values):
        out[i] = value
    rest = _unread(len(payloads), [good])
    for i, value in zip(rest, decode_each([payloads[i] for i in rest])):
        out[i] = value
    return out


def _unread(n: int, read: list[np.ndarray]) -> list[int]:
    """The indices below ``n`` in none of ``read``, in order."""
    unread = np.ones(n, bool)
    for indices in read:
        unread[indices] = False
    return np.flatnonzero(unread).tolist()


def _columns_then_rest(
    split: _Split, decode_each: Callable[[Sequence[bytes | None]], FrameDecoded]
) -> FrameDecoded:
    """One frame, in payload order: the payloads ``split`` names read as columns where their
    bodies read, every other one by ``decode_each``.

    Each body is read at its own offsets, so a corrupt one costs the others
    nothing. A string that is not UTF-8 only shows when the frame is built,
    without saying whose: then the readable bodies are halved until the
    culprits are alone (rare).
    """
    reader, payloads, joined, skip, common = split
    frame, kept = reader.read_frame_where(joined, skip)
    if frame is not None and len(kept) == len(payloads):  # the usual batch: every body read
        return FrameDecoded(frame, kept, [])
    good = common[kept]
    if frame is None:
        parts = _utf8_runs(reader, payloads, good, skip)
    else:
        parts = [(good, frame)] if len(good) else []
    rest = _unread(len(payloads), [ix for ix, _ in parts])
    errors: list[tuple[int, SerdeError]] = []
    if rest:
        decoded = decode_each([payloads[i] for i in rest])
        errors = sorted(((rest[j], err) for j, err in decoded.errors), key=itemgetter(0))
        if decoded.frame.height:
            parts.append((np.asarray(rest)[decoded.rows], decoded.frame))
    if not parts:
        return FrameDecoded(empty_frame(None), np.empty(0, np.int64), errors)
    rows = np.concatenate([ix for ix, _ in parts])
    frames = [f for _, f in parts]
    same = all(f.schema == frames[0].schema for f in frames)
    merged = pl.concat(frames, how="vertical" if same else "diagonal_relaxed")
    order = np.argsort(rows, kind="stable")
    if (order != np.arange(len(order))).any():
        merged, rows = merged[order], rows[order]
    return FrameDecoded(merged, rows, errors)


def _utf8_runs(
    reader: FlatRecordReader, payloads: Sequence[bytes | None], indices: np.ndarray, skip: int
) -> list[tuple[np.ndarray, pl.DataFrame]]:
    """Frames of the runs of ``indices`` whose strings are UTF-8 (the lone culprits left out)."""
    if not len(indices):
        return []
    joined = join_payloads([payloads[i] for i in indices.tolist()])
    frame = reader.read_frame(joined, skip)  # type: ignore[arg-type]  # bytes: read before
    if frame is not None:
        return [(indices, frame)]
    if len(indices) == 1:
        return []
    half = len(indices) // 2
    return _utf8_runs(reader, payloads, indices[:half], skip) + _utf8_runs(
        reader, payloads, indices[half:], skip
    )


class _Wrapped:
    """Carries a SerdeError with its own kind through ``map_each`` (which would re-kind it)."""

    __slots__ = ("error",)

    def __init__(self, error: SerdeError) -> None:
        self.error = error
