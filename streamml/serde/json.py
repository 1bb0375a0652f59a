"""JSON values, decoded and encoded in batches with orjson.

orjson is 3–4× faster than the standard library at both ends (about 400k
loads/s against 100–140k here), and JSON decoding is often the per-message
floor of a pipeline, so it earns its place as a dependency.

Frames (:meth:`JsonSerde.decode_frame`, :meth:`JsonSerde.encode_frame`) go
through polars' NDJSON reader and writer instead, which parse and print in
Rust with no Python object per value: the payloads of a batch are joined with
newlines and read as one NDJSON document, and each row of a frame is written
as its JSON bytes by one polars expression (``struct.json_encode``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import polars as pl

from streamml.serde.base import (
    POLARS_ERRORS,
    Deserializer,
    FrameDecoded,
    SerdeError,
    Serializer,
    empty_frame,
    frames_in_order,
    map_each,
    split_records,
    widen_big_ints,
)

__all__ = ["JsonSerde"]


def _default(obj: Any) -> Any:
    """Encode what orjson does not know natively: NumPy scalars, sets, bytes."""
    if hasattr(obj, "item"):  # NumPy scalar
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, (bytes, bytearray)):
        return obj.decode("utf-8", errors="replace")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class JsonSerde(Deserializer, Serializer):
    """JSON in and out; a ``None`` payload (a tombstone) decodes to ``None``.

    Encoding handles ``datetime`` (RFC 3339), NumPy arrays and scalars. NaN and
    infinity, which JSON cannot represent, are written as ``null`` by orjson;
    pass ``allow_nan=False`` to reject such values instead.

    As frames, each payload must be a JSON object, and is one row: its keys
    are the columns, and a key a payload lacks is null there. A tombstone
    (``None``) or a JSON value that is not an object is an error, as is a
    payload that is not JSON.

    Column types: with ``schema`` (a polars schema, e.g. ``{"ts": pl.Int64,
    "temperature": pl.Float64}``) every batch has exactly those columns and
    types; keys outside it are dropped, and a payload whose value does not
    fit its column's type (``"x"`` for an Int64, ``1.5`` for an Int64, an
    integer beyond int64 for an Int64) is a ``"SchemaMismatch"`` error. A
    String column takes any JSON value, as its JSON text; a Datetime column
    reads RFC 3339 text (what :meth:`encode_frame` writes). Without a schema,
    polars infers the types from each whole batch, so they can change from
    one batch to the next: a field with only integers in one batch is Int64
    there, and Float64 in a batch where it has a ``1.5``. In one batch,
    integers with floats make Float64, and anything with text makes String
    (``1`` is read as ``"1"``); integers beyond int64 make the column
    Float64 (the nearest double, as orjson reads integers past 2**64); a
    payload whose types polars cannot join to the rows before it (an object
    where earlier rows have a number) is a ``"SchemaMismatch"`` error. Give a
    schema when downstream steps need stable types; it is also about twice as
    fast (inferring over the whole batch costs about 1 µs a row; see
    ``benchmarks/serde.py``).

    One known difference from ``decode_batch`` (orjson): a payload that
    repeats a key keeps its first value in a frame, and its last in
    ``decode_batch``; JSON (RFC 8259) leaves duplicate keys undefined.

    Args:
        allow_nan: With ``False``, a value holding NaN or infinity is an
            ``"EncodeError"`` instead of ``null``.
        schema: The polars schema of decoded frames; inferred per batch if
            not given.

    Examples:
        >>> serde = JsonSerde()
        >>> serde.decode_batch([b'{"t": 1.5}', b'{broken', None])
        [{'t': 1.5}, SerdeError('unexpected character...'), None]
        >>> serde.encode_batch([{"t": 1.5}])
        [b'{"t":1.5}']
        >>> decoded = serde.decode_frame([b'{"t": 1.5, "id": "a"}', b'{broken', None, b'{"t": 2}'])
        >>> decoded.frame.rows(), decoded.rows.tolist()
        ([(1.5, 'a'), (2.0, None)], [0, 3])
        >>> [(i, err.kind) for i, err in decoded.errors]
        [(1, 'DecodeError'), (2, 'Tombstone')]
        >>> serde.encode_frame(decoded.frame)
        [b'{"t":1.5,"id":"a"}', b'{"t":2.0,"id":null}']
        >>> typed = JsonSerde(schema={"t": pl.Float64})
        >>> typed.decode_frame([b'{"t": 1}', b'{"t": "hot"}']).frame.rows()
        [(1.0,)]
    """

    def __init__(self, *, allow_nan: bool = True, schema: Mapping[str, Any] | None = None) -> None:
        self._allow_nan = allow_nan
        self._options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        self._schema = pl.Schema(schema) if schema is not None else None
        self._text = _TextColumns.of(tuple(self._schema.items())) if schema is not None else None

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Any]:
        loads = orjson.loads
        if None not in payloads:
            return map_each(loads, payloads, "DecodeError")
        return map_each(lambda p: None if p is None else loads(p), payloads, "DecodeError")

    def _dumps(self, value: Any) -> bytes:
        if not self._allow_nan and _has_non_finite(value):
            raise ValueError("value contains NaN or infinity, which JSON cannot represent")
        return orjson.dumps(value, default=_default, option=self._options)

    def encode_batch(self, values: Sequence[Any]) -> list[bytes | None | SerdeError]:
        if self._allow_nan and _NONE_TYPE not in map(type, values):
            # The usual batch: orjson called straight from one comprehension, no
            # Python function per value (a functools.partial with keywords is slower).
            dumps, options = orjson.dumps, self._options
            try:
                return [dumps(v, default=_default, option=options) for v in values]
            except Exception:  # noqa: BLE001 - map_each finds the culprits
                pass
        return map_each(lambda v: None if v is None else self._dumps(v), values, "EncodeError")

    def decode_frame(self, payloads: list[bytes | None]) -> FrameDecoded:
        """Decode a batch of JSON objects into a DataFrame, one row per object; see the class.

        When every payload is bytes holding one object on one line (checked
        on the joined buffer in C, without a Python call per payload), the
        batch is one ``polars.read_ndjson`` call; so is a batch whose only
        other payloads are tombstones (each a ``"Tombstone"`` error in its
        place). Otherwise, or when polars
        refuses the batch, orjson reads each payload to find the ones that are
        not JSON objects, and polars reads the rest (re-encoded by orjson when
        they hold raw newlines); rows whose types do not fit are then found
        by halving (see :func:`streamml.serde.base.frames_in_order`).

        ``read_ndjson`` is most of the cost (a 1,000-row fetch of the fraud
        example's labels: ~0.2 ms a call before the first row, then ~0.35 µs
        a row), and polars 2.1 has no cheaper reader that decodes the same:
        ``read_json`` (a JSON array; ~5 µs a call, 0.27 µs a row) and
        ``str.json_decode`` read ``1.5``, ``1.0``, ``true`` and integers past
        int64 in an ``Int64`` column as 1, 1, 1 and null where ``read_ndjson``
        refuses them, and checking the bytes for those in NumPy or a regex
        costs more than it saves; ``pyarrow.json`` refuses them too but is as
        slow.
        """
        n = len(payloads)
        if not n:
            return FrameDecoded(empty_frame(self._schema), np.empty(0, np.int64), [])
        try:  # bytes-like payloads only: a None or a str raises here, in C
            joined = b"\n".join(payloads)  # type: ignore[arg-type]
        except TypeError:
            return self._decode_frame_without_tombstones(payloads)
        frame = self._read_plain(joined, n)
        if frame is None:
            return self._decode_frame_slow(payloads)
        return FrameDecoded(frame, np.arange(n, dtype=np.int64), [])

    def _decode_frame_without_tombstones(self, payloads: list[bytes | None]) -> FrameDecoded:
        """The batch read in one go without its tombstones, when they are its only payloads that
        are not bytes-like, else row by row."""
        rows = [i for i, payload in enumerate(payloads) if payload is not None]
        try:
            joined = b"\n".join([payloads[i] for i in rows])  # type: ignore[misc]
        except TypeError:  # a str
            return self._decode_frame_slow(payloads)
        frame = self._read_plain(joined, len(rows)) if rows else None
        if frame is None:
            return self._decode_frame_slow(payloads)
        tombstone = "a null payload (tombstone) has no row"  # as split_records says it
        errors = [
            (i, SerdeError("Tombstone", tombstone))
            for i, payload in enumerate(payloads)
            if payload is None
        ]
        return FrameDecoded(frame, np.asarray(rows, dtype=np.int64), errors)

    def _read_plain(self, joined: bytes, n: int) -> pl.DataFrame | None:
        """The frame of ``n`` payloads joined by newlines, or None when they are not one object
        on each line or polars refuses them (the row-by-row path then finds out why)."""
        if _one_object_per_line(joined, n):
            try:
                frame = self._read(joined)
                if frame.height == n:
                    return frame
            except POLARS_ERRORS:
                pass
        return None

    def _read(self, joined: bytes) -> pl.DataFrame:
        if self._text is not None:
            return self._text.read(joined, self._schema)  # type: ignore[arg-type]
        frame = pl.read_ndjson(joined, infer_schema_length=None)
        text = _TextColumns.of(tuple(frame.schema.items()))
        if text.names and not text.hold_only_text(joined):
            text.read(joined, frame.schema)  # a column of mixed kinds was read as text
        return widen_big_ints(frame)

    def _decode_frame_slow(self, payloads: list[bytes | None]) -> FrameDecoded:
        values = self.decode_batch(payloads)
        if None in values:  # the JSON text null is not a tombstone
            values = [
                _JSON_NULL if v is None and p is not None else v for v, p in zip(values, payloads)
            ]
        _, rows, errors = split_records(values)
        lines = [payloads[i] for i in rows]
        if not _plain_lines(lines):  # some payload is not one object on one line: re-encode those
            lines = [
                payload if _plain_line(payload) else orjson.dumps(values[i])
                for i, payload in zip(rows, lines)
            ]

        def build(positions: Sequence[int]) -> pl.DataFrame:
            picked = lines if len(positions) == len(lines) else [lines[p] for p in positions]
            return self._read(b"\n".join(picked))

        return frames_in_order(build, rows, errors, self._schema)

    def encode_frame(self, frame: pl.DataFrame) -> list[bytes | SerdeError]:
        """Encode each row of ``frame`` as one JSON object, in column order.

        Written by polars in one ``select``: the row as a struct,
        ``struct.json_encode`` (polars' NDJSON writer, one line per row), cast
        to bytes. Values come out as :meth:`encode_batch` writes them: NaN and
        infinity as ``null`` (or an ``"EncodeError"`` with
        ``allow_nan=False``), nulls as ``null``, Datetime columns as RFC 3339
        text exactly as orjson writes a ``datetime`` (``"2026-01-01T00:00:00+00:00"``,
        microseconds only when not zero, no offset for a column without a time
        zone), Date as ``"2026-01-01"``. A Float32 value is written with the
        fewest digits that read back to the same Float32. A frame with a
        column polars cannot write as JSON (Binary, Object, a Datetime inside
        a list or struct) goes row by row through :meth:`encode_batch`. One
        known difference: polars' time zone tables end in 2099, so a time
        after that in a zone with summer time is written with the zone's
        standard offset (the same instant; Python's ``zoneinfo`` goes on
        with the summer rule).

        Examples:
            >>> from datetime import datetime, timezone
            >>> frame = pl.DataFrame({"ts": [datetime(2026, 1, 1, tzinfo=timezone.utc)],
            ...                       "x": [float("nan")], "s": ["été"]})
            >>> JsonSerde().encode_frame(frame)
            [b'{"ts":"2026-01-01T00:00:00+00:00","x":null,"s":"\\xc3\\xa9t\\xc3\\xa9"}']
        """
        height = frame.height
        if not height:
            return []
        if not frame.width:
            return [b"{}"] * height
        lines = self._json_lines(frame)
        if lines is not None:
            try:
                return frame.select(lines).to_series().to_list()  # type: ignore[no-any-return]
            except POLARS_ERRORS:
                pass
        return self._encode_frame_rows(frame)

    def _encode_frame_rows(self, frame: pl.DataFrame) -> list[bytes | SerdeError]:
        return self.encode_batch(frame.to_dicts())  # type: ignore[return-value]

    def _json_lines(self, frame: pl.DataFrame) -> pl.Expr | None:
        """Each row of ``frame`` as its JSON bytes (Datetimes as RFC 3339 text), or None if
        polars cannot write it.

        One expression, so the whole frame is one polars query: the old way
        (Datetimes by ``with_columns``, then ``write_ndjson`` split at its
        newlines) was two queries and a Python split, 1.3 against 0.86 µs a
        row of a 500-row frame of seven columns (see ``benchmarks/kafka.py``).
        The expression is built once per schema (building it cost ~45 µs a
        frame, 0.09 µs a row of 500).
        """
        schema = tuple(frame.schema.items())
        whole = tuple(
            _on_whole_seconds(frame.get_column(name))
            for name, dtype in schema
            if isinstance(dtype, pl.Datetime)
        )
        lines = _json_lines_of(schema, whole)
        if lines is None or (not self._allow_nan and _has_non_finite_column(frame)):
            return None
        return lines


_NONE_TYPE = type(None)
_SURROGATES = (b"\\ud", b"\\uD")  # escapes polars misreads when unpaired: let orjson do them
_JSON_NULL = SerdeError("NotARecord", "a JSON null is not a record")
_NEWLINE, _OPEN, _CLOSE = ord("\n"), ord("{"), ord("}")
_FLOATS = frozenset({pl.Float32, pl.Float64})


def _one_object_per_line(joined: bytes, n: int) -> bool:
    """True when the ``n`` payloads joined by newlines each start with ``{``, end with ``}``,
    hold no newline themselves and no ``\\uD...`` escape: one object per line, for polars.

    Every newline of ``joined`` must then sit between ``}`` and ``{``. NumPy
    counts the newlines (CPython's ``bytes.count`` is ~10x slower here), and
    the escape search runs only when the buffer holds a backslash at all
    (a ``memchr``): no Python per payload, about 20 ns a payload in all.
    """
    if joined[:1] != b"{" or joined[-1:] != b"}":
        return False
    data = np.frombuffer(joined, np.uint8)
    newline = data == _NEWLINE
    if np.count_nonzero(newline) != n - 1:
        return False
    if n > 1:  # every newline between "}" and "{" (none can be first or last: checked above)
        between = newline[1:-1] & (data[:-2] == _CLOSE) & (data[2:] == _OPEN)
        if np.count_nonzero(between) != n - 1:
            return False
    return b"\\" not in joined or not any(escape in joined for escape in _SURROGATES)


def _plain_lines(payloads: list[bytes]) -> bool:
    """Every payload passes :func:`_plain_line`: checked once on the payloads joined by newlines
    (a newline of its own, or an escape, in any payload fails the whole), not one by one."""
    try:
        return not payloads or _one_object_per_line(b"\n".join(payloads), len(payloads))
    except TypeError:  # a str payload: never plain (a line is bytes)
        return False


def _plain_line(payload: bytes) -> bool:
    r"""One payload by itself passes :func:`_one_object_per_line`: the same checks on one payload,
    without NumPy (~0.2 µs a payload, where the NumPy way costs a few µs before its first byte).

    Examples:
        >>> [_plain_line(p) for p in (b'{"a":1}', b'{"a":\n1}', b'[1]', b'{"a":"\\ud800"}')]
        [True, False, False, False]
    """
    return (
        payload[:1] == b"{"
        and payload[-1:] == b"}"
        and b"\n" not in payload
        and (b"\\" not in payload or not any(escape in payload for escape in _SURROGATES))
    )


@functools.lru_cache(maxsize=256)
def _json_lines_of(schema: tuple[tuple[str, Any], ...], whole: tuple[bool, ...]) -> pl.Expr | None:
    """The JSON bytes of each row of a frame of ``schema``, or None if polars cannot write it.

    ``whole`` says, for each Datetime column in order, whether a value may
    fall on a whole second (:func:`_rfc3339`).
    """
    columns: list[pl.Expr] = []
    whole_seconds = iter(whole)
    for name, dtype in schema:
        if isinstance(dtype, pl.Datetime):
            columns.append(_rfc3339(name, dtype, next(whole_seconds)))
        elif _writes_as_json(dtype):
            columns.append(pl.col(name))
        else:
            return None
    return pl.struct(columns).struct.json_encode().cast(pl.Binary)


def _rfc3339(name: str, dtype: pl.Datetime, whole: bool) -> pl.Expr:
    """A Datetime column as the text orjson writes for each ``datetime``.

    orjson writes microseconds only when they are not zero; the ``replace``
    that drops a ``.000000`` costs about as much as the formatting itself
    (0.12 µs a row), so it is left out when no value falls on a whole
    second (``whole`` false: :func:`_on_whole_seconds`), as event times
    with microseconds or milliseconds mostly do.

    Examples:
        >>> from datetime import datetime
        >>> ts = pl.Series("ts", [datetime(2026, 1, 1, 0, 0, 1, 5), datetime(2026, 1, 1, 0, 0, 2)])
        >>> ts.to_frame().select(_rfc3339("ts", ts.dtype, True)).to_series().to_list()
        ['2026-01-01T00:00:01.000005', '2026-01-01T00:00:02']
        >>> ts.to_frame().select(_rfc3339("ts", ts.dtype, False)).to_series().to_list()
        ['2026-01-01T00:00:01.000005', '2026-01-01T00:00:02.000000']
    """
    fmt = "%Y-%m-%dT%H:%M:%S%.6f" + ("%:z" if dtype.time_zone else "")
    text = pl.col(name).dt.to_string(fmt)
    return text.str.replace(".000000", "", literal=True) if whole else text


_PER_SECOND = {"ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _on_whole_seconds(column: pl.Series) -> bool:
    """Some value of a Datetime column has no microseconds (or may: a null counts as maybe)."""
    if column.null_count():
        return True
    ticks = column.to_numpy().view(np.int64)  # no copy: the column's own buffer, as int64
    per_second = _PER_SECOND[column.dtype.time_unit]  # type: ignore[attr-defined]
    per_microsecond = max(per_second // 1_000_000, 1)  # ns: any of the first 1,000 rounds down
    return bool((ticks % per_second < per_microsecond).any())


def _writes_as_json(dtype: Any) -> bool:
    """polars writes values of ``dtype`` as orjson would (a Datetime only at the top level)."""
    if isinstance(dtype, (pl.List, pl.Array)):
        return _writes_as_json(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return all(_writes_as_json(field.dtype) for field in dtype.fields)
    return not isinstance(dtype, (pl.Datetime, pl.Binary, pl.Object, pl.Unknown))


def _has_non_finite_column(frame: pl.DataFrame) -> bool:
    """Some float in ``frame`` is NaN or infinite (a float in a list or struct counts as maybe)."""
    floats = []
    for name, dtype in frame.schema.items():
        if dtype in _FLOATS:
            floats.append(name)
        elif dtype.is_nested():
            return True  # let encode_batch look at each value
    if not floats:
        return False
    return bool(frame.select(pl.any_horizontal(~pl.col(floats).is_finite()).any()).item())


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


class _TextColumns:
    r"""The ``String`` columns of a schema, with what reading them strictly needs, made once.

    polars reads a number, a bool, a list or an object in a ``String`` column
    as its JSON text (``0.0`` as ``"0"``), and infers ``String`` for a column
    that mixes text with any of them. Read as ``Categorical``, such a value
    raises instead (``SchemaError``), so the batch takes the row-by-row path
    and the row that does not fit is found; the column is then text again.
    That costs ~0.06 µs a row with few distinct texts, and ~0.45 µs a row
    when every row has its own (ids: a category per row), so a batch whose
    bytes show that every text column holds only text or null
    (:meth:`hold_only_text`) is read as it is. The keys to count and the
    strict schema are built once per schema (:meth:`of`), not per batch.

    Examples:
        >>> text = _TextColumns.of((("x", pl.String), ("n", pl.Int64)))
        >>> text.read(b'{"x":"a"}\n{"x":"b"}', pl.Schema({"x": pl.String, "n": pl.Int64}))["x"].to_list()
        ['a', 'b']
        >>> try:
        ...     text.read(b'{"x":"a"}\n{"x":0.0}', pl.Schema({"x": pl.String, "n": pl.Int64}))
        ... except pl.exceptions.SchemaError as exc:
        ...     print(str(exc).splitlines()[0])
        unexpected value while building Series of type String; found value of type Float64: 0.0
    """

    __slots__ = ("names", "_keys", "_strict")

    def __init__(self, schema: tuple[tuple[str, Any], ...]) -> None:
        self.names = [name for name, dtype in schema if dtype == pl.String]
        #: Each text column's key as orjson writes it, followed by text, and by null.
        self._keys = tuple(
            (key, key + b':"', key + b":null") for key in map(orjson.dumps, self.names)
        )
        text = set(self.names)
        self._strict = {name: pl.Categorical if name in text else dtype for name, dtype in schema}

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def of(schema: tuple[tuple[str, Any], ...]) -> _TextColumns:
        """The text columns of ``schema`` (its ``(name, dtype)`` pairs), made once per schema."""
        return _TextColumns(schema)

    def hold_only_text(self, joined: bytes) -> bool:
        r"""Every text column's key in the NDJSON ``joined`` is followed by ``:"`` (text) or ``:null``.

        The key as orjson writes it (``"tx_id"``) is counted, and the times it
        is followed by text or null: equal counts mean no such key holds a
        number, bool, list or object. Only a real key can be followed by ``:``
        (inside a string every quote is escaped), so the check never passes a
        batch it should not; it may refuse one that is fine (a key with spaces
        around its colon, the name as a text value, the key in a nested
        object), which is then read strictly. A ``\u`` or ``\/`` escape could
        spell a key another way: such a batch is refused. Two ``bytes.count``
        calls a column (three when it holds nulls), ~25 µs for 500 rows of 60
        bytes.

        Examples:
            >>> _TextColumns.of((("x", pl.String), ("n", pl.Int64))).hold_only_text(
            ...     b'{"x":"a","n":1}\n{"x":null}\n{"n":2}')
            True
            >>> _TextColumns.of((("x", pl.String),)).hold_only_text(b'{"x":"a"}\n{"x":0.0}')
            False
            >>> _TextColumns.of((("x", pl.String),)).hold_only_text(b'{"x":"a"}\n{"\\u0078":0.0}')
            False
        """
        if b"\\" in joined and (b"\\u" in joined or b"\\/" in joined):  # memchr first
            return False
        count = joined.count
        for key, text, null in self._keys:
            keys, texts = count(key), count(text)
            if texts != keys and texts + count(null) != keys:
                return False
        return True

    def read(self, joined: bytes, schema: pl.Schema) -> pl.DataFrame:
        """``read_ndjson`` with ``schema`` (whose text columns these are), refusing a non-string
        value in a ``String`` column: read as it is when :meth:`hold_only_text`, else strictly.
        """
        if not self.names or self.hold_only_text(joined):
            return pl.read_ndjson(joined, schema=schema)
        frame = pl.read_ndjson(joined, schema=self._strict)
        return frame.with_columns(pl.col(self.names).cast(pl.String))
